"""The one SEG writer: a label map -> a BINARY DICOM Segmentation (highdicom).

The manifest pipelines (``pipelines.results``) and the lung pipeline's encode
hook (``pipelines.lung.encode``) both build their SEG here. They differ only in
their segment descriptions (codes, colours, anatomic regions) and in what they
say about the series (``SegSeries``); frames, references, empty-frame omission
and the shared Frame Anatomy are the same.

Frames follow the stored pixel order of ``volume.sources`` (single- or
multi-frame, see ``pipelines.references``); frames where a segment is empty are
omitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from pipelines.base import ResultUids, Volume
from pipelines.references import add_frame_references, seg_sources

# Slices handled at a time when mapping labels to segment numbers: a few MB, so
# each pass over them stays in the CPU cache instead of streaming the whole volume.
CHUNK_VOXELS = 1 << 21


@dataclass(frozen=True)
class SegSeries:
    """What a SEG says about itself: series number and description, content label
    and description, General Equipment (highdicom constructor arguments), and the
    shared Frame Anatomy: the region and FrameLaterality (R, L, B, or U for an
    unpaired structure), which PixelMed requires when the series has no Laterality."""

    number: int
    description: str
    content_label: str
    content_description: str
    equipment: Mapping[str, Any]
    anatomy: Code
    laterality: str


def seg_from_labels(
    volume: Volume,
    labels: np.ndarray,
    segments: Sequence[tuple[int, hd.seg.SegmentDescription]],
    series: SegSeries,
    uids: ResultUids,
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per (label value, description) of ``segments``,
    the descriptions numbered 1.. in that order. ``labels``: (slices, rows, columns)
    integer label map in ``volume``'s grid (canonical order)."""
    segment_map = segment_numbers(labels, [label for label, _ in segments])
    seg = hd.seg.Segmentation(
        **seg_sources(volume, segment_map),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description for _, description in segments],
        series_instance_uid=uids.uid("seg", "series"),
        series_number=series.number,
        sop_instance_uid=uids.uid("seg", "instance"),
        **series.equipment,
        series_description=series.description[:64],
        content_label=series.content_label[:16],
        content_description=series.content_description[:64],
        omit_empty_frames=True,
    )
    item = Dataset()
    item.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(series.anatomy)]
    item.FrameLaterality = series.laterality
    seg.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [item]
    add_frame_references(seg, volume)
    return seg


def segment_numbers(labels: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """uint8, the shape of ``labels``: segment number k (1..) where ``labels`` holds
    ``wanted[k - 1]``, 0 elsewhere. Works through a few slices at a time."""
    if len(wanted) > 255:
        raise ValueError(f"a SEG of {len(wanted)} segments needs more than 8 bits per number")
    out = np.zeros(labels.shape, dtype=np.uint8)
    step = max(1, CHUNK_VOXELS // max(1, labels[0].size))
    for z in range(0, len(labels), step):
        chunk, target = labels[z : z + step], out[z : z + step]
        for number, label in enumerate(wanted, start=1):
            target[chunk == label] = number
    return out
