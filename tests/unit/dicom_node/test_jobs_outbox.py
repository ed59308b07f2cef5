import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.errors import DestinationRefused, DestinationUnavailable
from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs, JobState, Move
from dicom_node.outbox import Outbox, Sender, backoff
from dicom_node.scu import StoreResult
from dicom_node.settings import Destination, SendSettings
from dicom_node.spool import Spool


def rec(sop: str, series: str = "1.2.3", study: str = "1.2") -> InstanceRecord:
    return InstanceRecord(
        study,
        series,
        sop,
        "1.2.840.10008.5.1.4.1.1.2",
        f"spool/{study}/{series}/{sop}.dcm",
        10,
        modality="CT",
    )


def test_duplicate_instance_is_counted_once_and_does_not_reopen_the_study(tmp_path, open_db):
    index = Index(open_db())
    assert index.record(rec("1.2.3.1"), now=1.0) == (True, None)
    assert index.record(rec("1.2.3.1"), now=2.0) == (False, None)
    assert index.counts() == {"studies": 1, "series": 1, "instances": 1}
    [study] = index.studies_to_route()
    assert study.revision == 1 and study.last_received == 1.0


def test_same_job_is_created_once_per_set_of_instances(tmp_path, open_db):
    jobs = Jobs(open_db())
    kw = dict(
        study_uid="1.2",
        series_uid="1.2.3",
        rule="r",
        pipeline="lung-ct",
        inputs=["a", "b"],
        destinations=["archive"],
    )
    first = jobs.create(sop_uids=["1", "2"], **kw)
    assert first is not None
    assert jobs.create(sop_uids=["2", "1"], **kw) is None
    assert jobs.create(sop_uids=["1", "2", "3"], **kw) not in (None, first)


def test_backoff_doubles_up_to_the_cap():
    s = SendSettings(initial_backoff_seconds=5, max_backoff_seconds=30)
    assert [backoff(n, s) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def result_file(path: Path, sop_class: str = "1.2.840.10008.5.1.4.1.1.66.4") -> Path:
    """A small but real DICOM file standing for a result (header only)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "SEG"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class FakeArchive:
    """Stands in for a destination in unit tests (the integration tests use Orthanc):
    answers each C-STORE with the next status for that destination."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.opened: list[str] = []
        self.stored: list[Path] = []

    def connect(self, dest, calling, sop_classes, timeout):  # type: ignore[no-untyped-def]
        answer = self.answers[dest.ae_title.lower()]
        if isinstance(answer, Exception):
            raise answer
        self.opened.append(dest.ae_title)
        archive = self

        class Connection:
            def store(self, path: Path) -> StoreResult:
                archive.stored.append(path)
                return StoreResult(answer)  # type: ignore[arg-type]

            def close(self) -> None:
                pass

        return Connection()


def make_sender(tmp_path: Path, open_db, answers: dict[str, object], **send: int):
    spool = Spool(tmp_path)
    db = open_db()
    outbox = Outbox(db)
    dests = {n: Destination(ae_title=n.upper(), host="127.0.0.1", port=1) for n in answers}
    archive = FakeArchive(answers)
    sender = Sender(outbox, spool, dests, SendSettings(**send), "NODE", archive.connect)
    return sender, outbox, db, archive


def test_sent_file_is_deleted_only_after_every_destination_stored_it(tmp_path, open_db):
    sender, outbox, _, archive = make_sender(tmp_path, open_db, {"a": 0x0000, "b": 0xA700})
    path = result_file(tmp_path / "outbox/1/seg-1.dcm")
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a", "b"], now=0.0)
    assert sender.run_once(now=1e12) == 1
    assert path.exists(), "b has not stored it yet"
    assert outbox.counts() == {"sent": 1, "pending": 1}
    archive.answers["b"] = 0xB000  # a warning counts as stored
    assert sender.run_once(now=1e12) == 1
    assert not path.exists() and not path.parent.exists()
    assert (tmp_path / "outbox").is_dir(), "the outbox folder itself stays"


def test_unreachable_destination_is_retried_then_dead_lettered_and_file_kept(tmp_path, open_db):
    refused = DestinationUnavailable("association to A@127.0.0.1:1 could not be opened")
    sender, outbox, db, _ = make_sender(tmp_path, open_db, {"a": refused}, max_attempts=3)
    result_file(tmp_path / "outbox/1/sr-2.dcm")
    outbox.add(1, ["outbox/1/sr-2.dcm"], ["a"], now=0.0)
    for _ in range(3):
        sender.run_once(now=1e12)
    [row] = db.query("SELECT state, attempts, last_error FROM outbox")
    assert (row["state"], row["attempts"]) == ("dead", 3)
    assert "could not be opened" in row["last_error"]
    assert (tmp_path / "outbox/1/sr-2.dcm").exists()
    assert outbox.retry_dead() == 1


@pytest.mark.parametrize(
    "answer, error",
    [
        (DestinationRefused("association to A@127.0.0.1:1 rejected (permanent)"), "permanent"),
        (0x0122, "status 0x0122"),
        (0xC000, "status 0xC000"),
        (0xA900, "status 0xA900"),
    ],
)
def test_permanent_refusal_is_parked_at_once(tmp_path, open_db, answer, error):
    sender, outbox, db, _ = make_sender(tmp_path, open_db, {"a": answer}, max_attempts=20)
    result_file(tmp_path / "outbox/1/seg-1.dcm")
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a"], now=0.0)
    sender.run_once(now=1e12)
    [row] = db.query("SELECT state, attempts, last_error FROM outbox")
    assert (row["state"], row["attempts"]) == ("dead", 1)
    assert error in row["last_error"]


def test_out_of_resources_at_the_archive_is_retried(tmp_path, open_db):
    sender, outbox, db, _ = make_sender(tmp_path, open_db, {"a": 0xA702})
    result_file(tmp_path / "outbox/1/seg-1.dcm")
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a"], now=0.0)
    sender.run_once(now=1e12)
    [row] = db.query("SELECT state, attempts FROM outbox")
    assert (row["state"], row["attempts"]) == ("pending", 1)


def test_unreadable_result_is_parked_and_the_rest_of_the_batch_is_sent(tmp_path, open_db):
    sender, outbox, db, archive = make_sender(tmp_path, open_db, {"a": 0x0000})
    (tmp_path / "outbox/1").mkdir(parents=True)
    (tmp_path / "outbox/1/seg-1.dcm").write_bytes(b"not dicom at all")
    good = result_file(tmp_path / "outbox/1/sr-2.dcm")
    outbox.add(1, ["outbox/1/seg-1.dcm", "outbox/1/sr-2.dcm"], ["a"], now=0.0)
    assert sender.run_once(now=1e12) == 1
    assert archive.stored == [good]
    rows = {r["path"]: r for r in db.query("SELECT path, state, last_error FROM outbox")}
    assert rows["outbox/1/seg-1.dcm"]["state"] == "dead"
    assert "unreadable" in rows["outbox/1/seg-1.dcm"]["last_error"]
    assert rows["outbox/1/sr-2.dcm"]["state"] == "sent"


def test_results_of_a_job_run_again_are_queued_afresh(tmp_path, open_db):
    sender, outbox, _, _ = make_sender(tmp_path, open_db, {"a": 0x0000})
    result_file(tmp_path / "outbox/1/seg-1.dcm")
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a"], now=0.0)
    assert sender.run_once(now=1e12) == 1
    result_file(tmp_path / "outbox/1/seg-1.dcm")  # the operator's retry wrote it again
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a"], now=1.0)
    assert outbox.counts() == {"pending": 1}
    assert sender.run_once(now=1e12) == 1


def test_job_inputs_round_trip_as_json(tmp_path, open_db):
    jobs = Jobs(open_db())
    job_id = jobs.create(
        study_uid="1",
        series_uid="1.1",
        rule="r",
        pipeline="p",
        sop_uids=["9"],
        inputs=["spool/x.dcm"],
        destinations=[],
    )
    job = jobs.get(job_id)
    assert job.inputs == ["spool/x.dcm"] and job.state == "queued"
    assert jobs.move(job_id, Move.FINISH, 1.0, to=JobState.SKIPPED,
                     reason="(0008,0060) Modality is MR", summary={"a": 1})  # fmt: skip
    job = jobs.get(job_id)
    assert (job.state, job.reason, job.summary) == (
        "skipped",
        "(0008,0060) Modality is MR",
        json.loads('{"a": 1}'),
    )


def test_a_move_from_a_state_the_job_has_left_changes_nothing(tmp_path, open_db):
    jobs = Jobs(open_db())
    job_id = jobs.create(study_uid="1", series_uid="1.1", rule="r", pipeline="p",
                         sop_uids=["9"], inputs=[], destinations=[])  # fmt: skip
    assert jobs.move(job_id, Move.FINISH, 1.0, to=JobState.DONE)
    assert not jobs.move(job_id, Move.OBSERVE, 2.0, beat="x")
    assert not jobs.move(job_id, Move.FINISH, 2.0, to=JobState.FAILED, reason="late")
    job = jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.DONE, "")
    assert jobs.retry(job_id) and jobs.get(job_id).ticket == 1
    assert not jobs.retry(job_id), "a queued job is not retried"
    with pytest.raises(ValueError, match="cannot set"):
        jobs.move(job_id, Move.SEND, 3.0, state="done")
