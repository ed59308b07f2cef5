"""The Celery application, made from settings (no module-level app).

``broker.url: embedded`` uses kombu's file-system transport in
``<storage.dir>/broker/``: a real transport that needs no server, for a node
on one machine. ``redis://…`` is the production broker; every option below is
the same in both modes, so the same task runs the same way.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.lanes import DEFAULT_DEVICE, DEFAULT_LANE, PRIORITY_STEPS, queue_name
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
            "queue_order_strategy": "priority",
        }
    return settings.broker.url, {
        "visibility_timeout": visibility_timeout(settings),
        # Take from the first non-empty queue in the order given (lanes.consumed),
        # lowest priority step first across them (lanes.broker_priority).
        "queue_order_strategy": "priority",
        # The key separator stays kombu's default: Flower and `celery inspect` use it too.
        "priority_steps": PRIORITY_STEPS,
    }


def visibility_timeout(settings: Settings) -> int:
    """Redis redelivers an unacknowledged (acks_late) task after this many seconds:
    above the hard time limit, so a long job is never run twice at once."""
    return int(settings.workers.task_time_limit_seconds * 2 + 60)


def make_app(settings: Settings) -> Celery:
    url, options = broker_options(settings)
    app = Celery("dicom_node", broker=url, set_as_current=False)
    limit = settings.workers.task_time_limit_seconds
    remote = not settings.broker.embedded  # the file-system transport cannot broadcast
    app.conf.update(
        broker_transport_options=options,
        # Everything else that reads Redis with the same timeout (Flower, inspect).
        result_backend_transport_options={"visibility_timeout": visibility_timeout(settings)},
        broker_connection_retry_on_startup=True,
        task_default_queue=queue_name(settings.workers.queue, DEFAULT_DEVICE, DEFAULT_LANE),
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
        # `celery inspect ping|active` and Flower answer against Redis-mode workers.
        worker_enable_remote_control=remote,
        worker_send_task_events=remote,
        task_send_sent_event=remote,
        worker_max_memory_per_child=None,
    )
    app.conf.dicom_node_settings = settings
    return app
