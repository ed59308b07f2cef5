"""Worker lanes on real Redis with real worker processes: urgent work overtakes a
backlog, a job runs only on workers of its device class, and Celery's own tools
(``celery inspect``, which Flower uses) see the workers and their tasks."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.fault_pipelines import RELEASE
from tests.support.peers import NodeProcess, Redis, require, stop_together, storescu
from tests.support.phantom import make_chest_phantom
from tests.support.wait import wait_for

ENDED = {"done", "skipped", "failed"}


def rule(
    name: str, description: str, queue: str, lane: str, pipeline: str = "pause", priority: int = 5
) -> dict[str, Any]:
    run = {"pipeline": pipeline, "queue": queue, "lane": lane, "priority": priority}
    return {"name": name, "match": {"Modality": "CT", "SeriesDescription": description},
            "run": [run]}  # fmt: skip


@dataclass
class Lanes:
    folder: Path
    redis: Redis
    node: NodeProcess
    hu: np.ndarray
    spacing: tuple[float, float, float]
    workers: list[NodeProcess]
    count: int = 0

    def worker(self, *args: str) -> NodeProcess:
        worker = NodeProcess(
            self.folder / "node", self.node.config, command="worker", port=self.node.port,
            module="tests.support.fault_node", log_name=f"worker-{len(self.workers)}.log",
            args=list(args),
        )  # fmt: skip
        self.workers.append(worker.start())
        return worker

    def push(self, description: str) -> str:
        self.count += 1
        options = SeriesOptions(spacing=self.spacing, series_description=description)
        series = write_ct_series(self.folder / f"study-{self.count}", self.hu, options)
        assert storescu(self.node.port, series.paths).returncode == 0
        return series.study_uid

    def jobs(self, status: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Jobs by study in ``status`` (default: the status command's output)."""
        jobs = (status or self.node.status(limit=100))["recent_jobs"]
        return {j["study_uid"]: j for j in jobs}

    def state_of(self, study_uid: str, status: dict[str, Any] | None = None) -> str | None:
        job = self.jobs(status).get(study_uid)
        return None if job is None else str(job["state"])

    def wait_state(self, study_uid: str, states: set[str], timeout: float = 90) -> None:
        """Until the job is in one of ``states``, read in this process (``snapshot``):
        a state may last less than a status command takes."""
        wait_for(lambda: self.state_of(study_uid, self.node.snapshot(limit=100)) in states,
                 timeout, f"study {study_uid}'s job to be {'/'.join(sorted(states))}",
                 poll=0.2)  # fmt: skip


@pytest.fixture
def lanes(tmp_path: Path) -> Iterator[Lanes]:
    phantom = make_chest_phantom((4, 64, 64), (5.0, 4.0, 4.0), body_scale=0.55, seed=5)
    redis = Redis(tmp_path / "redis").start()
    config = {
        "node": {"stable_after_seconds": 0.5},
        "storage": {"dir": "var"},
        "broker": {"url": redis.url},
        "workers": {
            "heartbeat_seconds": 0.5,
            "lease_seconds": 10,
            "requeue_after_seconds": 60,
            "task_time_limit_seconds": 60,
        },  # fmt: skip
        "rules": [
            rule("research", "BACKLOG.*", "default", "offpeak"),
            rule("routine", "ROUTINE.*", "default", "normal"),
            rule("routine-first", "FIRST.*", "default", "normal", priority=8),
            rule("stroke", "STROKE.*", "default", "urgent"),
            rule("on-gpu", "GPU.*", "gpu", "normal"),
            rule("on-cpu", "CPU.*", "cpu", "normal"),
            rule("long-on-gpu", "LONG.*", "gpu", "normal", "pause-long"),
        ],
    }
    node = NodeProcess(tmp_path / "node", config, module="tests.support.fault_node")
    site = Lanes(tmp_path, redis, node, phantom.hu, phantom.spacing, [])
    try:
        node.start()
        yield site
    finally:
        stop_together(*site.workers, node)
        redis.stop()


def test_urgent_study_overtakes_a_queued_backlog(lanes: Lanes):
    backlog = [lanes.push("BACKLOG research") for _ in range(3)]
    routine = lanes.push("ROUTINE chest")
    first = lanes.push("FIRST routine")  # normal lane, priority 8 of 9
    for study in (*backlog, routine, first):
        lanes.wait_state(study, {"queued"})
    stroke = lanes.push("STROKE protocol")  # sent last, behind the whole backlog in Redis
    lanes.wait_state(stroke, {"queued"})
    lanes.node.wait_status(lambda s: all(j["enqueued_at"] for j in lanes.jobs(s).values()), 30,
                           "all enqueued", limit=100)  # fmt: skip
    lanes.worker()  # one worker process, default device class, every lane
    for study in (*backlog, routine, first, stroke):
        lanes.wait_state(study, {"skipped"})
    jobs = lanes.jobs()
    order = sorted(jobs, key=lambda s: jobs[s]["started_at"])
    assert order[:3] == [stroke, first, routine], "urgent, then normal by priority"
    assert order[3:] == backlog, "off-peak last, first in first out"
    assert (jobs[stroke]["queue"], jobs[stroke]["lane"]) == ("default", "urgent")


def test_a_job_runs_only_on_workers_of_its_device_class(lanes: Lanes):
    lanes.worker("--queues", "gpu")
    cpu_study = lanes.push("CPU only")
    gpu_study = lanes.push("GPU model")
    lanes.wait_state(gpu_study, {"skipped"})
    assert lanes.state_of(cpu_study) == "queued", "a gpu-only worker took a cpu job"
    lanes.worker("--queues", "cpu")
    lanes.wait_state(cpu_study, {"skipped"})


def test_celery_inspect_sees_redis_mode_workers_and_their_running_task(lanes: Lanes):
    require("redis-server")
    lanes.worker("--queues", "gpu,cpu")

    def inspect(what: str, *options: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "celery", "--broker", lanes.redis.url, "inspect", what,
             *options],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        return result.stdout + result.stderr

    # Asked of every worker, inspect waits out its whole timeout; asked of one
    # (--destination), it returns with that worker's reply.
    def ping() -> re.Match[str] | None:
        return re.search(r"->\s+(\S+@\S+): OK\s+pong", inspect("ping", "--timeout", "1"))

    pong = wait_for(ping, 60, "a worker to answer celery inspect ping")
    worker = ["--destination", pong.group(1), "--timeout", "30"]
    study = lanes.push("LONG model")
    lanes.wait_state(study, {"running"})
    active = inspect("active", *worker)
    assert "dicom_node.run_job" in active, active
    queues = inspect("active_queues", *worker)
    assert "dicom-node.gpu.urgent" in queues and "dicom-node.cpu.offpeak" in queues, queues
    (lanes.node.folder / RELEASE).touch()  # the worker's folder: its job may end
    lanes.wait_state(study, {"skipped"})
