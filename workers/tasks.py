"""The one Celery task: parse the message, run the job, report. Like a web view."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from dicom_node.jobspec import JobRequest
from dicom_node.settings import Settings
from workers.app import TASK_NAME
from workers.execute import TransientError, execute
from workers.models import ModelCache

MAX_RETRIES = 3


def register(app: Celery, settings: Settings) -> Any:
    models = ModelCache()

    @app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=MAX_RETRIES,
        soft_time_limit=settings.workers.task_time_limit_seconds,
        time_limit=settings.workers.task_time_limit_seconds + 30,
    )
    def run_job(self: Task, message: dict[str, Any]) -> None:
        request = JobRequest.from_message(message)
        final = self.request.retries >= MAX_RETRIES
        try:
            execute(request, settings, models, final_attempt=final)
        except TransientError as exc:
            raise self.retry(exc=exc, countdown=min(10 * 2**self.request.retries, 300)) from exc

    return run_job
