"""Model output -> label map -> per-segment measurements.

Arrays: ``labels`` is (slices, rows, columns) uint16 in the series' stored frame
order (``Volume.voxels``' grid); ``spacing`` is mm per axis of that grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from pipelines.manifest import Postprocessing, Segment


@dataclass(frozen=True)
class SegmentMeasures:
    """What was measured on one segment; ``mean_intensity`` is in the series'
    units after the modality rescale (HU for CT)."""

    label: int
    name: str
    voxel_count: int
    volume_ml: float
    mean_intensity: float
    max_diameter_mm: float


def to_labels(output: np.ndarray, post: Postprocessing, segments: Sequence[Segment]) -> np.ndarray:
    """``output``: (d, h, w, channels) float. ``threshold``: channel 0 at or above
    the threshold is the first segment's label; ``argmax``: the channel index is
    the label (channel 0 background); ``labels``: channel 0 already holds labels."""
    if post.method == "threshold":
        label = segments[0].label if segments else 1
        mask = output[..., 0] >= post.threshold
        return mask.astype(np.uint16) * np.uint16(label)
    if post.method == "argmax":
        return np.argmax(output, axis=-1).astype(np.uint16)
    return np.rint(output[..., 0]).astype(np.uint16)


def clean(labels: np.ndarray, post: Postprocessing, spacing: tuple[float, ...]) -> np.ndarray:
    """Per label: keep the largest connected component, fill holes, drop
    components smaller than ``min_size_ml`` (in place; returns ``labels``)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    min_voxels = int(np.ceil(post.min_size_ml / voxel_ml)) if post.min_size_ml else 0
    for label in (int(v) for v in np.unique(labels) if v):
        mask = labels == label
        if post.largest_component or min_voxels:
            parts, count = ndimage.label(mask)
            sizes = np.bincount(parts.ravel())[1:]
            keep = np.zeros(count + 1, bool)
            if post.largest_component and count:
                keep[1 + int(np.argmax(sizes))] = True
            else:
                keep[1:] = True
            keep[1:] &= sizes >= min_voxels
            mask = keep[parts]
        if post.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        labels[labels == label] = 0
        labels[mask & (labels == 0)] = label
    return labels


def measure(
    labels: np.ndarray,
    values: np.ndarray,
    spacing: tuple[float, float, float],
    segments: Sequence[Segment],
) -> list[SegmentMeasures]:
    """Measures of every manifest segment present in ``labels``, in manifest order."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    found = []
    for segment in segments:
        mask = labels == segment.label
        count = int(np.count_nonzero(mask))
        if count == 0:
            continue
        wanted = set(segment.measurements)
        found.append(
            SegmentMeasures(
                label=segment.label,
                name=segment.name,
                voxel_count=count,
                volume_ml=count * voxel_ml,
                mean_intensity=float(values[mask].mean()) if "mean_intensity" in wanted else 0.0,
                max_diameter_mm=max_diameter(mask, spacing) if "max_diameter" in wanted else 0.0,
            )
        )
    return found


def max_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The largest distance in mm between the centres of two voxels of ``mask``
    (found among the vertices of the convex hull of its surface voxels)."""
    surface = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(surface).astype(np.float64) * np.asarray(spacing)
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or tiny: every point is a candidate
        points = points[:: max(1, len(points) // 2000)]
    return float(pdist(points).max())  # every pair once, without an n x n x 3 array
