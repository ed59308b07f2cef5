"""The contract every pipeline follows, and the pipeline error tree.

A pipeline turns one series (files on disk, already received) into result
datasets. It never touches the network, Celery or the node's state.

    PipelineError                 base; never raised itself
    ├── SeriesNotUsable           permanent: the series does not suit the pipeline
    │                             (wrong modality, one slice, gantry tilt, ...);
    │                             the job ends "skipped" with the message as reason
    └── PipelineFailed            permanent: the pipeline could not produce a result
                                  from a series it accepted; the job ends "failed"

Anything else (OSError, MemoryError, ...) is treated as transient by the worker
and retried a bounded number of times.

Every pipeline exposes the same small surface (see ``Pipeline``):

- ``spec``: name, version and what series it accepts;
- ``load_model()``: load the model once per process (cached by the worker);
- ``prepare(datasets) -> Volume``: series -> 3-D volume in canonical orientation;
- ``infer(model, volume) -> prediction``;
- ``encode(volume, prediction, uids) -> [Dataset]``: highdicom result objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset


class PipelineError(Exception):
    """Base of the errors a pipeline raises on purpose."""


class SeriesNotUsable(PipelineError):
    """The series does not suit this pipeline; the message says why, without PHI."""


class PipelineFailed(PipelineError):
    """The pipeline accepted the series but could not produce a result."""


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline is and which series it accepts."""

    name: str
    version: str
    modalities: frozenset[str]
    min_instances: int = 1
    outputs: tuple[str, ...] = ()
    description: str = ""


@dataclass
class Volume:
    """A series as a 3-D image in canonical patient orientation.

    ``voxels``: shape (z, y, x), dtype int16 for CT (Hounsfield units after the
    modality rescale). Axis order and direction are canonical LPS:
    x (axis 2) increases toward the patient's left, y (axis 1) toward posterior,
    z (axis 0) toward the head (superior).

    ``spacing``: (z, y, x) voxel spacing in millimetres; z is the distance between
    slice centres, not SliceThickness.

    ``sources``: the source datasets, one per z index, in the same order as
    ``voxels`` (pixel data may have been dropped to save memory; geometry and
    identifying UIDs remain).

    ``axes``: the patient direction each array axis points to ("SPL": canonical).

    ``flip_y`` / ``flip_x``: whether rows / columns of the stored frames were
    reversed to reach canonical orientation. ``to_source_frames`` undoes them.

    ``frames``: for a series of multi-frame images, where each z index came from:
    (index into ``sources``, frame number from 1), and ``sources`` holds each
    instance once; empty for single-frame images (one source per z index).
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    sources: list[Dataset]
    flip_y: bool = False
    flip_x: bool = False
    axes: str = "SPL"
    meta: dict[str, Any] = field(default_factory=dict)
    frames: list[tuple[int, int]] = field(default_factory=list)

    def to_source_frames(self, array: np.ndarray) -> np.ndarray:
        """Map a (z, y, x[, ...]) array in canonical orientation back to the
        stored pixel order of ``sources``: frame k belongs to ``sources[k]``, or,
        for one multi-frame source, to its frame k + 1. For several multi-frame
        sources the z order is kept (``frames`` tells where each came from)."""
        out = array
        if self.frames and len(self.sources) == 1:
            out = out[np.argsort([number for _, number in self.frames])]
        if self.flip_y:
            out = out[:, ::-1]
        if self.flip_x:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


class ResultUids(Protocol):
    """Deterministic UIDs for a job's outputs (see ``pipelines.uids``)."""

    def uid(self, output: str, kind: str) -> str: ...


class Pipeline(Protocol):
    spec: PipelineSpec

    def load_model(self) -> Any: ...

    def prepare(self, datasets: Sequence[Dataset]) -> Volume: ...

    def infer(self, model: Any, volume: Volume) -> Any: ...

    def encode(self, volume: Volume, prediction: Any, uids: ResultUids) -> list[Dataset]: ...
