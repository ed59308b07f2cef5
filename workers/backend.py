"""The worker side the node is handed at start-up: enqueue, start workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.lanes import DEFAULT_DEVICE, LANES, broker_priority, consumed, queue_name
from dicom_node.settings import Settings
from workers.app import TASK_NAME, make_app

if TYPE_CHECKING:
    from workers.execute import PipelineFactories


class CeleryBackend:
    """``pipelines``: code pipelines beside the built-in ones, by name (a site's own,
    or a test's); ``module``: what ``python -m`` runs for an embedded worker, so an
    entry point that adds pipelines gets them in its embedded worker too."""

    def __init__(self, pipelines: PipelineFactories | None = None, module: str = "workers") -> None:
        self.pipelines = dict(pipelines or {})
        self.module = module

    def make_enqueue(self, settings: Settings) -> Any:
        app = make_app(settings)
        base = settings.workers.queue

        def enqueue(
            message: dict[str, Any],
            *,
            queue: str = DEFAULT_DEVICE,
            lane: str = "normal",
            priority: int = 5,
        ) -> None:
            # Embedded mode has one worker for every device class; lanes still apply.
            device = DEFAULT_DEVICE if settings.broker.embedded else queue
            app.send_task(
                TASK_NAME,
                args=[message],
                queue=queue_name(base, device, lane),
                priority=broker_priority(lane, priority),
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1},
            )

        return enqueue

    def worker_command(self, settings: Settings, config: Path | None) -> list[str]:
        command = [sys.executable, "-m", self.module, "worker"]
        if config is not None:
            command += ["--config", str(Path(config).resolve())]
        return command

    def pipeline_names(self, settings: Settings) -> set[str]:
        """Pipelines from manifests (built-in and ``models:``), including refused
        ones (their jobs fail with the manifest's error), and code pipelines."""
        from pipelines.registry import discover

        # Names only, nothing logged: ``check_models`` reports the refusals.
        return discover(settings.models, verify=False, log=False).names() | set(self.pipelines)

    def check_models(self, settings: Settings) -> None:
        """Check every manifest folder fully (manifest, model file present, checksum;
        TensorFlow is not loaded) and log each refusal once, with its folder, key and
        line."""
        from pipelines.registry import discover

        discover(settings.models, verify=True, log=True)

    def list_models(self, settings: Settings) -> int:
        from workers.catalog import list_models

        return list_models(settings.models, self.pipelines)

    def check_model(self, folder: Path) -> int:
        from workers.catalog import check_model

        return check_model(folder)

    def run_worker(
        self,
        settings: Settings,
        devices: list[str],
        concurrency: int | None,
        lanes: tuple[str, ...] = LANES,
        gpu: int | None = None,
    ) -> int:
        """Consume the lanes of ``devices`` in lane order. ``gpu``: this process
        (and its pool) sees only that GPU, with TensorFlow's memory growth on."""
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        from workers.tasks import register

        # TensorFlow's INFO chatter off; its warnings and CUDA errors stay visible.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        queues = consumed(settings.workers.queue, devices, lanes)
        app = make_app(settings)
        register(app, settings, self.pipelines)
        argv = [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency or settings.workers.concurrency}",
            f"--queues={','.join(queues)}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname=dicom-node-{'-'.join(devices)}{'' if gpu is None else f'-gpu{gpu}'}@%h",
        ]
        if not settings.broker.embedded:
            argv.append("--task-events")  # for Flower and `celery events`
        app.worker_main(argv)
        return 0
