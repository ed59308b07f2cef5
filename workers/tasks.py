"""The one Celery task: parse the message, run the job's ticket, report. Like a web view.

Celery carries the message and redelivers it when a worker process is lost
(``acks_late`` + ``reject_on_worker_lost``); it counts nothing. Attempts are
claims in the job's work folder, counted by the node's job table, so a job
that kills its worker ends after ``workers.max_attempts`` however fast it dies.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task

from dicom_node.jobspec import JobRequest, MessageError
from dicom_node.settings import Settings
from workers.app import TASK_NAME
from workers.execute import PipelineFactories, execute
from workers.models import ModelCache

logger = logging.getLogger(__name__)


def register(app: Celery, settings: Settings, pipelines: PipelineFactories | None = None) -> Any:
    models = ModelCache(
        settings.models, (settings.workers.intra_op_threads, settings.workers.inter_op_threads)
    )

    @app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=0,
        soft_time_limit=settings.workers.task_time_limit_seconds,
        time_limit=settings.workers.task_time_limit_seconds + 30,
    )
    def run_job(self: Task, message: Any) -> None:
        try:
            request = JobRequest.from_message(message)
        except MessageError as exc:
            logger.error("dropped a malformed job message: %s", exc)
            return
        execute(request, settings, models, pipelines)
        if models.broken:
            # A model load cut short can leave TensorFlow half-imported in this process,
            # and every later job would fail. Leave now: the pool starts a clean process,
            # and this message (not acked) comes back as a no-op, since its ticket
            # already has an outcome.
            logger.error("model loading was interrupted; replacing this worker process")
            os._exit(70)

    return run_job
