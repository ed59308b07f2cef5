"""How results point back to the images they came from.

Single-frame series: the SEG has a frame per source instance (highdicom pairs
them by index) and the SR names the source series of each segment.

Multi-frame series (``Volume.frames`` set, see ``pipelines.multiframe``):

- one instance: the SEG's frames are given in that instance's frame order, so
  highdicom writes, per SEG frame, a Derivation Image Sequence naming the
  instance and its ReferencedFrameNumber;
- several instances: highdicom pairs frames with one multi-frame source only,
  so the SEG is given its plane positions and every instance as a source, and
  the per-frame Derivation Image Sequence is added here, found by the frame's
  position (the items highdicom writes for one instance, same codes);
- the SR's segment groups (TID 1411) name each source instance with the frame
  numbers the segment lies on, instead of the series.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from pipelines.base import Volume

SEGMENTATION = Code("113076", "DCM", "Segmentation")
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
POSITION_TOLERANCE_MM = 0.01


def seg_sources(volume: Volume, segment_map: np.ndarray) -> dict[str, Any]:
    """``source_images`` and ``pixel_array`` (and, for several multi-frame sources,
    ``further_source_images`` and ``plane_positions``) for ``hd.seg.Segmentation``.
    ``segment_map``: (z, y, x) in ``volume``'s canonical grid."""
    frames = volume.to_source_frames(segment_map)
    if not volume.frames or len(volume.sources) == 1:
        return {"source_images": volume.sources, "pixel_array": frames}
    return {
        "source_images": volume.sources[:1],
        "further_source_images": volume.sources[1:],
        "pixel_array": frames,
        "plane_positions": [
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, _position(volume, z))
            for z in range(len(volume.frames))
        ],
    }


def add_frame_references(seg: Dataset, volume: Volume) -> None:
    """For several multi-frame sources: each SEG frame's Derivation Image Sequence
    names the source instance and frame at its position."""
    if not volume.frames or len(volume.sources) == 1:
        return
    positions = np.asarray([_position(volume, z) for z in range(len(volume.frames))])
    for item in seg.PerFrameFunctionalGroupsSequence:
        where = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        distance = np.linalg.norm(positions - where, axis=1)
        z = int(np.argmin(distance))
        if distance[z] > POSITION_TOLERANCE_MM:
            continue  # not a source position: no reference rather than a wrong one
        index, number = volume.frames[z]
        item.DerivationImageSequence = [_derivation(volume.sources[index], number)]


def segment_sources(volume: Volume, labels: np.ndarray | None, label: int) -> dict[str, Any]:
    """``source_series`` or ``source_images`` for ``hd.sr.ReferencedSegment``;
    the segment is where ``labels`` ((z, y, x) in the volume's grid) holds ``label``
    (``labels`` None: on every slice). Only multi-frame sources look at it."""
    if not volume.frames:
        return {"source_series": hd.sr.SourceSeriesForSegmentation(
            str(volume.sources[0].SeriesInstanceUID))}  # fmt: skip
    if labels is None:
        on = np.arange(len(volume.frames))
    else:
        on = np.flatnonzero((labels == label).reshape(len(labels), -1).any(axis=1))
    numbers: dict[int, list[int]] = {}
    for z in on:
        index, number = volume.frames[int(z)]
        numbers.setdefault(index, []).append(number)
    images = [
        hd.sr.SourceImageForSegmentation(
            str(volume.sources[index].SOPClassUID),
            str(volume.sources[index].SOPInstanceUID),
            referenced_frame_numbers=sorted(found),
        )
        for index, found in sorted(numbers.items())
    ]
    return {"source_images": images}


def _position(volume: Volume, z: int) -> list[float]:
    index, number = volume.frames[z]
    source = volume.sources[index]
    item = source.PerFrameFunctionalGroupsSequence[number - 1]
    plane = item.get("PlanePositionSequence") or (
        source.SharedFunctionalGroupsSequence[0].PlanePositionSequence
    )
    return [float(v) for v in plane[0].ImagePositionPatient]


def _derivation(source: Dataset, number: int) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID = source.SOPClassUID
    image.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.ReferencedFrameNumber = number
    image.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_FOR_PROCESSING)]
    image.SpatialLocationsPreserved = "YES"
    item = Dataset()
    item.SourceImageSequence = [image]
    item.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(SEGMENTATION)]
    return item
