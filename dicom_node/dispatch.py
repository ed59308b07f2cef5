"""From stable studies to jobs, jobs to workers, outcomes to the outbox.

One ``tick`` does, in order:

1. route: every stable study's series go through the rules; each (series,
   rule) pair becomes a queued job (once per set of instances);
2. advance: for every active job, read its worker's report from the work
   folder, let ``lifecycle.decide`` choose the step, and apply it through
   ``Jobs.move``: send (or re-send) its ticket, note that a worker holds it,
   issue a new ticket, collect the outcome (results into the outbox), or fail.

The node's job table is the truth; the broker is only transport, so a flushed
Redis, a killed worker or a restarted node loses no job. A job delivered twice
is harmless: a message for an ended job or an older ticket finds no folder and
does nothing, and result UIDs are deterministic.

Each job is handled under its own guard: a job whose report cannot be trusted
is failed with a reason; an unexpected error is logged by class and the job is
failed; the other jobs go on.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from dicom_node.errors import BadReport, UnreadableResult
from dicom_node.index import Index
from dicom_node.jobs import Job, Jobs, JobState, Move
from dicom_node.jobspec import JobOutcome, JobRequest
from dicom_node.lifecycle import Policy, Step, decide
from dicom_node.outbox import Outbox
from dicom_node.router import FORWARD, Router
from dicom_node.settings import Settings
from dicom_node.spool import OutboxEntry, Spool

logger = logging.getLogger(__name__)


class Enqueue(Protocol):
    """Hands a job message to the broker. ``queue`` (device class), ``lane``
    (urgent | normal | offpeak) and ``priority`` (0-9, 9 first) come from the
    routing rule that made the job; the backend decides how to honour them."""

    def __call__(
        self, message: dict[str, Any], *, queue: str, lane: str, priority: int
    ) -> None: ...


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        index: Index,
        jobs: Jobs,
        outbox: Outbox,
        enqueue: Enqueue,
        on_results: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.index = index
        self.jobs = jobs
        self.outbox = outbox
        self.enqueue = enqueue
        self.on_results = on_results
        self.clock = clock
        self.router = Router(settings, spool, index, jobs)

    @property
    def policy(self) -> Policy:
        w = self.settings.workers
        return Policy(w.lease_seconds, w.requeue_after_seconds, w.max_attempts)

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.route(now)
        for job in self.jobs.active():
            self.advance(job, now)

    # -- 1. route --------------------------------------------------------
    def route(self, now: float) -> None:
        self.router.settings = self.settings
        self.router.route(now)

    # -- 2. advance ---------------------------------------------------------
    def advance(self, job: Job, now: float) -> None:
        """One job, one step, under a guard that keeps the other jobs going."""
        try:
            if job.pipeline == FORWARD:
                self._forward(job, now)
                return
            report = self.spool.job_folder(job.id).report(job.ticket)
            self._apply(job, decide(job, report, now, self.policy), report.beat, now)
        except (BadReport, UnreadableResult) as exc:  # permanent: this job cannot go on
            self._fail(job, job.attempts, str(exc), now)
        except self.jobs.db.transient_errors as exc:  # database busy or away: next tick
            logger.warning("job %d: database not available (%s); will try again", job.id,
                           type(exc).__name__, extra={"job": job.id})  # fmt: skip
        except Exception as exc:  # a defect or an odd file: this job fails, the rest go on
            where = "".join(traceback.format_tb(exc.__traceback__)[-3:])
            logger.error("job %d: node error %s while handling it at\n%s", job.id,
                         type(exc).__name__, where, extra={"job": job.id})  # fmt: skip
            reason = f"node error while handling the job ({type(exc).__name__})"
            self._fail(job, job.attempts, reason, now)

    def _apply(self, job: Job, step: Step, beat: str | None, now: float) -> None:
        if step.action == "collect":
            assert step.outcome is not None
            self._collect(job, step.outcome, step.attempts, now)
        elif step.action == "fail":
            self._fail(job, step.attempts, step.reason, now)
        elif step.action == "send":
            self._send(job, step.attempts, now, first=step.first)
        elif step.action == "observe":
            moved = self.jobs.move(job.id, Move.OBSERVE, now, attempts=step.attempts,
                                   beat=beat or "", beat_at=now,
                                   started_at=job.started_at or now)  # fmt: skip
            if moved and job.state == JobState.QUEUED:
                logger.info("job %d taken by a worker (attempt %d)", job.id, step.attempts,
                            extra={"job": job.id})  # fmt: skip
        elif step.action == "reissue":
            self._reissue(job, step, now)
        elif step.attempts != job.attempts:  # wait, but a delivery started meanwhile
            self.jobs.move(job.id, Move.SEND if job.state == JobState.QUEUED else Move.OBSERVE,
                           now, attempts=step.attempts)  # fmt: skip

    def _reissue(self, job: Job, step: Step, now: float) -> None:
        logger.warning("job %d: %s; attempt %d of %d done, issuing it again", job.id, step.reason,
                       step.attempts, self.policy.max_attempts, extra={"job": job.id})  # fmt: skip
        moved = self.jobs.move(job.id, Move.REISSUE, now, attempts=step.attempts,
                               ticket=job.ticket + 1, beat="", beat_at=None, enqueued_at=None,
                               not_before=step.not_before)  # fmt: skip
        if moved and (step.not_before is None or step.not_before <= now):
            fresh = self.jobs.get(job.id)
            if fresh is not None:
                self._send(fresh, step.attempts, now, first=True)

    def _send(self, job: Job, attempts: int, now: float, first: bool) -> None:
        ticket = max(job.ticket, 1)
        if first or not self.spool.job_folder(job.id).ticket(ticket).exists():
            self.spool.job_folder(job.id).open_ticket(ticket)
        request = JobRequest(
            job_id=job.id,
            ticket=ticket,
            pipeline=job.pipeline,
            inputs=job.inputs,
            uid_root=self.settings.node.uid_root,
            max_attempts=self.settings.workers.max_attempts,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            queue=job.queue,
            lane=job.lane,
            priority=job.priority,
            parameters=job.parameters,
        )
        try:
            self.enqueue(request.to_message(), queue=job.queue, lane=job.lane,
                         priority=job.priority)  # fmt: skip
        except Exception as exc:  # broker down: the job stays queued, tried next tick
            logger.warning("could not enqueue job %d (%s); will try again", job.id,
                           type(exc).__name__, extra={"job": job.id})  # fmt: skip
            return
        if job.enqueued_at is not None and not first:
            logger.warning("job %d sent again: no worker took it within %.0f s", job.id,
                           self.policy.requeue_after_seconds, extra={"job": job.id})  # fmt: skip
        self.jobs.move(job.id, Move.SEND, now, ticket=ticket, attempts=attempts, enqueued_at=now,
                       not_before=None)  # fmt: skip

    def _collect(self, job: Job, outcome: JobOutcome, attempts: int, now: float) -> None:
        folder = self.spool.job_folder(job.id)
        entries = []
        if outcome.status == "done":
            # Idempotent: a crash after some moves leaves those files in the outbox already.
            for name in outcome.outputs:
                entry = self._outbox_entry(job.id, name)
                if not entry.exists():
                    entry.take(folder.result(job.ticket, name))
                entries.append(entry)
            if not entries:
                raise UnreadableResult("the worker reported done but wrote no result file")
            self.outbox.add(job.id, [e.relpath for e in entries], job.destinations, now)
        state = JobState(outcome.status)
        # A job that ran between two looks was never seen running: its start is when
        # the node first saw it (node clock; the worker's clock is never compared).
        moved = self.jobs.move(job.id, Move.FINISH, now, to=state, reason=outcome.reason,
                               attempts=attempts, timings=outcome.timings,
                               summary=outcome.summary, finished_at=now,
                               started_at=job.started_at or now)  # fmt: skip
        folder.remove()
        if not moved:
            return
        log = logger.error if state == JobState.FAILED else logger.info
        log("job %d %s%s", job.id, state.value, f": {outcome.reason}" if outcome.reason else "",
            extra={"job": job.id, "series": job.series_uid})  # fmt: skip
        if entries and self.on_results is not None:
            self.on_results()

    def _forward(self, job: Job, now: float) -> None:
        """A forward job: its received files go to the outbox unchanged (linked, so
        retention of the spool and sending stay independent). Idempotent."""
        entries = []
        for i, rel in enumerate(job.inputs):
            entry = self.spool.outbox_entry(job.id, f"{i + 1:06d}.dcm")
            entry.link(self.spool.input_path(rel))
            entries.append(entry.relpath)
        self.outbox.add(job.id, entries, job.destinations, now)
        if self.jobs.move(job.id, Move.FINISH, now, to=JobState.DONE, finished_at=now):
            logger.info("job %d done: %d instance(s) queued for %s", job.id, len(entries),
                        ", ".join(job.destinations), extra={"job": job.id})  # fmt: skip
            if self.on_results is not None:
                self.on_results()

    def _outbox_entry(self, job_id: int, name: str) -> OutboxEntry:
        try:
            return self.spool.outbox_entry(job_id, name)
        except ValueError:
            raise BadReport("the worker reported a result file name that is not safe") from None

    def _fail(self, job: Job, attempts: int, reason: str, now: float) -> None:
        moved = self.jobs.move(job.id, Move.FINISH, now, to=JobState.FAILED, reason=reason,
                               attempts=attempts, finished_at=now)  # fmt: skip
        self.spool.job_folder(job.id).remove()
        if moved:
            logger.error("job %d failed: %s", job.id, reason, extra={"job": job.id})

    def requeue_unfinished(self, now: float | None = None) -> int:
        """At start-up: hand every unfinished job that no worker holds to the broker
        again (a duplicate is harmless), and finish removals a crash cut short."""
        now = self.clock() if now is None else now
        self.spool.sweep_trash()
        count = 0
        for job in self.jobs.active():
            try:
                report = self.spool.job_folder(job.id).report(job.ticket)
            except BadReport:
                continue  # the first tick fails it with the reason
            if report.outcome is None and report.beat is None and job.ticket > 0:
                self._send(job, job.attempts, now, first=False)
                count += 1
        for job_id in self.spool.job_folders():  # folders of jobs that ended meanwhile
            found = self.jobs.get(job_id)
            if found is None or found.ended:
                self.spool.job_folder(job_id).remove()
        return count
