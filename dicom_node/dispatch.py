"""From stable studies to jobs, jobs to workers, outcomes to the outbox.

One ``tick`` does, in order:

1. route: every stable study's series go through the rules; each (series,
   rule) pair becomes a queued job (once per set of instances);
2. enqueue: queued jobs never handed to the broker are sent to it;
3. collect: jobs whose worker wrote an outcome end as done (outputs moved to
   the outbox), skipped or failed, with the worker's reason;
4. recover: a queued job nobody took within ``workers.requeue_after_seconds``
   is enqueued again (waiting for a worker never fails a job); a running job
   whose heartbeat is older than ``workers.lease_seconds`` is enqueued again,
   and after ``workers.max_attempts`` such deliveries it fails with a reason.

The node's job table is the truth; the broker is only transport, so a flushed
Redis, a killed worker or a restarted node loses no job. A job delivered twice
is harmless: the worker skips a job that has an outcome or a live owner, and
result UIDs are deterministic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node import assembly, routing
from dicom_node.index import Index
from dicom_node.jobs import Job, Jobs
from dicom_node.jobspec import OUTPUTS, STARTED, JobOutcome, JobRequest, heartbeat_age
from dicom_node.outbox import Outbox
from dicom_node.settings import Settings
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

Enqueue = Callable[[dict[str, Any]], None]


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
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.index = index
        self.jobs = jobs
        self.outbox = outbox
        self.enqueue = enqueue
        self.on_results = on_results

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.route(now)
        for job in self.jobs.active():
            self._advance(job, now)

    # -- 1. route --------------------------------------------------------
    def route(self, now: float) -> None:
        ready = assembly.stable_studies(
            self.index.studies_to_route(), now, self.settings.node.stable_after_seconds
        )
        for study in ready:
            created = 0
            for series in self.index.series_of(study.study_uid):
                for rule in routing.select(series, self.settings.rules):
                    created += self._create_job(series.study_uid, series.series_uid, rule)
            self.index.mark_routed(study.study_uid, study.revision)
            logger.info(
                "study stable: %d job(s) created", created, extra={"study": study.study_uid}
            )

    def _create_job(self, study_uid: str, series_uid: str, rule: Any) -> int:
        files = self.index.files_of(series_uid)
        job_id = self.jobs.create(
            study_uid=study_uid,
            series_uid=series_uid,
            rule=rule.name,
            pipeline=rule.pipeline,
            sop_uids=[sop for sop, _ in files],
            inputs=[path for _, path in files],
            destinations=rule.destinations,
        )
        if job_id is None:
            return 0
        logger.info(
            "job %d queued: rule %s, pipeline %s, %d instances",
            job_id,
            rule.name,
            rule.pipeline,
            len(files),
            extra={"job": job_id, "series": series_uid},
        )
        return 1

    # -- 2-4. enqueue, collect, recover -------------------------------------
    def _advance(self, job: Job, now: float) -> None:
        work = self.spool.root / self.spool.work_relpath(job.id)
        outcome = JobOutcome.read(work)
        if outcome is not None:
            self._collect(job, outcome, work)
            return
        age = heartbeat_age(work, now)
        if job.enqueued_at is None:
            self._send(job, now, count_attempt=True)
        elif age is not None and age < self.settings.workers.lease_seconds:
            if job.state == "queued":
                self.jobs.mark_running(job.id, now - age)
        elif age is not None:
            self._recover(job, now)
        elif now - job.enqueued_at >= self.settings.workers.requeue_after_seconds:
            # The message may be lost (flushed broker) or just waiting behind others, or
            # no worker runs: send it again. A duplicate is harmless, and waiting for a
            # worker is not an attempt, so this never fails the job.
            logger.warning("job %d enqueued again: no worker took it", job.id,
                           extra={"job": job.id})  # fmt: skip
            self._send(job, now, count_attempt=False)

    def _recover(self, job: Job, now: float) -> None:
        """The worker running ``job`` stopped its heartbeat: run it again, or give up."""
        if job.attempts >= self.settings.workers.max_attempts:
            reason = f"gave up after {job.attempts} attempts: its worker stopped answering"
            self.jobs.finish(job.id, "failed", reason, now=now)
            logger.error("job %d failed: %s", job.id, reason, extra={"job": job.id})
            return
        logger.warning("job %d enqueued again: its worker stopped answering", job.id,
                       extra={"job": job.id})  # fmt: skip
        (self.spool.root / self.spool.work_relpath(job.id) / STARTED).unlink(missing_ok=True)
        self._send(job, now, count_attempt=True)

    def _send(self, job: Job, now: float, count_attempt: bool) -> None:
        request = JobRequest(
            job_id=job.id,
            pipeline=job.pipeline,
            inputs=job.inputs,
            work_dir=self.spool.work_relpath(job.id),
            uid_root=self.settings.node.uid_root,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
        )
        try:
            self.enqueue(request.to_message())
        except Exception as exc:  # broker down: the job stays queued, tried next tick
            logger.warning("could not enqueue job %d: %s", job.id, exc, extra={"job": job.id})
            return
        self.jobs.mark_enqueued(job.id, now, count_attempt)

    def _collect(self, job: Job, outcome: JobOutcome, work: Path) -> None:
        if outcome.status == "done":
            # Idempotent: a crash after some moves leaves those files in the outbox already.
            moved = []
            for name in outcome.outputs:
                if (work / OUTPUTS / name).exists():
                    self.spool.move_to_outbox(work / OUTPUTS / name, job.id)
                rel = self.spool.outbox_relpath(job.id, name)
                if (self.spool.root / rel).exists():
                    moved.append(rel)
            self.outbox.add(job.id, moved, job.destinations)
        self.jobs.finish(job.id, outcome.status, outcome.reason, outcome.timings, outcome.summary)
        self.spool.remove_work(job.id)
        log = logger.info if outcome.status != "failed" else logger.error
        log(
            "job %d %s%s",
            job.id,
            outcome.status,
            f": {outcome.reason}" if outcome.reason else "",
            extra={"job": job.id, "series": job.series_uid},
        )
        if outcome.status == "done" and self.on_results is not None:
            self.on_results()

    def requeue_unfinished(self, now: float | None = None) -> int:
        """At start-up: send every unfinished job without a live worker again."""
        now = time.time() if now is None else now
        count = 0
        for job in self.jobs.active():
            work = self.spool.root / self.spool.work_relpath(job.id)
            if JobOutcome.read(work) is not None:
                continue
            age = heartbeat_age(work, now)
            if age is not None and age < self.settings.workers.lease_seconds:
                continue
            self._send(job, now, count_attempt=False)
            count += 1
        return count
