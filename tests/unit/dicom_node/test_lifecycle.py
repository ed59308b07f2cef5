"""The dispatcher's decisions as a pure function of (job, report, now)."""

from __future__ import annotations

import dataclasses

from dicom_node.jobs import Job, JobState
from dicom_node.jobspec import JobOutcome, WorkReport
from dicom_node.lifecycle import Policy, decide

POLICY = Policy(lease_seconds=30, requeue_after_seconds=100, max_attempts=3)
JOB = Job(id=1, study_uid="1", series_uid="1.1", rule="r", pipeline="p", inputs=[],
          destinations=[], state=JobState.QUEUED, reason="", attempts=0, ticket=1, beat="",
          beat_at=None, not_before=None, created_at=0.0, updated_at=0.0, enqueued_at=10.0,
          started_at=None, finished_at=None, timings={}, summary={})  # fmt: skip


def job(**changes: object) -> Job:
    return dataclasses.replace(JOB, **changes)  # type: ignore[arg-type]


def test_a_job_never_sent_is_sent():
    step = decide(job(ticket=0, enqueued_at=None), WorkReport(exists=False), 0.0, POLICY)
    assert (step.action, step.first) == ("send", True)


def test_a_new_heartbeat_token_means_running_and_counts_the_claims():
    step = decide(job(), WorkReport(True, claims=1, beat="1:w:0"), 20.0, POLICY)
    assert (step.action, step.attempts) == ("observe", 1)


def test_lease_is_node_time_since_the_token_last_changed():
    running = job(state=JobState.RUNNING, attempts=1, beat="1:w:3", beat_at=100.0)
    same = WorkReport(True, claims=1, beat="1:w:3")
    assert decide(running, same, 129.0, POLICY).action == "wait"
    step = decide(running, same, 131.0, POLICY)
    assert (step.action, step.attempts) == ("reissue", 1)


def test_lost_worker_with_attempts_spent_fails_with_a_reason():
    running = job(state=JobState.RUNNING, attempts=3, beat="3:w:0", beat_at=100.0)
    step = decide(running, WorkReport(True, claims=3, beat="3:w:0"), 200.0, POLICY)
    assert step.action == "fail"
    assert step.reason.startswith("gave up after 3 attempt(s): its worker was lost")


def test_outcomes_end_the_job_whatever_the_heartbeat_says():
    done = JobOutcome("done", outputs=["seg-1.dcm"])
    step = decide(job(), WorkReport(True, claims=1, beat="1:w:0", outcome=done), 5.0, POLICY)
    assert (step.action, step.outcome) == ("collect", done)


def test_retry_outcome_waits_a_backoff_that_doubles():
    retry = JobOutcome("retry", "a transient error (OSError)")
    first = decide(job(), WorkReport(True, claims=1, outcome=retry), 50.0, POLICY)
    second = decide(job(attempts=2), WorkReport(True, claims=2, outcome=retry), 50.0, POLICY)
    assert (first.action, first.not_before) == ("reissue", 60.0)
    assert second.not_before == 70.0
    spent = decide(job(attempts=3), WorkReport(True, claims=3, outcome=retry), 50.0, POLICY)
    assert spent.action == "fail"


def test_a_reissued_ticket_waits_for_its_backoff():
    reissued = job(ticket=2, enqueued_at=None, not_before=60.0)
    assert decide(reissued, WorkReport(exists=False, claims=1), 59.0, POLICY).action == "wait"
    assert decide(reissued, WorkReport(exists=False, claims=1), 60.0, POLICY).action == "send"


def test_a_message_nobody_took_is_sent_again_without_counting_an_attempt():
    assert decide(job(), WorkReport(True), 109.0, POLICY).action == "wait"
    step = decide(job(), WorkReport(True), 110.0, POLICY)
    assert (step.action, step.first, step.attempts) == ("send", False, 0)
