"""The Celery application, made from settings (no module-level app).

``broker.url: embedded`` uses kombu's file-system transport in
``<storage.dir>/broker/``: a real transport that needs no server, for a node
on one machine. ``redis://…`` is the production broker; every option below is
the same in both modes, so the same task runs the same way.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.settings import Settings
from dicom_node.spool import Spool

TASK_NAME = "dicom_node.run_job"


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    if settings.broker.embedded:
        folder = Spool(settings.storage.dir).broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://localhost/", {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.25,  # seconds between looks at the queue folder
        }
    # Redis redelivers an unacknowledged (acks_late) task after visibility_timeout;
    # keep it above the task's time limit so a long job is not run twice at once.
    timeout = int(settings.workers.task_time_limit_seconds * 2 + 60)
    return settings.broker.url, {"visibility_timeout": timeout}


def make_app(settings: Settings) -> Celery:
    url, options = broker_options(settings)
    app = Celery("dicom_node", broker=url, set_as_current=False)
    limit = settings.workers.task_time_limit_seconds
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.workers.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=limit + 30,
        task_soft_time_limit=limit,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.workers.concurrency,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_max_memory_per_child=None,
    )
    app.conf.dicom_node_settings = settings
    return app
