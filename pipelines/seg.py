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
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from pipelines.base import ResultUids, Volume
from pipelines.references import add_frame_references, seg_sources

# Lossy compression methods (0028,2114) of the transfer syntaxes that are lossy.
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K
}

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
    _complete_lossy_compression(seg, volume.sources)
    return seg


def _complete_lossy_compression(seg: Dataset, sources: Sequence[Dataset]) -> None:
    """A SEG made from lossy sources says so (LossyImageCompression 01, copied by
    highdicom with the sources' ratio), and then needs the method too (Type 1C).
    Some writers leave the method out of the source (GDCM's ``gdcmconv --lossy``):
    take it from the source's own attribute, else from the transfer syntax it was
    stored in. When no source tells, nothing is made up."""
    if seg.get("LossyImageCompression") != "01" or "LossyImageCompressionMethod" in seg:
        return
    methods: list[str] = []
    for source in sources:
        named = source.get("LossyImageCompressionMethod")
        syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", ""))
        found = (
            [str(m) for m in named]
            if isinstance(named, MultiValue)
            else [str(named)]
            if named
            else []
        )
        if not found and syntax in LOSSY_METHODS:
            found = [LOSSY_METHODS[syntax]]
        methods += [m for m in found if m not in methods]
    ratios = seg.get("LossyImageCompressionRatio")
    count = len(ratios) if isinstance(ratios, MultiValue) else 1  # methods pair with ratios
    if methods:
        seg.LossyImageCompressionMethod = methods[0] if count == 1 else methods[:count]


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
