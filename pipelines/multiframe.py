"""Enhanced multi-frame images -> the same ``Volume`` as a series of slices.

Enhanced CT and Enhanced MR Image Storage, and their Legacy Converted forms,
hold a stack of frames in one instance. Where each frame lies is in the
functional groups, per frame ((5200,9230) PerFrameFunctionalGroupsSequence) or
for every frame ((5200,9229) SharedFunctionalGroupsSequence); a per-frame item
wins over a shared one:

    (0020,9113) PlanePositionSequence             ImagePositionPatient
    (0020,9116) PlaneOrientationSequence          ImageOrientationPatient
    (0028,9110) PixelMeasuresSequence             PixelSpacing
    (0028,9145) PixelValueTransformationSequence  RescaleSlope, RescaleIntercept
    (0020,9111) FrameContentSequence              TemporalPositionIndex

A series of one or several such instances becomes one volume, checked as
``pipelines.volume`` checks single-frame slices: one orientation and one pixel
spacing for every frame, frames stacked along the normal, evenly spaced, no two
at one position, no tilt. Every frame of every instance goes into the volume: a
second time point, echo or stack is refused, never dropped in silence. Frames
are decoded one at a time straight into the volume, each with its own rescale.
Messages name the attribute by tag and keyword, the frame by its number and the
instance by its InstanceNumber; never a value from the patient.

``Volume.sources`` holds each instance once, in the order its first frame
appears along z, without Pixel Data; ``Volume.frames`` says for each z index
which instance and frame it came from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from pipelines.base import SeriesNotUsable, Volume
from pipelines.model import aligned_empty
from pipelines.volume import (
    ORIENTATION_TOLERANCE,
    attr,
    axial_cosines,
    check_unit_normal,
    deferred_path,
    direction,
    hounsfield,
    order_along_normal,
    refuse_unreliable_decoding,
    undecodable,
    without_pixels,
)

ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}


def _in(sequence: str, keyword: str) -> str:
    return f"{attr(sequence)} > {attr(keyword)}"


POSITION = _in("PlanePositionSequence", "ImagePositionPatient")
ORIENTATION = _in("PlaneOrientationSequence", "ImageOrientationPatient")
SPACING = _in("PixelMeasuresSequence", "PixelSpacing")


@dataclass(frozen=True)
class Frame:
    """One frame's geometry and rescale. ``source``: index of its instance in the
    series as given; ``number``: its frame number, from 1."""

    source: int
    number: int
    name: str
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    slope: float
    intercept: float
    temporal: str


def load_ct_volume(datasets: Sequence[Dataset]) -> Volume:
    """Multi-frame CT -> (z, y, x) int16 HU in canonical LPS order, as
    ``pipelines.volume.load_ct_volume`` builds it from single-frame slices."""
    frames, rows, cols = frames_of(datasets)
    row, col = axial_cosines(frames[0].orientation, ORIENTATION)
    normal = np.cross(row, col)
    order, z_spacing = _order(frames, normal, float(np.sign(normal[2])))
    flip_x, flip_y = bool(row[0] < 0), bool(col[1] < 0)
    voxels = aligned_empty((len(order), rows, cols), np.int16)  # model reads it in place

    def put(z: int, plane: np.ndarray, frame: Frame) -> None:
        if flip_y:
            plane = plane[::-1]
        if flip_x:
            plane = plane[:, ::-1]
        hounsfield(plane, frame.slope, frame.intercept, out=voxels[z])

    return _filled(datasets, frames, order, put, voxels, z_spacing, flip_y=flip_y, flip_x=flip_x)


def load_image_stack(datasets: Sequence[Dataset]) -> Volume:
    """Multi-frame images of any plane -> float32 (slices, Rows, Columns) after the
    rescale, sorted along the normal, frames not flipped, as
    ``pipelines.volume.load_image_stack`` builds it from single-frame slices."""
    frames, rows, cols = frames_of(datasets)
    iop = frames[0].orientation
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    check_unit_normal(normal, iop, ORIENTATION)
    order, z_spacing = _order(frames, normal, 1.0)
    voxels = aligned_empty((len(order), rows, cols), np.float32)

    def put(z: int, plane: np.ndarray, frame: Frame) -> None:
        # as ``rescaled`` computes it, without a float copy of the frame
        np.multiply(plane, np.float32(frame.slope), out=voxels[z], casting="unsafe")
        voxels[z] += np.float32(frame.intercept)

    axes = "".join(direction(v) for v in (normal, col, row))
    return _filled(datasets, frames, order, put, voxels, z_spacing, axes=axes)


def _filled(
    datasets: Sequence[Dataset],
    frames: Sequence[Frame],
    order: Sequence[int],
    put: Callable[[int, np.ndarray, Frame], None],
    voxels: np.ndarray,
    z_spacing: float,
    **geometry: Any,
) -> Volume:
    """Decode every frame into ``voxels`` through ``put`` and wrap it as a Volume with
    the frames' references; ``geometry``: the loader's own Volume fields."""
    _decode_into(datasets, frames, order, put)
    sources, refs = _references(datasets, frames, order)
    dy, dx = (float(v) for v in frames[0].spacing)
    return Volume(
        voxels=voxels,
        spacing=(z_spacing, dy, dx),
        sources=sources,
        meta={"slices": len(order), "instances": len(sources)},
        frames=refs,
        **geometry,
    )


def frames_of(datasets: Sequence[Dataset]) -> tuple[list[Frame], int, int]:
    """Every frame of every instance (instance order, then frame number), and the
    Rows and Columns they share; refuses what cannot form one stack."""
    frames: list[Frame] = []
    size: tuple[int, int] | None = None
    first_name = ""
    for index, ds in enumerate(datasets):
        who = _instance_name(ds, index)
        _check_instance(ds, who)
        this = (int(ds.Rows), int(ds.Columns))
        if size is not None and this != size:
            keyword = "Rows" if this[0] != size[0] else "Columns"
            raise SeriesNotUsable(
                f"{attr(keyword)} differs between instance {first_name} and instance {who}"
            )
        size, first_name = this, first_name or who
        frames.extend(_instance_frames(ds, index, who if len(datasets) > 1 else ""))
    if len(frames) < 2:
        raise SeriesNotUsable(f"needs at least 2 slices to form a volume, found {len(frames)}")
    _check_consistent(frames)
    assert size is not None
    return frames, size[0], size[1]


def _instance_name(ds: Dataset, index: int) -> str:
    number = ds.get("InstanceNumber")
    return str(number) if number is not None and number != "" else f"#{index + 1}"


def _check_instance(ds: Dataset, who: str) -> None:
    where = f"instance {who}"
    if "PerFrameFunctionalGroupsSequence" not in ds:
        count = int(ds.get("NumberOfFrames") or 1)
        if count > 1:
            raise SeriesNotUsable(
                f"{attr('NumberOfFrames')} is {count} in {where} but "
                f"{attr('PerFrameFunctionalGroupsSequence')} is missing; multi-frame images "
                "need per-frame functional groups (Enhanced CT / MR)"
            )
        raise SeriesNotUsable(
            f"{attr('PerFrameFunctionalGroupsSequence')} is missing in {where}; a series "
            "cannot mix single-frame and multi-frame images"
        )
    if "PixelData" not in ds:
        raise SeriesNotUsable(f"{attr('PixelData')} is missing in {where}; images are required")
    for keyword in ("Rows", "Columns"):
        if not ds.get(keyword):
            raise SeriesNotUsable(f"{attr(keyword)} is missing in {where}")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise SeriesNotUsable(f"{attr('SamplesPerPixel')} is {samples} in {where}; expected 1")
    count = int(ds.get("NumberOfFrames") or 1)
    items = len(ds.PerFrameFunctionalGroupsSequence)
    if items != count:
        raise SeriesNotUsable(
            f"{attr('PerFrameFunctionalGroupsSequence')} has {items} items in {where}; "
            f"{attr('NumberOfFrames')} is {count}"
        )


def _instance_frames(ds: Dataset, index: int, who: str) -> Iterator[Frame]:
    shared_sequence = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_sequence[0]
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        name = f"frame {number} of instance {who}" if who else f"frame {number}"
        transform = _item(item, shared, "PixelValueTransformationSequence")
        rescale = transform if transform is not None else ds
        content = _item(item, shared, "FrameContentSequence")
        position = _values(item, shared, "PlanePositionSequence", "ImagePositionPatient", 3, name)
        iop = _values(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient", 6, name)
        spacing = _values(item, shared, "PixelMeasuresSequence", "PixelSpacing", 2, name)
        yield Frame(
            source=index,
            number=number,
            name=name,
            position=position,
            orientation=iop,
            spacing=spacing,
            slope=float(rescale.get("RescaleSlope", 1) or 1),
            intercept=float(rescale.get("RescaleIntercept", 0) or 0),
            temporal=str(content.get("TemporalPositionIndex", "")) if content else "",
        )


def _item(item: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the frame's functional groups, else in the
    shared ones, else None."""
    for groups in (item, shared):
        value = groups.get(sequence)
        if value:
            return value[0]  # type: ignore[no-any-return]
    return None


def _values(
    item: Dataset, shared: Dataset, sequence: str, keyword: str, count: int, name: str
) -> np.ndarray:
    found = _item(item, shared, sequence)
    if found is None or keyword not in found or found[keyword].VM == 0:
        raise SeriesNotUsable(f"{_in(sequence, keyword)} is missing for {name}")
    try:
        values = np.asarray(found[keyword].value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.size != count or not np.isfinite(values).all():
        raise SeriesNotUsable(f"{_in(sequence, keyword)} for {name} does not hold {count} numbers")
    return values


def _check_consistent(frames: Sequence[Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        pair = f"{first.name} and {frame.name}"
        if np.abs(frame.orientation - first.orientation).max() > ORIENTATION_TOLERANCE:
            raise SeriesNotUsable(f"{ORIENTATION} differs between {pair}")
        if not np.allclose(frame.spacing, first.spacing, rtol=1e-4, atol=1e-4):
            raise SeriesNotUsable(f"{SPACING} differs between {pair}")
    times = {frame.temporal for frame in frames}
    if len(times) > 1:
        raise SeriesNotUsable(
            f"{_in('FrameContentSequence', 'TemporalPositionIndex')} takes {len(times)} "
            "values; expected frames of one time point"
        )


def _order(frames: Sequence[Frame], normal: np.ndarray, sign: float) -> tuple[list[int], float]:
    positions = np.asarray([frame.position for frame in frames])
    return order_along_normal(positions, [f.name for f in frames], normal, sign, POSITION)


def _decode_into(
    datasets: Sequence[Dataset],
    frames: Sequence[Frame],
    order: Sequence[int],
    put: Callable[[int, np.ndarray, Frame], None],
) -> None:
    """Decode each instance frame by frame and ``put(z, plane, frame)`` it."""
    z_of = {(frames[i].source, frames[i].number): z for z, i in enumerate(order)}
    by_key = {(frame.source, frame.number): frame for frame in frames}
    for index, ds in enumerate(datasets):
        who = _instance_name(ds, index)
        count = 0
        for count, plane in enumerate(_planes(ds, who), start=1):
            if (index, count) not in z_of:
                break  # more frames than functional groups: refused below
            put(z_of[(index, count)], plane, by_key[(index, count)])
        expected = int(ds.get("NumberOfFrames") or 1)
        if count != expected:
            raise SeriesNotUsable(
                f"{attr('PixelData')} of instance {who} holds {count} frames; "
                f"{attr('NumberOfFrames')} is {expected}"
            )


def _planes(ds: Dataset, who: str) -> Iterator[np.ndarray]:
    """The frames of ``ds`` one at a time, decoded by pydicom's pixel backends."""
    refuse_unreliable_decoding(ds, f"instance {who}")
    source = deferred_path(ds) or ds
    frames = iter_pixels(source)
    number = 0
    while True:
        number += 1
        try:
            plane = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # any decoder failure means: cannot use this series
            raise undecodable(ds, f"frame {number} of instance {who}", exc) from exc
        if plane.ndim != 2:
            raise SeriesNotUsable(
                f"{attr('PixelData')} of frame {number} of instance {who} decodes to "
                f"{plane.ndim} dimensions; expected 2"
            )
        yield plane


def _references(
    datasets: Sequence[Dataset], frames: Sequence[Frame], order: Sequence[int]
) -> tuple[list[Dataset], list[tuple[int, int]]]:
    """The instances in the order their first frame appears along z (without Pixel
    Data, orientation and pixel measures shared, as highdicom reads them), and for
    each z index (index into them, frame number)."""
    position: dict[int, int] = {}
    for i in order:
        position.setdefault(frames[i].source, len(position))
    sources = [_as_source(datasets[s]) for s in sorted(position, key=position.__getitem__)]
    refs = [(position[frames[i].source], frames[i].number) for i in order]
    return sources, refs


def _as_source(ds: Dataset) -> Dataset:
    """``ds`` without Pixel Data; where orientation or pixel measures are given per
    frame (checked equal for all frames), the first frame's item is also put in
    the shared functional groups of the copy."""
    source = without_pixels(ds)
    shared_sequence = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = copy.deepcopy(shared_sequence[0])
    first = ds.PerFrameFunctionalGroupsSequence[0]
    for sequence in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if sequence not in shared and sequence in first:
            setattr(shared, sequence, copy.deepcopy(first[sequence].value))
    source.SharedFunctionalGroupsSequence = [shared]
    return source
