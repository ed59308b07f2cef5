"""Run one pipeline on one series of files: read, prepare, infer, encode.

Pure apart from reading the given files: no network, no job state. Errors:
``SeriesNotUsable`` and ``PipelineFailed`` (see ``pipelines.base``) propagate
unchanged; a file that is not readable DICOM becomes ``SeriesNotUsable`` naming
only the file's basename; other errors (``OSError``, ``MemoryError``) propagate
for the worker to treat as transient.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipelines.base import Pipeline, ResultUids, SeriesNotUsable

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
    volume = pipeline.prepare(read_series(paths))
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    prediction = pipeline.infer(model, volume)
    timings["infer"] = time.perf_counter() - start

    start = time.perf_counter()
    datasets = pipeline.encode(volume, prediction, uids)
    timings["encode"] = time.perf_counter() - start
    return RunResult(datasets=datasets, prediction=prediction, timings=timings)


def summarize(prediction: Any) -> dict[str, Any]:
    """A short, PHI-free summary of a prediction for logs and job status, e.g.
    ``{"right": {"volume_ml": 2890.4, "emphysema_percent": 3.12}, ...}``."""
    summary = getattr(prediction, "summary", None)
    return dict(summary()) if callable(summary) else {}
