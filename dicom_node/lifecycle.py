"""What to do next with an active job: a pure function of (job, report, now).

``decide`` reads nothing and writes nothing. The dispatcher reads the worker's
report from the job's work folder, calls ``decide``, and applies the step it
returns through ``Jobs.move``. Time is the ``now`` argument, on the node's own
clock: a lease is "the heartbeat token has not changed for ``lease_seconds`` of
node time", so no two machines' clocks are ever compared.

Rules, in order:

1. An outcome ends the job (done, skipped, failed). An outcome ``retry`` (a
   transient error) gets a new ticket after a backoff, unless the attempts are
   spent.
2. Attempts are the deliveries workers started (claims), counted by the job
   table. A worker that dies, however fast, leaves its claim behind.
3. A job never handed to the broker (ticket 0, or its folder is gone) is sent.
4. A changed heartbeat token means a worker holds the ticket: the job runs.
5. An unchanged token for ``lease_seconds``: the worker is lost (killed,
   frozen, out of memory). A new ticket is issued, or after ``max_attempts``
   the job fails with a reason.
6. Sent but not taken for ``requeue_after_seconds``: the message may be lost
   (flushed broker) or waiting behind others; it is sent again. Waiting for a
   worker is not an attempt and never fails a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dicom_node.jobs import Job
from dicom_node.jobspec import JobOutcome, WorkReport

LOST = "its worker was lost each time (killed, frozen, out of memory or crashed)"

Action = Literal["wait", "send", "observe", "reissue", "collect", "fail"]


@dataclass(frozen=True)
class Policy:
    lease_seconds: float
    requeue_after_seconds: float
    max_attempts: int
    retry_backoff_seconds: float = 10.0
    max_retry_backoff_seconds: float = 300.0

    def backoff(self, attempts: int) -> float:
        return min(
            self.retry_backoff_seconds * 2 ** max(attempts - 1, 0), self.max_retry_backoff_seconds
        )


@dataclass(frozen=True)
class Step:
    """One decision. ``attempts`` is the job's attempt count after this step."""

    action: Action
    attempts: int
    reason: str = ""
    outcome: JobOutcome | None = None
    not_before: float | None = None
    first: bool = False  # send: the ticket has never been handed out


def decide(job: Job, report: WorkReport, now: float, policy: Policy) -> Step:
    attempts = max(job.attempts, report.claims)
    if report.outcome is not None:
        return _concluded(report.outcome, attempts, now, policy)
    if job.ticket == 0 or not report.exists:
        if job.not_before is not None and now < job.not_before:
            return Step("wait", attempts)
        return Step("send", attempts, first=True)
    if report.beat is not None and report.beat != job.beat:
        return Step("observe", attempts)
    if report.beat is not None:
        since = job.beat_at if job.beat_at is not None else now
        if now - since < policy.lease_seconds:
            return Step("wait", attempts)
        if attempts >= policy.max_attempts:
            return Step("fail", attempts, f"gave up after {attempts} attempt(s): {LOST}")
        return Step("reissue", attempts, "its worker stopped answering", not_before=now)
    if job.enqueued_at is None or now - job.enqueued_at >= policy.requeue_after_seconds:
        return Step("send", attempts)
    return Step("wait", attempts)


def _concluded(outcome: JobOutcome, attempts: int, now: float, policy: Policy) -> Step:
    if outcome.status != "retry":
        return Step("collect", attempts, outcome.reason, outcome=outcome)
    if attempts >= policy.max_attempts:
        return Step("fail", attempts, f"gave up after {attempts} attempt(s): {outcome.reason}")
    return Step("reissue", attempts, outcome.reason, not_before=now + policy.backoff(attempts))
