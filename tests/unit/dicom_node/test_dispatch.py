"""The dispatcher with a recording enqueue (the broker is a parameter, not a patch).

A "worker" here writes to the work folder through the same ``TicketFolder`` API
the real worker uses (claim, beat, outputs, outcome)."""

from pathlib import Path

from dicom_node.dispatch import Dispatcher
from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs, JobState
from dicom_node.jobspec import JobOutcome
from dicom_node.outbox import Outbox
from dicom_node.settings import Settings
from dicom_node.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"


class Sent(list):
    """Job messages handed to the broker, and the routing keywords with each."""

    def __init__(self) -> None:
        super().__init__()
        self.keywords: list[dict[str, object]] = []

    def record(self, message: dict, **keywords: object) -> None:
        self.append(message)
        self.keywords.append(keywords)


def make(tmp_path: Path, open_db, **workers: float):
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
    db = open_db()
    sent = Sent()
    d = Dispatcher(settings, Spool(tmp_path), Index(db), Jobs(db), Outbox(db), sent.record)
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


def worker_takes(d: Dispatcher, message: dict, name: str = "w1"):
    """What a worker does when a delivery starts: claim it and beat once."""
    ticket = d.spool.job_folder(message["job_id"]).ticket(message["ticket"])
    claim = ticket.claim(name)
    ticket.beat(f"{claim}:0")
    return ticket


def test_stable_study_becomes_one_enqueued_job_with_paths_not_pixels(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 3, now=0.0)
    d.tick(now=5.0)
    assert sent == []
    d.tick(now=11.0)
    [message] = sent
    assert message["pipeline"] == "lung-ct"
    assert message["inputs"] == [f"spool/1.2/1.2.3/1.2.3.{i}.dcm" for i in range(3)]
    assert set(message) == {"job_id", "ticket", "pipeline", "inputs", "uid_root", "max_attempts",
                            "study_uid", "series_uid", "queue", "lane", "priority",
                            "parameters"}  # fmt: skip
    assert sent.keywords == [{"queue": "default", "lane": "normal", "priority": 5}]
    assert message["ticket"] == 1 and (tmp_path / "work/1/t1").is_dir()


def test_unmatched_series_makes_no_job(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 3, now=0.0, modality="MR")
    d.tick(now=11.0)
    assert sent == [] and d.jobs.counts() == {}


def test_late_instance_reroutes_and_runs_the_grown_series_again(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 3, now=0.0)
    d.tick(now=11.0)
    d.index.record(
        InstanceRecord("1.2", "1.2.3", "1.2.3.9", CT, "spool/x/9.dcm", 1, modality="CT"), now=20.0
    )
    d.tick(now=25.0)
    assert len(sent) == 1
    d.tick(now=31.0)
    assert len(sent) == 2 and len(sent[1]["inputs"]) == 4


def test_done_outcome_moves_results_to_the_outbox_and_removes_the_work_folder(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    ticket = worker_takes(d, sent[0])
    ticket.write_output("seg-1.dcm", b"seg")
    ticket.write_outcome(JobOutcome("done", outputs=["seg-1.dcm"], timings={"infer": 1.0}))
    d.tick(now=12.0)
    job = d.jobs.get(sent[0]["job_id"])
    assert job.state == "done" and job.timings == {"infer": 1.0} and job.attempts == 1
    assert (tmp_path / "outbox/1/seg-1.dcm").read_bytes() == b"seg"
    assert d.outbox.counts() == {"pending": 1}
    assert list((tmp_path / "work").iterdir()) == []


def test_skipped_outcome_keeps_the_workers_reason(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    ticket = worker_takes(d, sent[0])
    ticket.write_outcome(JobOutcome("skipped", "(0008,0060) Modality is MR; lung-ct needs CT"))
    d.tick(now=12.0)
    job = d.jobs.get(sent[0]["job_id"])
    assert (job.state, job.reason) == ("skipped", "(0008,0060) Modality is MR; lung-ct needs CT")


def test_job_nobody_took_is_sent_again_and_waiting_never_fails_it(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    d.tick(now=50.0)
    assert len(sent) == 1
    for n, now in enumerate((112.0, 213.0, 314.0, 415.0), start=2):
        d.tick(now=now)
        assert len(sent) == n
    assert {m["ticket"] for m in sent} == {1}, "the same ticket: a lost message, not an attempt"
    job = d.jobs.get(sent[0]["job_id"])
    assert (job.state, job.attempts) == ("queued", 0)


def test_worker_that_dies_at_once_every_time_fails_the_job_after_max_attempts(tmp_path, open_db):
    """A crash right after taking the job (reject_on_worker_lost redelivers at once):
    every delivery leaves a claim, and claims are attempts."""
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    worker_takes(d, sent[0], "w1")
    worker_takes(d, sent[0], "w2")  # redelivered before the node even looked
    d.tick(now=12.0)
    job = d.jobs.get(1)
    assert (job.state, job.attempts) == ("running", 2)
    d.tick(now=12.0 + 31)
    job = d.jobs.get(1)
    assert job.state == "failed"
    assert job.reason.startswith("gave up after 2 attempt(s): its worker was lost")
    assert list((tmp_path / "work").iterdir()) == []


def test_running_job_whose_heartbeat_stops_gets_a_new_ticket(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    old = worker_takes(d, sent[0])
    d.tick(now=20.0)
    assert d.jobs.get(1).state == "running"
    old.beat("w1:1")
    d.tick(now=40.0)  # the token changed: alive, lease restarts at 40
    d.tick(now=69.0)
    assert len(sent) == 1
    d.tick(now=71.0)
    assert [m["ticket"] for m in sent] == [1, 2]
    assert not old.exists(), "the frozen worker's ticket is withdrawn"
    assert (d.jobs.get(1).state, d.jobs.get(1).attempts) == ("queued", 1)


def test_retry_outcome_gets_a_new_ticket_after_a_backoff_then_fails_when_spent(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    worker_takes(d, sent[0]).write_outcome(JobOutcome("retry", "a transient error (OSError)"))
    d.tick(now=12.0)
    assert len(sent) == 1 and d.jobs.get(1).ticket == 2
    d.tick(now=12.0 + 10.0)
    assert [m["ticket"] for m in sent] == [1, 2]
    worker_takes(d, sent[1]).write_outcome(JobOutcome("retry", "a transient error (OSError)"))
    d.tick(now=30.0)
    job = d.jobs.get(1)
    assert (job.state, job.reason) == (
        "failed", "gave up after 2 attempt(s): a transient error (OSError)")  # fmt: skip


def test_broker_down_leaves_the_job_queued_for_the_next_tick(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.enqueue = _refuse
    d.tick(now=11.0)
    [job] = d.jobs.active()
    assert job.enqueued_at is None
    d.enqueue = sent.record
    d.tick(now=12.0)
    assert len(sent) == 1


def _refuse(message: dict, **_: object) -> None:
    raise ConnectionError("broker unreachable")


def test_one_bad_report_fails_that_job_and_the_others_go_on(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    for series in ("1.2.3", "1.2.4", "1.2.5"):
        d.index.record(InstanceRecord("1.2", series, f"{series}.1", CT,
                                      f"spool/1.2/{series}/{series}.1.dcm", 1, modality="CT"),
                       now=0.0)  # fmt: skip
    d.tick(now=11.0)
    assert len(sent) == 3
    malformed = worker_takes(d, sent[0])
    (malformed.path / "outcome.json").write_text("{ not json, PATIENT^SENTINEL")
    escaping = worker_takes(d, sent[1])
    escaping.write_outcome(JobOutcome("done", outputs=["../../../etc/passwd"]))
    good = worker_takes(d, sent[2])
    good.write_output("sr-1.dcm", b"sr")
    good.write_outcome(JobOutcome("done", outputs=["sr-1.dcm"]))
    d.tick(now=12.0)
    jobs = {j.id: j for j in d.jobs.recent()}
    assert (jobs[1].state, jobs[1].reason) == (
        "failed", "worker report unreadable: outcome.json is not valid JSON")  # fmt: skip
    assert (jobs[2].state, jobs[2].reason) == (
        "failed", "the worker reported a result file name that is not safe")  # fmt: skip
    assert jobs[3].state == "done"
    assert d.outbox.counts() == {"pending": 1}
    assert list((tmp_path / "work").iterdir()) == []


def test_done_without_the_reported_file_fails_the_job_with_a_reason(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    worker_takes(d, sent[0]).write_outcome(JobOutcome("done", outputs=["seg-1.dcm"]))
    d.tick(now=12.0)
    job = d.jobs.get(1)
    assert (job.state, job.reason) == (
        "failed", "the worker reported a result file that is not in its work folder")  # fmt: skip


def test_operator_retry_of_a_done_job_sends_its_results_again(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.tick(now=11.0)
    for n in (0, 1):
        ticket = worker_takes(d, sent[n])
        ticket.write_output("seg-1.dcm", b"seg")
        ticket.write_outcome(JobOutcome("done", outputs=["seg-1.dcm"]))
        d.tick(now=12.0 + n)
        assert d.jobs.get(1).state == JobState.DONE
        d.outbox.mark_sent(d.outbox.due(1e12)[0], 13.0 + n)
        if n == 0:
            assert d.jobs.retry(1)
            d.tick(now=20.0)
            assert [m["ticket"] for m in sent] == [1, 2]
    assert d.outbox.counts() == {"sent": 1}


def test_restart_sends_unfinished_jobs_again_but_not_ones_a_worker_holds(tmp_path, open_db):
    d, sent = make(tmp_path, open_db)
    receive(d, 2, now=0.0)
    d.index.record(InstanceRecord("1.2", "1.2.4", "1.2.4.1", CT, "spool/1.2/1.2.4/1.2.4.1.dcm", 1,
                                  modality="CT"), now=0.0)  # fmt: skip
    d.tick(now=11.0)
    assert len(sent) == 2
    worker_takes(d, sent[1])
    (tmp_path / "work/77").mkdir()  # left by a job that no longer exists
    sent.clear()
    assert d.requeue_unfinished(now=12.0) == 1
    assert [m["job_id"] for m in sent] == [1]
    assert not (tmp_path / "work/77").exists()
