"""Run one pipeline on one series of files: read, prepare, infer, encode.

Pure apart from reading the given files: no network, no job state. Errors:
``SeriesNotUsable`` and ``PipelineFailed`` (see ``pipelines.base``) propagate
unchanged; a file that is not readable DICOM becomes ``SeriesNotUsable`` naming
only the file's basename; ``OSError`` and ``MemoryError`` propagate for the
worker to treat as transient; anything else (a defect, or data a pipeline did
not foresee) becomes ``StageError`` naming the stage and the error's class, with
the original as its cause (its message may quote a patient value: never show it).

Malformed demographics in the source headers are emptied before the pipeline
sees them (``pipelines.sources``), so they never fail a job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.base import Pipeline, PipelineError, ResultUids, SeriesNotUsable
from pipelines.dicomfile import file_bytes
from pipelines.sources import clean_headers

# Pixel Data larger than this is read from the file only when the volume is built,
# so a 300-slice series is not held twice in memory.
DEFER_SIZE = "64 KB"


@dataclass
class RunResult:
    """The result datasets in the pipeline's output order, the prediction, and
    the seconds spent per stage ("load", "infer", "encode")."""

    datasets: list[Dataset]
    prediction: Any
    timings: dict[str, float] = field(default_factory=dict)
    emptied: list[str] = field(default_factory=list)  # "(0010,0030) PatientBirthDate", ...


class StageError(Exception):
    """An unexpected error in one stage; ``__cause__`` is the original error."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__} while {stage}")
        self.stage = stage
        self.error_class = type(error).__name__


@contextmanager
def _stage(name: str) -> Iterator[None]:
    try:
        yield
    except (PipelineError, OSError, MemoryError):
        raise
    except Exception as exc:
        raise StageError(name, exc) from exc


def read_series(paths: Sequence[Path]) -> list[Dataset]:
    """Read each file as DICOM (Pixel Data deferred)."""
    datasets: list[Dataset] = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path, defer_size=DEFER_SIZE))
        except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
            raise SeriesNotUsable(
                f"file {Path(path).name} is not readable as DICOM ({type(exc).__name__})"
            ) from exc
    return datasets


def run_series(
    pipeline: Pipeline, model: Any, paths: Sequence[Path], uids: ResultUids
) -> RunResult:
    """Run ``pipeline`` with a loaded ``model`` on the series stored in ``paths``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with _stage("reading the series"):
        datasets = read_series(paths)
        emptied = clean_headers(datasets)
    with _stage("preparing the volume"):
        volume = pipeline.prepare(datasets)
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    with _stage("running the model"):
        prediction = pipeline.infer(model, volume)
    timings["infer"] = time.perf_counter() - start

    start = time.perf_counter()
    with _stage("encoding the results"):
        results = pipeline.encode(volume, prediction, uids)
    timings["encode"] = time.perf_counter() - start
    return RunResult(results, prediction, timings, emptied)


def encoded(ds: Dataset) -> memoryview:
    """``ds`` as the bytes of a DICOM file (preamble, file meta, data set), a view of
    the encoder's buffer: written to disk as it is, without another copy. The same
    bytes as pydicom's ``save_as``, sequences encoded faster (``pipelines.dicomfile``)."""
    return file_bytes(ds)


def summarize(prediction: Any) -> dict[str, Any]:
    """A short, PHI-free summary of a prediction for logs and job status, e.g.
    ``{"right": {"volume_ml": 2890.4, "emphysema_percent": 3.12}, ...}``."""
    summary = getattr(prediction, "summary", None)
    return dict(summary()) if callable(summary) else {}
