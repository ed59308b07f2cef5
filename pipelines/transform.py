"""Array steps between a series' voxels and a model's input and output grids.

All arrays are 3-D (axis 0, 1, 2) unless a channel axis is named; spacings are
in mm per axis. Orientation is a three-letter code giving the patient
direction each array axis points to ("SPL": z toward the head, y toward
posterior, x toward the patient's left; "RAS": nibabel's order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.manifest import Intensity

_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
_POSITIVE = "LPS"


@dataclass(frozen=True)
class Reorientation:
    """How to go from an array with orientation ``source`` to ``target``:
    ``perm`` (target axis k takes source axis perm[k]), then ``flips`` (target
    axes to reverse)."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def between(cls, source: str, target: str) -> Reorientation:
        where = {_AXIS[c]: (i, c in _POSITIVE) for i, c in enumerate(source)}
        perm, flips = [], []
        for letter in target:
            index, positive = where[_AXIS[letter]]
            perm.append(index)
            flips.append(positive != (letter in _POSITIVE))
        return cls((perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient the first three axes of ``array`` (a channel axis may follow)."""
        out = np.transpose(array, (*self.perm, *range(3, array.ndim)))
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """The inverse of ``apply``."""
        for axis, flip in enumerate(self.flips):
            if flip:
                array = np.flip(array, axis)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return np.transpose(array, (*inverse, *range(3, array.ndim)))

    def spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        return (spacing[self.perm[0]], spacing[self.perm[1]], spacing[self.perm[2]])


def resize(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``array`` (3-D, or 3-D plus a trailing channel axis) resampled to ``shape``
    on its first three axes; ``order`` 0 nearest, 1 linear. Corners align (the
    first and last voxel centres of each axis stay where they are).

    Separable: one pass per axis, each a gather and a weighted sum (several times
    faster than ``scipy.ndimage.zoom`` on a 128-cube)."""
    out = array
    for axis, size in enumerate(shape):
        out = _resize_axis(out, axis, int(size), order)
    return out


def _resize_axis(array: np.ndarray, axis: int, size: int, order: int) -> np.ndarray:
    length = array.shape[axis]
    if length == size:
        return array
    scale = (length - 1) / (size - 1) if size > 1 else 0.0
    position = np.arange(size, dtype=np.float64) * scale
    if order == 0:
        return np.take(array, np.rint(position).astype(np.intp), axis=axis)
    low = np.minimum(np.floor(position).astype(np.intp), max(length - 2, 0))
    high = np.minimum(low + 1, length - 1)
    weight = (position - low).astype(np.float32)
    weight = weight.reshape([-1 if k == axis else 1 for k in range(array.ndim)])
    below = np.take(array, low, axis=axis).astype(np.float32, copy=False)
    above = np.take(array, high, axis=axis).astype(np.float32, copy=False)
    return below + (above - below) * weight


def shape_for_spacing(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, int, int]:
    out = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True)]
    return (out[0], out[1], out[2])


def normalise(array: np.ndarray, intensity: Intensity) -> np.ndarray:
    """Intensity step of the manifest on a float32 array (a new array)."""
    values = np.asarray(array, dtype=np.float32)
    method = intensity.method
    if method == "none":
        return values.copy()
    if method == "window":
        assert intensity.center is not None and intensity.width is not None
        low = intensity.center - intensity.width / 2
        return _scaled(np.clip(values, low, low + intensity.width), low, intensity.width)
    if method == "zscore":
        std = float(values.std())
        return (values - float(values.mean())) / (std if std > 0 else 1.0)
    if method == "max":
        top = float(values.max())
        return values / (top if top > 0 else 1.0)
    if method == "percentile":
        low, high = (float(v) for v in np.percentile(values, intensity.percentiles))
        return _scaled(np.clip(values, low, high), low, high - low)
    low = float(values.min())
    return _scaled(values, low, float(values.max()) - low)


def _scaled(values: np.ndarray, low: float, width: float) -> np.ndarray:
    return (values - np.float32(low)) / np.float32(width if width > 0 else 1.0)


def tiles(shape: tuple[int, ...], patch: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Non-overlapping 3-D tiles covering ``shape`` (padded up to whole patches)."""
    ranges = [range(0, max(n, 1), p) for n, p in zip(shape, patch, strict=True)]
    return [
        (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        for z in ranges[0]
        for y in ranges[1]
        for x in ranges[2]
    ]


def padded_to(array: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """``array`` padded at the end of each of its first three axes to whole patches."""
    pad = [(0, -n % p) for n, p in zip(array.shape[:3], patch, strict=True)]
    pad += [(0, 0)] * (array.ndim - 3)
    return np.pad(array, pad, mode="constant")
