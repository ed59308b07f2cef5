"""A series of single-frame CT images -> one ``Volume`` in canonical LPS order.

Checks that the slices form a regular axial grid (same orientation, size and
pixel spacing; positions along the slice normal, evenly spaced, no gantry tilt),
sorts them from feet to head, applies the modality rescale to Hounsfield units
(int16) and reverses in-plane flips so that axis 2 points to the patient's left
and axis 1 to posterior. Every problem raises ``SeriesNotUsable`` naming the
attribute by keyword and tag; no patient value ever appears in a message.

The kept source datasets are shallow copies without Pixel Data (highdicom needs
only their metadata to reference them), so the caller's datasets can be freed.

A series of enhanced multi-frame images (Enhanced CT / MR and their Legacy
Converted forms) is handed to ``pipelines.multiframe``, which builds the same
``Volume`` with the same checks from the functional groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipelines.base import SeriesNotUsable, Volume
from pipelines.model import aligned_empty

ORIENTATION_TOLERANCE = 1e-3  # cosine difference between slices
AXIS_TOLERANCE = 1e-2  # how far a cosine may be from +-1 / 0 and still be "axial"
SPACING_TOLERANCE_MM = 0.05
SPACING_TOLERANCE_FRACTION = 0.01
TILT_TOLERANCE_MM = 0.05
TILT_TOLERANCE_FRACTION = 0.002  # in-plane drift per mm along the normal (~0.1 degree)

_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


def attr(keyword: str) -> str:
    """``"(0020,0037) ImageOrientationPatient"`` for use in messages."""
    value = tag_for_keyword(keyword) or 0
    return f"({value >> 16:04X},{value & 0xFFFF:04X}) {keyword}"


# HTJ2K (lossless, RPCL lossless, lossy). pylibjpeg-openjpeg 2.6 (OpenJPEG 2.5)
# decodes the negative samples of a signed 16-bit HTJ2K image wrongly, and says
# nothing: checked on OpenJPH's codestreams, which OpenJPH's own decoder gives
# back exactly (tests/unit/pipelines/test_transfer_syntaxes.py). Unsigned HTJ2K
# decodes exactly. A signed HTJ2K image is refused rather than segmented on
# wrong values.
HTJ2K = frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


def refuse_unreliable_decoding(ds: Dataset, what: str) -> None:
    """Refuse pixel data that the installed decoders would decode wrongly."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if str(syntax) in HTJ2K and int(ds.get("PixelRepresentation") or 0) == 1:
        raise SeriesNotUsable(
            f"{attr('PixelData')} of {what} is a signed image in {getattr(syntax, 'name', '')},"
            " which the installed decoder (OpenJPEG) does not decode correctly; send the"
            " series in another transfer syntax"
        )


def undecodable(ds: Dataset, what: str, exc: Exception) -> SeriesNotUsable:
    """The reason for pixels no decoder could read: ``what`` names the frame or slice;
    the transfer syntax and the error's class, never a value."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", "unknown transfer syntax")
    return SeriesNotUsable(
        f"{attr('PixelData')} of {what} cannot be decoded ({syntax_name}; {type(exc).__name__})"
    )


def load_ct_volume(datasets: Sequence[Dataset]) -> Volume:
    """Build the canonical (z, y, x) int16 HU volume from single-frame CT datasets.

    Returns a ``Volume`` whose ``voxels`` has shape (slices, Rows, Columns), dtype
    int16, Hounsfield units clipped to the int16 range; ``spacing`` is (z, y, x)
    in mm with z the mean distance between slice centres; ``sources`` is in the
    same z order, without Pixel Data.
    """
    check_one_origin(datasets)
    if any(is_multiframe(ds) for ds in datasets):
        from pipelines import multiframe  # it builds on this module's checks

        return multiframe.load_ct_volume(datasets)
    if len(datasets) < 2:
        raise SeriesNotUsable(f"needs at least 2 slices to form a volume, found {len(datasets)}")
    for index, ds in enumerate(datasets):
        _check_instance(ds, index)
    _check_consistent(datasets)
    row, col = axial_cosines(np.asarray(datasets[0].ImageOrientationPatient, dtype=float))
    normal = np.cross(row, col)
    order, z_spacing = _slice_order(datasets, normal, float(np.sign(normal[2])))
    flip_x, flip_y = bool(row[0] < 0), bool(col[1] < 0)
    voxels = _read_voxels([datasets[i] for i in order], flip_y=flip_y, flip_x=flip_x)
    dy, dx = (float(v) for v in datasets[0].PixelSpacing)
    return Volume(
        voxels=voxels,
        spacing=(z_spacing, dy, dx),
        sources=[without_pixels(datasets[i]) for i in order],
        flip_y=flip_y,
        flip_x=flip_x,
        meta={"slices": len(order)},
    )


def is_multiframe(ds: Dataset) -> bool:
    """Whether ``ds`` holds several frames or per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames") or 1) > 1


def _name(ds: Dataset, index: int) -> str:
    """How messages refer to an instance: its InstanceNumber, else its position."""
    number = ds.get("InstanceNumber")
    return str(number) if number is not None and number != "" else f"#{index + 1}"


def _check_instance(ds: Dataset, index: int) -> None:
    who = f"instance {_name(ds, index)}"
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if keyword not in ds or ds[keyword].VM == 0:
            raise SeriesNotUsable(f"{attr(keyword)} is missing in {who}")
    for keyword in ("Rows", "Columns"):
        if not ds.get(keyword):
            raise SeriesNotUsable(f"{attr(keyword)} is missing in {who}")
    if "PixelData" not in ds:
        raise SeriesNotUsable(f"{attr('PixelData')} is missing in {who}; images are required")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise SeriesNotUsable(
            f"{attr('NumberOfFrames')} is {frames} in {who}; only single-frame images are supported"
        )
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise SeriesNotUsable(f"{attr('SamplesPerPixel')} is {samples} in {who}; expected 1")
    if len(ds.ImageOrientationPatient) != 6 or len(ds.ImagePositionPatient) != 3:
        raise SeriesNotUsable(
            f"{attr('ImageOrientationPatient')} or {attr('ImagePositionPatient')} "
            f"has the wrong number of values in {who}"
        )


# What makes instances one series of one patient. A sender that reuses a Series
# Instance UID under another study, or files two patients' images in one series,
# must not get one volume made of both.
ORIGIN_KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def check_one_origin(datasets: Sequence[Dataset]) -> None:
    """Refuse instances that differ in patient, study, series or frame of reference
    (the reason names the attribute and the instances, never a value)."""
    if not datasets:
        return
    first = datasets[0]
    for index in range(1, len(datasets)):
        ds = datasets[index]
        for keyword in ORIGIN_KEYWORDS:
            if ds.get(keyword) != first.get(keyword):
                raise SeriesNotUsable(
                    f"{attr(keyword)} differs between instances {_name(first, 0)} and "
                    f"{_name(ds, index)}: not one series of one patient"
                )


def _check_consistent(datasets: Sequence[Dataset]) -> None:
    first = datasets[0]
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    ps0 = np.asarray(first.PixelSpacing, dtype=float)
    for index in range(1, len(datasets)):
        ds = datasets[index]
        pair = f"instances {_name(datasets[index - 1], index - 1)} and {_name(ds, index)}"
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if np.abs(iop - iop0).max() > ORIENTATION_TOLERANCE:
            raise SeriesNotUsable(f"{attr('ImageOrientationPatient')} differs between {pair}")
        for keyword in ("Rows", "Columns"):
            if ds[keyword].value != first[keyword].value:
                raise SeriesNotUsable(
                    f"{attr(keyword)} differs between {pair}: "
                    f"{first[keyword].value} then {ds[keyword].value}"
                )
        ps = np.asarray(ds.PixelSpacing, dtype=float)
        if ps.shape != ps0.shape or not np.allclose(ps, ps0, rtol=1e-4, atol=1e-4):
            raise SeriesNotUsable(
                f"{attr('PixelSpacing')} differs between {pair}: {_mm(ps0)} mm then {_mm(ps)} mm"
            )


def axial_cosines(
    iop: np.ndarray, attribute: str = attr("ImageOrientationPatient")
) -> tuple[np.ndarray, np.ndarray]:
    """The row and column cosines of ``iop`` (6 values), refused unless axial."""
    row, col = iop[:3], iop[3:]
    row_ok = np.allclose(np.abs(row), [1, 0, 0], atol=AXIS_TOLERANCE)
    col_ok = np.allclose(np.abs(col), [0, 1, 0], atol=AXIS_TOLERANCE)
    if not (row_ok and col_ok):
        raise SeriesNotUsable(
            f"{attribute} is {_mm(iop)}; expected an axial "
            "acquisition (rows along +-x, columns along +-y)"
        )
    return row, col


def _slice_order(
    datasets: Sequence[Dataset], normal: np.ndarray, sign: float
) -> tuple[list[int], float]:
    """Indices of ``datasets`` in increasing order along ``sign * normal`` (feet to
    head for axial CT), and the mean slice spacing in mm."""
    positions = np.asarray([ds.ImagePositionPatient for ds in datasets], dtype=float)
    names = [f"instance {_name(ds, i)}" for i, ds in enumerate(datasets)]
    return order_along_normal(positions, names, normal, sign)


def order_along_normal(
    positions: np.ndarray,
    names: Sequence[str],
    normal: np.ndarray,
    sign: float,
    attribute: str = attr("ImagePositionPatient"),
) -> tuple[list[int], float]:
    """Indices of ``positions`` ((n, 3) mm) in increasing order along ``sign *
    normal``, and the mean slice spacing in mm. Refuses duplicate positions,
    uneven spacing and tilt; messages name ``attribute`` and the slices by
    ``names`` ("instance 3", "frame 7")."""
    along = positions @ normal * sign
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along = along[order]
    gaps = np.diff(along)
    ordered = [names[i] for i in order]
    for k, gap in enumerate(gaps):
        if gap < SPACING_TOLERANCE_MM:
            raise SeriesNotUsable(
                f"{attribute} is the same for {ordered[k]} and {ordered[k + 1]}; duplicate slices"
            )
    _check_tilt(positions[order], along, normal, ordered, attribute)
    spacing = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * spacing)
    for k, gap in enumerate(gaps):
        if abs(gap - spacing) > tolerance:
            raise SeriesNotUsable(
                f"{attribute} spacing is uneven: {gap:.3f} mm between "
                f"{ordered[k]} and {ordered[k + 1]}, expected {spacing:.3f} mm"
            )
    return order, float((along[-1] - along[0]) / (len(along) - 1))


def _check_tilt(
    positions: np.ndarray,
    along: np.ndarray,
    normal: np.ndarray,
    names: list[str],
    attribute: str,
) -> None:
    offsets = positions - positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(lateral, axis=1)
    allowed = TILT_TOLERANCE_MM + TILT_TOLERANCE_FRACTION * np.abs(along - along[0])
    bad = np.flatnonzero(drift > allowed)
    if bad.size:
        k = int(bad[0])
        raise SeriesNotUsable(
            f"{attribute} of {names[k]} lies {drift[k]:.2f} mm "
            "off the slice normal (gantry tilt or non-stacked slices); expected slices "
            "stacked along the normal of (0020,0037) ImageOrientationPatient"
        )


def _read_voxels(ordered: Sequence[Dataset], *, flip_y: bool, flip_x: bool) -> np.ndarray:
    rows, cols = int(ordered[0].Rows), int(ordered[0].Columns)
    voxels = aligned_empty((len(ordered), rows, cols), np.int16)  # model reads it in place
    for z, ds in enumerate(ordered):
        plane = _decode(ds, z)
        if flip_y:
            plane = plane[::-1]
        if flip_x:
            plane = plane[:, ::-1]
        _to_hu(plane, ds, voxels[z])
    return voxels


def _decode(ds: Dataset, z: int) -> np.ndarray:
    native = _read_native(ds)
    if native is not None:
        return native
    refuse_unreliable_decoding(ds, f"slice {z + 1}")
    try:
        plane = pixel_array(deferred_path(ds) or ds)
    except Exception as exc:  # any decoder failure means: cannot use this series
        raise undecodable(ds, f"slice {z + 1}", exc) from exc
    if plane.ndim != 2:
        raise SeriesNotUsable(
            f"{attr('PixelData')} of slice {z + 1} decodes to {plane.ndim} dimensions; expected 2"
        )
    return plane


def _read_native(ds: Dataset) -> np.ndarray | None:
    """The (Rows, Columns) plane of an uncompressed little-endian 16-bit image, read
    straight from the bytes (from its offset in the file when Pixel Data was
    deferred); None for anything else (compressed, 8- or 32-bit, big endian),
    which pydicom's decoders handle. Same values as ``pixel_array``: bits above
    BitsStored are ignored (sign-extended when PixelRepresentation is 1)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not (
        syntax in _NATIVE_LITTLE_ENDIAN
        and ds.get("BitsAllocated") == 16
        and int(ds.get("SamplesPerPixel") or 1) == 1
    ):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    dtype = np.dtype("<i2" if ds.get("PixelRepresentation") == 1 else "<u2")
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    value = element.value if element is not None else None
    filename = getattr(ds, "filename", None)
    if isinstance(value, bytes) and len(value) == rows * cols * 2:
        plane = np.frombuffer(value, dtype).reshape(rows, cols)
    elif (
        isinstance(element, RawDataElement)
        and value is None
        and element.length == rows * cols * 2
        and isinstance(filename, str)
    ):
        plane = np.fromfile(filename, dtype, count=rows * cols, offset=element.value_tell)
        plane = plane.reshape(rows, cols)
    else:
        return None
    unused = 16 - int(ds.get("BitsStored") or 16)
    if 0 < unused < 16:
        plane = np.right_shift(np.left_shift(plane, unused), unused)
    return plane


def deferred_path(ds: Dataset) -> str | None:
    """The file to decode from when Pixel Data was not read yet (``defer_size``):
    decoding from the file leaves the caller's dataset small."""
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    filename = getattr(ds, "filename", None)
    if isinstance(element, RawDataElement) and element.value is None and filename:
        return str(filename)
    return None


def _to_hu(plane: np.ndarray, ds: Dataset, out: np.ndarray) -> None:
    hounsfield(plane, *_rescale_of(ds), out=out)


def _rescale_of(ds: Dataset) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def hounsfield(
    plane: np.ndarray, slope: float, intercept: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Stored values -> int16 HU (rounded, clipped to the int16 range), into
    ``out`` when given (an int16 array of the plane's shape)."""
    if slope == 1.0 and intercept.is_integer():
        if out is not None and out.dtype == np.int16 and _fits_int16(plane, int(intercept)):
            # Every result fits: add modulo 2**16 on the bits, one pass, exact.
            shift = np.uint16(int(intercept) & 0xFFFF)
            np.add(plane.view(np.uint16), shift, out=out.view(np.uint16))
            return out
        hu = np.add(plane, int(intercept), dtype=np.int32, casting="unsafe")
    else:
        hu = np.rint(plane.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    np.clip(hu, -32768, 32767, out=hu)
    if out is None:
        return hu.astype(np.int16)
    out[...] = hu
    return out


def _fits_int16(plane: np.ndarray, shift: int) -> bool:
    """Whether the 16-bit integer ``plane`` + ``shift`` stays within int16."""
    kind = plane.dtype
    if kind.kind not in "iu" or kind.itemsize != 2 or not kind.isnative or plane.size == 0:
        return False
    return -32768 <= int(plane.min()) + shift and int(plane.max()) + shift <= 32767


def without_pixels(ds: Dataset) -> Dataset:
    """A copy of ``ds`` sharing its elements, without the Pixel Data group (7FE0)."""
    copy = Dataset()
    for tag in ds.keys():
        if tag.group != 0x7FE0:
            # As read: an element not decoded yet is decoded only if someone reads it.
            copy[tag] = ds.get_item(tag, keep_deferred=True)
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    return copy


def _mm(values: np.ndarray) -> str:
    return "\\".join(f"{v:g}" for v in values)


def load_image_stack(datasets: Sequence[Dataset]) -> Volume:
    """Single-frame images of any plane (axial, coronal, sagittal, oblique) ->
    a float32 ``Volume`` in the stored frame order.

    ``voxels``: (slices, Rows, Columns) float32 after the modality rescale, the
    slices sorted along the normal of the image plane (row cosine x column
    cosine); frames are not flipped, so ``to_source_frames`` is the identity.
    ``axes``: the patient direction (nearest of L/R, P/A, S/I) each array axis
    points to, e.g. "SPL" for axial images stored the usual way.
    """
    check_one_origin(datasets)
    if any(is_multiframe(ds) for ds in datasets):
        from pipelines import multiframe  # it builds on this module's checks

        return multiframe.load_image_stack(datasets)
    if len(datasets) < 2:
        raise SeriesNotUsable(f"needs at least 2 slices to form a volume, found {len(datasets)}")
    for index, ds in enumerate(datasets):
        _check_instance(ds, index)
    _check_consistent(datasets)
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    check_unit_normal(normal, iop)
    order, z_spacing = _slice_order(datasets, normal, 1.0)
    ordered = [datasets[i] for i in order]
    rows, cols = int(ordered[0].Rows), int(ordered[0].Columns)
    voxels = aligned_empty((len(ordered), rows, cols), np.float32)
    for z, ds in enumerate(ordered):
        voxels[z] = _rescaled(_decode(ds, z), ds)
    dy, dx = (float(v) for v in ordered[0].PixelSpacing)
    return Volume(
        voxels=voxels,
        spacing=(z_spacing, dy, dx),
        sources=[without_pixels(ds) for ds in ordered],
        axes="".join(direction(v) for v in (normal, col, row)),
        meta={"slices": len(order)},
    )


def check_unit_normal(
    normal: np.ndarray, iop: np.ndarray, attribute: str = attr("ImageOrientationPatient")
) -> None:
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=0.01):
        raise SeriesNotUsable(
            f"{attribute} is {_mm(iop)}; the row and column "
            "directions must be perpendicular unit vectors"
        )


def direction(vector: np.ndarray) -> str:
    """The patient direction (LPS letters, or their opposites) nearest ``vector``."""
    axis = int(np.argmax(np.abs(vector)))
    return ("LPS" if vector[axis] > 0 else "RAI")[axis]


def _rescaled(plane: np.ndarray, ds: Dataset) -> np.ndarray:
    return rescaled(plane, *_rescale_of(ds))


def rescaled(plane: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> float32 after the modality rescale."""
    return plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)
