"""Series -> canonical volume: sorting, rescale, flips, and every rejection."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipelines.base import SeriesNotUsable
from pipelines.lung import LungCT
from pipelines.runner import read_series
from pipelines.volume import hounsfield, load_ct_volume, load_image_stack
from tests.support.ct_series import (
    SENTINEL_PATIENT,
    SeriesOptions,
    make_ct_datasets,
    write_ct_series,
)


def _random_hu(shape: tuple[int, int, int] = (6, 10, 12), seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 3000, size=shape).astype(np.int16)


def _datasets(hu: np.ndarray | None = None, **options: Any) -> list[Dataset]:
    return make_ct_datasets(_random_hu() if hu is None else hu, SeriesOptions(**options)).datasets


def test_shuffled_files_are_sorted_feet_to_head(tmp_path: Path) -> None:
    hu = _random_hu()
    series = write_ct_series(tmp_path, hu, shuffle=True, seed=3)
    assert series.paths != sorted(series.paths)

    volume = load_ct_volume(read_series(series.paths))

    np.testing.assert_array_equal(volume.voxels, hu)
    assert [str(ds.SOPInstanceUID) for ds in volume.sources] == series.sop_uids
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.8))


def test_stored_values_are_rescaled_to_hounsfield_int16() -> None:
    hu = _random_hu()
    unsigned = load_ct_volume(_datasets(hu))
    signed = load_ct_volume(_datasets(hu, signed=True))

    assert unsigned.voxels.dtype == np.int16
    np.testing.assert_array_equal(unsigned.voxels, np.clip(hu, -1024, 3071))
    np.testing.assert_array_equal(signed.voxels, hu)


def test_fractional_rescale_slope_is_applied_and_rounded() -> None:
    datasets = _datasets(np.zeros((3, 4, 4), np.int16))
    for ds in datasets:
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = -100.25
    volume = load_ct_volume(datasets)
    # stored value 1024 (0 HU as written) -> 1024 * 0.5 - 100.25 = 411.75 -> 412
    assert set(np.unique(volume.voxels)) == {412}


@pytest.mark.parametrize(("flip_x", "flip_y"), [(True, False), (False, True), (True, True)])
def test_flipped_orientation_reaches_canonical_order_and_maps_back(
    flip_x: bool, flip_y: bool
) -> None:
    hu = _random_hu()
    datasets = _datasets(hu, flip_x=flip_x, flip_y=flip_y)
    random.Random(0).shuffle(datasets)

    volume = load_ct_volume(datasets)

    np.testing.assert_array_equal(volume.voxels, hu)
    assert (volume.flip_x, volume.flip_y) == (flip_x, flip_y)
    frames = volume.to_source_frames(volume.voxels)
    for k, source in enumerate(volume.sources):
        original = next(ds for ds in datasets if ds.SOPInstanceUID == source.SOPInstanceUID)
        np.testing.assert_array_equal(frames[k], original.pixel_array.astype(np.int32) - 1024)


def test_sources_keep_geometry_but_not_pixel_data() -> None:
    datasets = _datasets()
    volume = load_ct_volume(datasets)
    assert all("PixelData" not in ds for ds in volume.sources)
    assert all("ImagePositionPatient" in ds for ds in volume.sources)
    assert all("PixelData" in ds for ds in datasets)  # the caller's datasets are untouched


def test_one_slice_is_rejected() -> None:
    with pytest.raises(SeriesNotUsable, match="at least 2 slices.*found 1"):
        load_ct_volume(_datasets()[:1])


def test_uneven_spacing_is_rejected() -> None:
    datasets = _datasets()
    position = datasets[3].ImagePositionPatient
    datasets[3].ImagePositionPatient = [position[0], position[1], position[2] + 1.0]
    with pytest.raises(
        SeriesNotUsable, match=r"\(0020,0032\) ImagePositionPatient spacing is uneven"
    ):
        load_ct_volume(datasets)


def test_duplicate_positions_are_rejected() -> None:
    datasets = _datasets()
    datasets[2].ImagePositionPatient = list(datasets[1].ImagePositionPatient)
    with pytest.raises(SeriesNotUsable, match=r"ImagePositionPatient is the same.*duplicate"):
        load_ct_volume(datasets)


def test_gantry_tilt_is_rejected() -> None:
    datasets = _datasets()
    for k, ds in enumerate(datasets):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y + 0.9 * k, z]  # about 20 degrees
    with pytest.raises(
        SeriesNotUsable, match=r"\(0020,0032\) .* off the slice normal.*gantry tilt"
    ):
        load_ct_volume(datasets)


def test_mixed_orientation_is_rejected() -> None:
    datasets = _datasets()
    datasets[4].ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    with pytest.raises(
        SeriesNotUsable, match=r"\(0020,0037\) ImageOrientationPatient differs between instances"
    ):
        load_ct_volume(datasets)


def test_non_axial_orientation_is_rejected() -> None:
    datasets = _datasets()
    for ds in datasets:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    with pytest.raises(SeriesNotUsable, match=r"\(0020,0037\) .* expected an axial acquisition"):
        load_ct_volume(datasets)


def test_different_pixel_spacing_is_rejected() -> None:
    datasets = _datasets()
    datasets[2].PixelSpacing = [0.9, 0.9]
    with pytest.raises(SeriesNotUsable, match=r"\(0028,0030\) PixelSpacing differs"):
        load_ct_volume(datasets)


def test_missing_pixel_data_is_rejected() -> None:
    datasets = _datasets()
    del datasets[1].PixelData
    with pytest.raises(SeriesNotUsable, match=r"\(7FE0,0010\) PixelData is missing"):
        load_ct_volume(datasets)


def test_multi_frame_image_without_functional_groups_is_rejected() -> None:
    datasets = _datasets()
    datasets[0].NumberOfFrames = 2
    with pytest.raises(SeriesNotUsable, match=r"\(0028,0008\) NumberOfFrames is 2.*per-frame"):
        load_ct_volume(datasets)


def test_non_ct_series_is_rejected_by_the_lung_pipeline() -> None:
    datasets = _datasets()
    for ds in datasets:
        ds.Modality = "MR"
    with pytest.raises(SeriesNotUsable, match=r"\(0008,0060\) Modality is MR; lung-ct needs CT"):
        LungCT().prepare(datasets)


def test_file_that_is_not_dicom_is_named_by_basename_only(tmp_path: Path) -> None:
    bad = tmp_path / "secret-folder" / "notes.txt"
    bad.parent.mkdir()
    bad.write_text("not dicom")
    with pytest.raises(SeriesNotUsable, match=r"^file notes.txt is not readable as DICOM") as info:
        read_series([bad])
    assert "secret-folder" not in str(info.value)


def test_rejection_messages_carry_no_patient_values() -> None:
    datasets = _datasets()
    datasets[4].ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    with pytest.raises(SeriesNotUsable) as info:
        load_ct_volume(datasets)
    assert not any(value in str(info.value) for value in SENTINEL_PATIENT.values())


@pytest.mark.parametrize(
    "keyword", ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]
)
@pytest.mark.parametrize("load", [load_ct_volume, load_image_stack])
def test_instances_of_two_patients_or_studies_never_make_one_volume(keyword, load) -> None:
    # A sender that reuses a Series Instance UID under another study (the index then
    # files both under one series), or misfiles another patient's slice.
    datasets = _datasets()
    setattr(datasets[3], keyword, "SENTINEL-PID-0002" if keyword == "PatientID" else "1.2.3.4.5")
    with pytest.raises(SeriesNotUsable, match=rf"\) {keyword} differs between instances") as info:
        load(datasets)
    assert "SENTINEL" not in str(info.value) and "1.2.3.4.5" not in str(info.value)


def test_deferred_pixel_data_is_decoded_from_the_file(tmp_path: Path) -> None:
    hu = _random_hu()
    series = write_ct_series(tmp_path, hu)
    datasets = [pydicom.dcmread(path, defer_size=64) for path in series.paths]

    volume = load_ct_volume(datasets)

    np.testing.assert_array_equal(volume.voxels, hu)
    assert all(ds.get_item(0x7FE00010, keep_deferred=True).value is None for ds in datasets)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("deferred", [False, True])
def test_bits_above_bits_stored_are_ignored_as_pydicom_does(
    tmp_path: Path, signed: bool, deferred: bool
) -> None:
    hu = _random_hu(seed=4) // 4  # fits 12 signed bits
    datasets = _datasets(hu, signed=signed)
    for ds in datasets:
        stored = np.frombuffer(ds.PixelData, np.int16 if signed else np.uint16)
        if signed:
            ds.BitsStored, ds.HighBit = 12, 11
        noisy = stored.view(np.uint16) & 0x0FFF | 0xA000  # garbage in the unused bits
        ds.PixelData = noisy.tobytes()
        ds.save_as(tmp_path / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    paths = sorted(tmp_path.iterdir())
    expected = {}
    for path in paths:  # what pydicom's decoder makes of each file, in HU
        ds = pydicom.dcmread(path)
        hu_plane = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        expected[str(ds.SOPInstanceUID)] = hu_plane
    read = [pydicom.dcmread(p, defer_size=64 if deferred else None) for p in paths]

    volume = load_ct_volume(read)

    assert len(volume.voxels) == len(paths)
    for ds, plane in zip(volume.sources, volume.voxels, strict=True):
        np.testing.assert_array_equal(plane, expected[str(ds.SOPInstanceUID)])


@pytest.mark.parametrize(
    ("dtype", "low", "high", "intercept"),
    [
        ("<u2", 0, 3071, -1024.0),  # the usual CT: one pass
        ("<u2", 0, 65535, -1024.0),  # above int16 after the shift: clipped
        ("<i2", -32768, 32767, 5.0),  # both ends clipped
        ("<i2", -1000, 1000, -3000.0),
        (">u2", 0, 3071, -1024.0),  # not in native byte order
    ],
)
def test_integer_rescale_into_int16_equals_rounding_and_clipping(
    dtype: str, low: int, high: int, intercept: float
) -> None:
    plane = np.random.default_rng(3).integers(low, high, (16, 24), endpoint=True).astype(dtype)
    plane.flat[:2] = (low, high)
    out = np.empty(plane.shape, np.int16)

    hounsfield(plane, 1.0, intercept, out=out)

    expected = np.clip(plane.astype(np.int64) + int(intercept), -32768, 32767)
    np.testing.assert_array_equal(out, expected)
