"""Run one ticket of a job in a worker process and report through its work folder.

What a worker concludes (``JobOutcome.status``):

    done       results written to the ticket's ``out`` folder
    skipped    ``SeriesNotUsable``: the series does not suit the pipeline
    failed     ``PipelineFailed``, an unknown pipeline, or an unexpected error in
               the pipeline (reason names the stage and the error class only)
    retry      something that may pass (I/O error, out of memory, time limit):
               the node decides whether to issue another ticket

The worker counts nothing and decides nothing about the job's life: it claims
each delivery it starts (the node counts claims as attempts), refuses to start
once the node's ``max_attempts`` claims exist, and does nothing for a ticket
whose folder is gone (the job ended, or the node issued a newer ticket). It
never creates the job's folders, so such a message leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydicom.dataset import Dataset

from dicom_node.jobspec import JobOutcome, JobRequest
from dicom_node.settings import Settings
from dicom_node.spool import Spool, TicketFolder, UnsafeUid
from pipelines.base import Pipeline, PipelineFailed, SeriesNotUsable
from pipelines.manifest import ManifestError
from pipelines.runner import StageError, encoded, run_series, summarize
from pipelines.sources import describe
from pipelines.uids import DerivedUids
from workers.models import ModelCache, ModelLoadFailed

logger = logging.getLogger(__name__)

PipelineFactories = Mapping[str, Callable[[], Pipeline]]


class JobGone(Exception):
    """The ticket's folder disappeared while running: the job ended or was re-issued."""


@contextmanager
def _exclusive(ticket: TicketFolder) -> Iterator[bool]:
    """Hold the ticket's lock, or yield False if another delivery holds it.
    ``FileNotFoundError`` when the ticket folder is gone."""
    fd = os.open(ticket.path / "lock", os.O_CREAT | os.O_RDWR, 0o600)
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
def _heartbeat(ticket: TicketFolder, claim: str, every: float) -> Iterator[threading.Event]:
    """Rewrite the ticket's beat token every ``every`` seconds. The yielded event is
    set when the ticket folder has gone (the run's results would be discarded)."""
    stop, gone = threading.Event(), threading.Event()

    def beat(n: int) -> None:
        try:
            ticket.beat(f"{claim}:{n}")
        except FileNotFoundError:
            gone.set()

    def loop() -> None:
        n = 1
        while not stop.wait(every) and not gone.is_set():
            try:
                beat(n)
            except OSError as exc:  # a hiccup of shared storage: keep beating
                logger.warning("heartbeat not written (%s)", type(exc).__name__)
            n += 1
        if gone.is_set():
            logger.warning("ticket %s of job %d was withdrawn while running", ticket.number,
                           ticket.job.job_id)  # fmt: skip

    beat(0)
    thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield gone
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


@contextmanager
def collection_deferred() -> Iterator[None]:
    """Automatic garbage collection paused for a job, then one young collection.

    A lung job (300 slices) frees almost everything it makes by reference counting,
    yet its allocations start ~140 automatic collections (~0.1 s CPU), among them a
    full one that walks all its objects. Paused, the job's objects stay in the
    youngest generation, and the collection after it walks only what outlived the
    job: a few thousand objects of pydicom's small reference cycles (2-3 ms). The
    garbage held until then is these cycles, not arrays. Process-wide: a worker
    process runs one job at a time. Leaves collection as it found it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(0)


def _worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def execute(
    request: JobRequest,
    settings: Settings,
    models: ModelCache,
    pipelines: PipelineFactories | None = None,
) -> JobOutcome | None:
    """Run ``request``'s ticket unless it is gone, concluded, held or out of attempts.
    Returns the outcome written, or None when there was nothing to do."""
    spool = Spool(settings.storage.dir)
    ticket = spool.job_folder(request.job_id).ticket(request.ticket)
    if not ticket.exists() or ticket.has_outcome():
        logger.info("job %d ticket %d: ended or superseded; nothing to do", request.job_id,
                    request.ticket)  # fmt: skip
        return None
    try:
        with collection_deferred(), _exclusive(ticket) as mine:
            if not mine:
                logger.info("job %d ticket %d is being run by another delivery", request.job_id,
                            request.ticket)  # fmt: skip
                return None
            if ticket.job.claims() >= request.max_attempts:
                logger.warning("job %d: %d attempts made; leaving it to the node to end",
                               request.job_id, request.max_attempts)  # fmt: skip
                return None
            claim = ticket.claim(_worker_name())
            with _heartbeat(ticket, claim, settings.workers.heartbeat_seconds) as gone:
                outcome = _run(request, spool, ticket, models, pipelines or {})
                if gone.is_set():
                    raise JobGone
            ticket.write_outcome(outcome)
    except (FileNotFoundError, JobGone):
        logger.warning("job %d ticket %d was withdrawn while running; result discarded",
                       request.job_id, request.ticket)  # fmt: skip
        return None
    finally:
        _release_free_memory()
    logger.info("job %d %s %s", request.job_id, outcome.status, outcome.reason)
    return outcome


def _lookup(name: str, extra: PipelineFactories, models: ModelCache) -> Pipeline:
    if name in extra:
        return extra[name]()
    return models.catalog.get(name)


def _configure(pipeline: Pipeline, parameters: dict[str, Any]) -> Pipeline:
    """The pipeline with a rule's run parameters applied (``PipelineFailed`` if it
    takes none, or not these)."""
    if not parameters:
        return pipeline
    configure = getattr(pipeline, "with_parameters", None)
    if configure is None:
        raise PipelineFailed(f"pipeline {pipeline.spec.name} takes no run parameters")
    return configure(parameters)  # type: ignore[no-any-return]


def _run(
    request: JobRequest,
    spool: Spool,
    ticket: TicketFolder,
    models: ModelCache,
    extra: PipelineFactories,
) -> JobOutcome:
    def ended(status: str, reason: str) -> JobOutcome:
        return JobOutcome(status, reason, worker=_worker_name(), finished_at=time.time())  # type: ignore[arg-type]

    try:
        pipeline = _lookup(request.pipeline, extra, models)
        paths = [spool.input_path(p) for p in request.inputs]
    except KeyError:
        return ended("failed", f"unknown pipeline {request.pipeline!r}")
    except ManifestError as exc:
        return ended("failed", f"the manifest of pipeline {request.pipeline!r} was refused: {exc}")
    except UnsafeUid as exc:
        return ended("failed", str(exc))
    try:
        pipeline = _configure(pipeline, request.parameters)
    except PipelineFailed as exc:
        return ended("failed", str(exc))
    # Other parameters, other results: they get UIDs of their own.
    version = pipeline.spec.version
    if request.parameters:
        version += " " + json.dumps(request.parameters, sort_keys=True)
    uids = DerivedUids(
        [Path(p).stem for p in request.inputs],
        pipeline.spec.name,
        version,
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
        if result.emptied:
            logger.warning("job %d: %s", request.job_id, describe(result.emptied))
        names = _write_outputs(ticket, result.datasets)
        timings = {"model": loaded, **result.timings, "write": time.perf_counter() - written}
        memory = {"rss_before_mb": rss_before, "peak_rss_mb": _memory_mb("VmHWM")}
    except SeriesNotUsable as exc:
        return ended("skipped", str(exc))
    except PipelineFailed as exc:
        return ended("failed", str(exc))
    except SoftTimeLimitExceeded:
        return ended("retry", "the job took longer than workers.task_time_limit_seconds")
    except ModelLoadFailed as exc:
        return ended("retry", f"the model could not be loaded ({exc}); a fresh process will try")
    except FileNotFoundError:
        if not ticket.exists():
            raise
        return ended("retry", "a file could not be read or written (FileNotFoundError)")
    except (OSError, MemoryError) as exc:
        return ended("retry", f"a transient error ({type(exc).__name__})")
    except StageError as exc:  # a defect, or data the pipeline did not foresee
        if isinstance(exc.__cause__, SoftTimeLimitExceeded):
            return ended("retry", "the job took longer than workers.task_time_limit_seconds")
        _log_defect(request.job_id, exc.stage, exc.__cause__ or exc)
        return ended("failed", f"pipeline error while {exc.stage} ({exc.error_class})")
    except Exception as exc:  # noqa: BLE001 - boundary: the outcome must be written
        _log_defect(request.job_id, "running", exc)
        return ended("failed", f"pipeline error ({type(exc).__name__})")
    return JobOutcome(
        "done",
        "",
        outputs=names,
        timings={k: round(v, 3) for k, v in timings.items()},
        summary={**summarize(result.prediction), **{k: round(v) for k, v in memory.items()}},
        worker=_worker_name(),
        finished_at=time.time(),
    )


def _log_defect(job_id: int, stage: str, exc: BaseException) -> None:
    """The error's class and where it happened; never its message, which may quote
    a patient value (e.g. a date pydicom could not parse)."""
    where = "".join(traceback.format_tb(exc.__traceback__)[-4:])
    logger.error("job %d: %s while %s, at\n%s", job_id, type(exc).__name__, stage, where)


def _write_outputs(ticket: TicketFolder, datasets: list[Dataset]) -> list[str]:
    """Write each result as <modality>-<n>.dcm, fsync'ed, with one fsync of their
    folder; returns the file names."""
    files = [
        (f"{str(ds.Modality).lower()}-{n}.dcm", encoded(ds)) for n, ds in enumerate(datasets, 1)
    ]
    ticket.write_outputs(files)
    return [name for name, _ in files]
