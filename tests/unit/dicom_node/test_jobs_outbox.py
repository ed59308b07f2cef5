import json

from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs
from dicom_node.outbox import Outbox, Sender, backoff
from dicom_node.settings import Destination, SendSettings
from dicom_node.spool import Spool
from dicom_node.state import Database


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


def test_duplicate_instance_is_counted_once_and_does_not_reopen_the_study(tmp_path):
    index = Index(Database(tmp_path / "db.sqlite"))
    assert index.record(rec("1.2.3.1"), now=1.0) == (True, None)
    assert index.record(rec("1.2.3.1"), now=2.0) == (False, None)
    assert index.counts() == {"studies": 1, "series": 1, "instances": 1}
    [study] = index.studies_to_route()
    assert study.revision == 1 and study.last_received == 1.0


def test_same_job_is_created_once_per_set_of_instances(tmp_path):
    jobs = Jobs(Database(tmp_path / "db.sqlite"))
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


class Result:
    def __init__(self, stored: bool, status: int | None = 0) -> None:
        self.stored, self.status, self.detail = stored, status, ""


def test_sent_file_is_deleted_only_after_every_destination_stored_it(tmp_path):
    spool = Spool(tmp_path)
    outbox = Outbox(Database(tmp_path / "db.sqlite"))
    path = tmp_path / "outbox/1/seg-1.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    outbox.add(1, ["outbox/1/seg-1.dcm"], ["a", "b"])
    dests = {n: Destination(ae_title=n.upper(), host="127.0.0.1", port=1) for n in ("a", "b")}
    answers = {"a": True, "b": False}

    def send(dest, paths, calling, timeout):
        return [
            Result(answers[dest.ae_title.lower()], 0 if answers[dest.ae_title.lower()] else 0xA700)
            for _ in paths
        ]

    sender = Sender(outbox, spool, dests, SendSettings(), "NODE", send)
    assert sender.run_once(now=1e12) == 1
    assert path.exists(), "b has not stored it yet"
    assert outbox.counts() == {"sent": 1, "pending": 1}
    answers["b"] = True
    assert sender.run_once(now=1e12) == 1
    assert not path.exists()


def test_unreachable_destination_is_retried_then_dead_lettered_and_file_kept(tmp_path):
    spool = Spool(tmp_path)
    db = Database(tmp_path / "db.sqlite")
    outbox = Outbox(db)
    (tmp_path / "outbox/1").mkdir(parents=True)
    (tmp_path / "outbox/1/sr-2.dcm").write_bytes(b"x")
    outbox.add(1, ["outbox/1/sr-2.dcm"], ["a"])
    dests = {"a": Destination(ae_title="A", host="127.0.0.1", port=1)}

    def send(dest, paths, calling, timeout):
        raise ConnectionRefusedError("refused")

    sender = Sender(outbox, spool, dests, SendSettings(max_attempts=3), "NODE", send)
    for _ in range(3):
        sender.run_once(now=1e12)
    [row] = db.query("SELECT state, attempts, last_error FROM outbox")
    assert (row["state"], row["attempts"]) == ("dead", 3)
    assert "ConnectionRefusedError" in row["last_error"]
    assert (tmp_path / "outbox/1/sr-2.dcm").exists()
    assert outbox.retry_dead() == 1


def test_job_inputs_round_trip_as_json(tmp_path):
    jobs = Jobs(Database(tmp_path / "db.sqlite"))
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
    jobs.finish(job_id, "skipped", "(0008,0060) Modality is MR", summary={"a": 1})
    job = jobs.get(job_id)
    assert (job.state, job.reason, job.summary) == (
        "skipped",
        "(0008,0060) Modality is MR",
        json.loads('{"a": 1}'),
    )
