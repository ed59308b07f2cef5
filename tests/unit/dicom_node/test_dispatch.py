"""The dispatcher with a recording enqueue (the broker is a parameter, not a patch)."""

from pathlib import Path

from dicom_node.dispatch import Dispatcher
from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs
from dicom_node.jobspec import OUTPUTS, STARTED, JobOutcome
from dicom_node.outbox import Outbox
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import Database

CT = "1.2.840.10008.5.1.4.1.1.2"


def make(tmp_path: Path, **workers: float):
    settings = Settings.model_validate(
        {
            "node": {"stable_after_seconds": 10},
            "storage": {"dir": str(tmp_path)},
            "workers": {
                "requeue_after_seconds": 100,
                "lease_seconds": 30,
                "max_attempts": 2,
                **workers,
            },
            "destinations": {"archive": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 104}},
            "rules": [
                {
                    "name": "lungs",
                    "match": {"Modality": "CT"},
                    "pipeline": "lung-ct",
                    "destinations": ["archive"],
                }
            ],
        }
    )
    db = Database(tmp_path / "node.sqlite")
    sent: list[dict] = []
    d = Dispatcher(settings, Spool(tmp_path), Index(db), Jobs(db), Outbox(db), sent.append)
    return d, sent


def receive(d: Dispatcher, n: int, now: float, modality: str = "CT") -> None:
    for i in range(n):
        d.index.record(
            InstanceRecord(
                "1.2",
                "1.2.3",
                f"1.2.3.{i}",
                CT,
                f"spool/1.2/1.2.3/1.2.3.{i}.dcm",
                1,
                modality=modality,
            ),
            now=now,
        )


def test_stable_study_becomes_one_enqueued_job_with_paths_not_pixels(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 3, now=0.0)
    d.tick(now=5.0)
    assert sent == []
    d.tick(now=11.0)
    [message] = sent
    assert message["pipeline"] == "lung-ct"
    assert message["inputs"] == [f"spool/1.2/1.2.3/1.2.3.{i}.dcm" for i in range(3)]
    assert set(message) == {
        "job_id",
        "pipeline",
        "inputs",
        "work_dir",
        "uid_root",
        "study_uid",
        "series_uid",
    }


def test_unmatched_series_makes_no_job(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 3, now=0.0, modality="MR")
    d.tick(now=11.0)
    assert sent == [] and d.jobs.counts() == {}


def test_late_instance_reroutes_and_runs_the_grown_series_again(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 3, now=0.0)
    d.tick(now=11.0)
    d.index.record(
        InstanceRecord("1.2", "1.2.3", "1.2.3.9", CT, "spool/x/9.dcm", 1, modality="CT"), now=20.0
    )
    d.tick(now=25.0)
    assert len(sent) == 1
    d.tick(now=31.0)
    assert len(sent) == 2 and len(sent[1]["inputs"]) == 4


def test_done_outcome_moves_results_to_the_outbox_per_destination(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    work = tmp_path / sent[0]["work_dir"]
    (work / OUTPUTS).mkdir(parents=True)
    (work / OUTPUTS / "seg-1.dcm").write_bytes(b"seg")
    JobOutcome("done", outputs=["seg-1.dcm"], timings={"infer": 1.0}).write(work)
    d.tick(now=12.0)
    job = d.jobs.get(sent[0]["job_id"])
    assert job.state == "done" and job.timings == {"infer": 1.0}
    assert (tmp_path / "outbox/1/seg-1.dcm").read_bytes() == b"seg"
    assert d.outbox.counts() == {"pending": 1}
    assert not work.exists()


def test_skipped_outcome_keeps_the_workers_reason(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    JobOutcome("skipped", "(0008,0060) Modality is MR; lung-ct needs CT").write(
        _mkdir(tmp_path / sent[0]["work_dir"])
    )
    d.tick(now=12.0)
    job = d.jobs.get(sent[0]["job_id"])
    assert (job.state, job.reason) == ("skipped", "(0008,0060) Modality is MR; lung-ct needs CT")


def test_job_nobody_took_is_enqueued_again_and_waiting_never_fails_it(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    d.tick(now=50.0)
    assert len(sent) == 1
    for n, now in enumerate((112.0, 213.0, 314.0, 415.0), start=2):
        d.tick(now=now)
        assert len(sent) == n
    job = d.jobs.get(sent[0]["job_id"])
    assert (job.state, job.attempts) == ("queued", 1)


def test_job_whose_worker_keeps_dying_fails_after_max_attempts(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    started = _mkdir(tmp_path / sent[0]["work_dir"]) / STARTED
    for _ in range(2):
        started.write_text("{}")
        d.tick(now=started.stat().st_mtime + 60)
    job = d.jobs.get(sent[0]["job_id"])
    assert job.state == "failed"
    assert job.reason == "gave up after 2 attempts: its worker stopped answering"


def test_running_job_with_a_dead_worker_is_enqueued_again(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    started = _mkdir(tmp_path / sent[0]["work_dir"]) / STARTED
    started.write_text("{}")
    mtime = started.stat().st_mtime
    d.tick(now=mtime + 5)
    assert d.jobs.get(sent[0]["job_id"]).state == "running"
    d.tick(now=mtime + 60)
    assert len(sent) == 2 and not started.exists()


def test_broker_down_leaves_the_job_queued_for_the_next_tick(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.enqueue = _refuse
    d.tick(now=11.0)
    [job] = d.jobs.active()
    assert job.enqueued_at is None
    d.enqueue = sent.append
    d.tick(now=12.0)
    assert len(sent) == 1


def _refuse(message: dict) -> None:
    raise ConnectionError("broker unreachable")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_restart_enqueues_unfinished_jobs_but_not_ones_a_live_worker_holds(tmp_path):
    d, sent = make(tmp_path)
    receive(d, 2, now=0.0)
    d.index.record(InstanceRecord("1.2", "1.2.4", "1.2.4.1", CT, "spool/1.2/1.2.4/1.2.4.1.dcm", 1,
                                  modality="CT"), now=0.0)  # fmt: skip
    d.tick(now=11.0)
    assert len(sent) == 2
    held = _mkdir(tmp_path / sent[1]["work_dir"]) / STARTED
    held.write_text("{}")
    sent.clear()
    assert d.requeue_unfinished(now=held.stat().st_mtime + 1) == 1
    assert [m["job_id"] for m in sent] == [1]
