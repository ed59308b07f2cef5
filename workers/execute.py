"""Run one job in a worker process and report through its work folder.

    TransientError    something that may pass (I/O error, out of memory):
                      the task is retried with backoff; on the last attempt the
                      job ends "failed" with the reason
    SeriesNotUsable   → outcome "skipped" with the pipeline's reason
    PipelineFailed    → outcome "failed" with the pipeline's reason

A job delivered twice is harmless: a job with an outcome is not run again,
and a job another worker holds (file lock) is left to it.
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from pydicom.dataset import Dataset

from dicom_node.jobspec import OUTPUTS, STARTED, JobOutcome, JobRequest
from dicom_node.settings import Settings
from dicom_node.spool import write_atomic
from pipelines import registry
from pipelines.base import PipelineFailed, SeriesNotUsable
from pipelines.runner import run_series, summarize
from pipelines.uids import DerivedUids
from workers.models import ModelCache

logger = logging.getLogger(__name__)


class TransientError(Exception):
    """The job may succeed if tried again."""


@contextmanager
def _exclusive(work: Path) -> Iterator[bool]:
    fd = os.open(work / "lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def _heartbeat(path: Path, every: float) -> Iterator[None]:
    stop = threading.Event()
    path.write_text(json.dumps({"worker": _worker_name(), "started_at": time.time()}))

    def beat() -> None:
        while not stop.wait(every):
            os.utime(path)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _memory_mb(field: str) -> float:
    """VmRSS or VmHWM (peak) of this process in MB, from /proc (Linux); 0 elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak_memory() -> None:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _release_free_memory() -> None:
    """Hand memory freed by the finished job back to the OS (glibc keeps it otherwise),
    so an idle worker does not sit on its last job's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(
    request: JobRequest, settings: Settings, models: ModelCache, final_attempt: bool
) -> JobOutcome | None:
    """Run the job unless it already ended or another worker holds it."""
    root = Path(settings.storage.dir)
    work = root / request.work_dir
    work.mkdir(parents=True, exist_ok=True)
    if JobOutcome.read(work) is not None:
        logger.info("job %d already has an outcome; nothing to do", request.job_id)
        return None
    with _exclusive(work) as mine:
        if not mine:
            logger.info("job %d is being run by another worker", request.job_id)
            return None
        with _heartbeat(work / STARTED, settings.workers.heartbeat_seconds):
            outcome = _run(request, root, work, models, final_attempt)
        outcome.write(work)
    _release_free_memory()
    logger.info("job %d %s %s", request.job_id, outcome.status, outcome.reason)
    return outcome


def _run(
    request: JobRequest, root: Path, work: Path, models: ModelCache, final_attempt: bool
) -> JobOutcome:
    def ended(status: str, reason: str) -> JobOutcome:
        return JobOutcome(status, reason, worker=_worker_name(), finished_at=time.time())  # type: ignore[arg-type]

    try:
        pipeline = registry.get(request.pipeline)
    except KeyError:
        return ended("failed", f"unknown pipeline {request.pipeline!r}")
    paths = [root / p for p in request.inputs]
    uids = DerivedUids(
        [Path(p).stem for p in request.inputs],
        pipeline.spec.name,
        pipeline.spec.version,
        prefix=request.uid_root,
    )
    try:
        started = time.perf_counter()
        model = models.get(pipeline)
        loaded = time.perf_counter() - started
        _reset_peak_memory()
        rss_before = _memory_mb("VmRSS")
        result = run_series(pipeline, model, paths, uids)
        written = time.perf_counter()
        names = _write_outputs(work / OUTPUTS, result.datasets)
        timings = {"model": loaded, **result.timings, "write": time.perf_counter() - written}
        memory = {"rss_before_mb": rss_before, "peak_rss_mb": _memory_mb("VmHWM")}
    except SeriesNotUsable as exc:
        return ended("skipped", str(exc))
    except PipelineFailed as exc:
        return ended("failed", str(exc))
    except SoftTimeLimitExceeded:
        return ended("failed", "the job took longer than workers.task_time_limit_seconds")
    except (OSError, MemoryError) as exc:
        if not final_attempt:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        return ended("failed", f"{type(exc).__name__} on every attempt: {exc}")
    except Exception as exc:  # a defect or data the pipeline did not foresee
        logger.exception("job %d: pipeline error", request.job_id)
        return ended("failed", f"pipeline error: {type(exc).__name__}: {exc}"[:500])
    return JobOutcome(
        "done",
        "",
        outputs=names,
        timings={k: round(v, 3) for k, v in timings.items()},
        summary={**summarize(result.prediction), **{k: round(v) for k, v in memory.items()}},
        worker=_worker_name(),
        finished_at=time.time(),
    )


def _write_outputs(folder: Path, datasets: list[Dataset]) -> list[str]:
    """Write each result as <modality>-<n>.dcm, fsync'ed; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n, ds in enumerate(datasets, start=1):
        name = f"{str(ds.Modality).lower()}-{n}.dcm"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_atomic(folder / name, buffer.getvalue())
        names.append(name)
    return names
