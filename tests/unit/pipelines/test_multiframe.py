"""Enhanced multi-frame series -> the same volume as the classic series they hold;
the same refusals; results that reference the source frames."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipelines.base import SeriesNotUsable, Volume
from pipelines.lung import LungCT, measure_lungs
from pipelines.registry import get
from pipelines.runner import read_series
from pipelines.uids import DerivedUids
from pipelines.volume import ORIGIN_KEYWORDS, load_ct_volume, load_image_stack
from tests.support import brain_mr
from tests.support.compressed import SYNTAXES, convert
from tests.support.ct_series import (
    SENTINEL_PATIENT,
    SeriesOptions,
    lung_phantom,
    make_ct_datasets,
    write_ct_series,
)
from tests.support.enhanced import (
    FrameOptions,
    enhanced,
    highdicom_legacy,
    pixelmed_legacy,
    write,
)


def _random_hu(shape: tuple[int, int, int] = (6, 10, 12), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


def _classic(hu: np.ndarray | None = None, **options: Any) -> list[Dataset]:
    return make_ct_datasets(_random_hu() if hu is None else hu, SeriesOptions(**options)).datasets


def _assert_same_volume(found: Volume, expected: Volume) -> None:
    np.testing.assert_array_equal(found.voxels, expected.voxels)
    assert found.voxels.dtype == expected.voxels.dtype
    assert found.spacing == pytest.approx(expected.spacing)
    assert (found.flip_x, found.flip_y, found.axes) == (
        expected.flip_x,
        expected.flip_y,
        expected.axes,
    )


FRAME_OPTIONS = {
    "shared-groups": FrameOptions(),
    "shuffled-per-frame-groups": FrameOptions(
        shuffle=True, orientation_per_frame=True, measures_per_frame=True, rescale_per_frame=True
    ),
    "three-instances-shuffled": FrameOptions(instances=3, shuffle=True, seed=2),
}


@pytest.mark.parametrize("options", FRAME_OPTIONS.values(), ids=FRAME_OPTIONS.keys())
@pytest.mark.parametrize("flipped", [False, True])
def test_enhanced_ct_loads_as_the_classic_series_volume(
    options: FrameOptions, flipped: bool
) -> None:
    classic = _classic(flip_x=flipped, flip_y=flipped)
    multiframe = enhanced(classic, options)

    _assert_same_volume(load_ct_volume(multiframe), load_ct_volume(classic))
    _assert_same_volume(load_image_stack(multiframe), load_image_stack(classic))


def test_frames_tell_the_instance_and_frame_of_each_slice() -> None:
    classic = _classic()
    multiframe = enhanced(classic, FrameOptions(instances=2, shuffle=True, seed=5))

    volume = load_ct_volume(multiframe)

    assert len(volume.sources) == 2 and volume.meta == {"slices": 6, "instances": 2}
    for z, (index, number) in enumerate(volume.frames):
        source = volume.sources[index]
        item = source.PerFrameFunctionalGroupsSequence[number - 1]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert list(position) == list(classic[z].ImagePositionPatient)
    assert all("PixelData" not in ds for ds in volume.sources)
    assert all("PixelData" in ds for ds in multiframe)  # the caller's datasets are untouched


def test_one_instance_maps_back_to_its_stored_frame_order() -> None:
    classic = _classic(flip_y=True)
    multiframe = enhanced(classic, FrameOptions(shuffle=True, seed=4))

    volume = load_ct_volume(multiframe)

    stored = volume.to_source_frames(volume.voxels)
    np.testing.assert_array_equal(stored, multiframe[0].pixel_array.astype(np.int32) - 1024)


def test_per_frame_rescale_is_applied_frame_by_frame() -> None:
    hu = np.zeros((4, 6, 6), np.int16)
    multiframe = enhanced(_classic(hu), FrameOptions(rescale_per_frame=True))
    for number, item in enumerate(multiframe[0].PerFrameFunctionalGroupsSequence, start=1):
        item.PixelValueTransformationSequence[0].RescaleIntercept = -1024 + number

    volume = load_ct_volume(multiframe)

    # stored 1024 (0 HU as written) + the frame's intercept; z order = frame order here
    assert [int(volume.voxels[z].max()) for z in range(4)] == [1, 2, 3, 4]


def test_deferred_pixel_data_is_decoded_frame_by_frame_from_the_file(tmp_path: Path) -> None:
    hu = _random_hu()
    paths = write(enhanced(_classic(hu), FrameOptions(instances=2, shuffle=True)), tmp_path)
    datasets = [pydicom.dcmread(path, defer_size=64) for path in paths]  # as read_series does

    volume = load_ct_volume(datasets)

    np.testing.assert_array_equal(volume.voxels, np.clip(hu, -1024, 3071))
    assert all(ds.get_item(0x7FE00010, keep_deferred=True).value is None for ds in datasets)


def test_pixelmed_legacy_converted_ct_loads_as_the_classic_volume(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "classic", _random_hu(), SeriesOptions(flip_y=True))
    files = pixelmed_legacy(tmp_path / "classic", tmp_path / "pixelmed")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2" and int(ds.NumberOfFrames) == 6

    volume = load_ct_volume(read_series(files))

    _assert_same_volume(volume, load_ct_volume(read_series(series.paths)))
    assert len(volume.sources) == 1


def test_highdicom_legacy_converted_ct_loads_as_the_classic_volume(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "classic", _random_hu(), shuffle=True)
    path = highdicom_legacy(series.paths, tmp_path / "legacy.dcm")

    volume = load_ct_volume(read_series([path]))

    _assert_same_volume(volume, load_ct_volume(read_series(series.paths)))


LOSSLESS = [
    s
    for s in SYNTAXES
    if s.lossless and s.name in {"rle", "jpeg-ls-lossless", "j2k-lossless", "jpeg-lossless-sv1"}
]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[s.name for s in LOSSLESS])
def test_compressed_multiframe_decodes_to_the_classic_volume(tmp_path: Path, syntax: Any) -> None:
    hu = _random_hu((5, 24, 20))
    classic = _classic(hu)
    [source] = write(enhanced(classic, FrameOptions(shuffle=True)), tmp_path / "native")
    target = convert(syntax, source, tmp_path / syntax.name / source.name)
    assert str(pydicom.dcmread(target).file_meta.TransferSyntaxUID) == syntax.uid

    _assert_same_volume(load_ct_volume(read_series([target])), load_ct_volume(classic))


# --- refusals: the same checks as classic slices, naming the attribute and frame


def _one(classic: list[Dataset] | None = None, **options: Any) -> Dataset:
    return enhanced(classic or _classic(), FrameOptions(**options))[0]


def _position(ds: Dataset, number: int) -> Any:
    return ds.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0]


def test_duplicate_frame_positions_are_refused() -> None:
    ds = _one()
    _position(ds, 3).ImagePositionPatient = list(_position(ds, 2).ImagePositionPatient)
    with pytest.raises(
        SeriesNotUsable,
        match=r"^\(0020,9113\) PlanePositionSequence > \(0020,0032\) ImagePositionPatient "
        r"is the same for frame \d and frame \d; duplicate slices",
    ):
        load_ct_volume([ds])


def test_uneven_frame_spacing_is_refused() -> None:
    ds = _one()
    x, y, z = _position(ds, 4).ImagePositionPatient
    _position(ds, 4).ImagePositionPatient = [x, y, z + 1.0]
    with pytest.raises(SeriesNotUsable, match=r"ImagePositionPatient spacing is uneven.*frame"):
        load_ct_volume([ds])


def test_tilted_frames_are_refused() -> None:
    ds = _one()
    for number in range(1, 7):
        x, y, z = _position(ds, number).ImagePositionPatient
        _position(ds, number).ImagePositionPatient = [x, y + 0.9 * number, z]
    with pytest.raises(SeriesNotUsable, match=r"\(0020,0032\) .* off the slice normal.*tilt"):
        load_ct_volume([ds])


def test_frame_orientation_that_differs_is_refused() -> None:
    ds = _one(orientation_per_frame=True)
    item = ds.PerFrameFunctionalGroupsSequence[4].PlaneOrientationSequence[0]
    item.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    with pytest.raises(
        SeriesNotUsable,
        match=r"^\(0020,9116\) PlaneOrientationSequence > \(0020,0037\) ImageOrientationPatient "
        r"differs between frame 1 and frame 5$",
    ):
        load_ct_volume([ds])


def test_frame_pixel_spacing_that_differs_is_refused() -> None:
    ds = _one(measures_per_frame=True)
    ds.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence[0].PixelSpacing = [0.9, 0.9]
    with pytest.raises(
        SeriesNotUsable,
        match=r"\(0028,9110\) PixelMeasuresSequence > "
        r"\(0028,0030\) PixelSpacing differs between frame 1 and frame 3",
    ):
        load_ct_volume([ds])


def test_non_axial_frames_are_refused_by_the_ct_loader() -> None:
    ds = _one()
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [
        1,
        0,
        0,
        0,
        0,
        -1,
    ]
    with pytest.raises(SeriesNotUsable, match=r"\(0020,0037\) ImageOrientationPatient is .* axial"):
        load_ct_volume([ds])


def test_missing_plane_position_is_refused_naming_the_frame() -> None:
    ds = _one()
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    with pytest.raises(
        SeriesNotUsable,
        match=r"^\(0020,9113\) PlanePositionSequence > "
        r"\(0020,0032\) ImagePositionPatient is missing for frame 2$",
    ):
        load_ct_volume([ds])


def test_malformed_position_is_refused() -> None:
    ds = _one()
    _position(ds, 2).ImagePositionPatient = [1.0, 2.0]
    with pytest.raises(SeriesNotUsable, match=r"ImagePositionPatient for frame 2 does not hold 3"):
        load_ct_volume([ds])


def test_frame_count_that_disagrees_with_the_functional_groups_is_refused() -> None:
    ds = _one()
    ds.NumberOfFrames = 5
    with pytest.raises(
        SeriesNotUsable,
        match=r"\(5200,9230\) PerFrameFunctionalGroupsSequence "
        r"has 6 items in instance 1; \(0028,0008\) NumberOfFrames is 5",
    ):
        load_ct_volume([ds])


def test_several_time_points_are_refused() -> None:
    ds = _one()
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        item.FrameContentSequence[0].TemporalPositionIndex = 1 + number % 2
    with pytest.raises(SeriesNotUsable, match=r"\(0020,9128\) TemporalPositionIndex takes 2 "):
        load_ct_volume([ds])


def test_multi_frame_without_functional_groups_is_refused() -> None:
    ds, *rest = _classic()
    ds.NumberOfFrames = 2
    with pytest.raises(
        SeriesNotUsable,
        match=r"\(0028,0008\) NumberOfFrames is 2 in instance 6 "
        r"but \(5200,9230\) PerFrameFunctionalGroupsSequence is missing",
    ):
        load_ct_volume([ds, *rest])


def test_a_series_mixing_single_and_multi_frame_images_is_refused() -> None:
    classic = _classic()
    with pytest.raises(SeriesNotUsable, match=r"cannot mix single-frame and multi-frame"):
        load_ct_volume([*enhanced(classic[:3]), *classic[3:]])


def test_instances_of_different_sizes_are_refused() -> None:
    first, second = enhanced(_classic(), FrameOptions(instances=2))
    small = enhanced(_classic(_random_hu((3, 8, 12))), FrameOptions())[0]
    small.InstanceNumber = 2
    for keyword in ORIGIN_KEYWORDS:  # the same series, only smaller
        setattr(small, keyword, first.get(keyword))
    with pytest.raises(
        SeriesNotUsable,
        match=r"\(0028,0010\) Rows differs between instance 1 "
        r"and instance 2",
    ):
        load_ct_volume([first, small])
    assert second


def test_one_frame_is_not_a_volume() -> None:
    ds = enhanced(_classic()[:1])[0]
    with pytest.raises(SeriesNotUsable, match="at least 2 slices.*found 1"):
        load_ct_volume([ds])


def test_refusals_carry_no_patient_values() -> None:
    ds = _one()
    _position(ds, 3).ImagePositionPatient = list(_position(ds, 2).ImagePositionPatient)
    broken = [ds, copy.deepcopy(ds)]
    del broken[1].PerFrameFunctionalGroupsSequence[0].PlanePositionSequence
    for series in ([ds], broken[1:]):
        with pytest.raises(SeriesNotUsable) as info:
            load_ct_volume(series)
        assert not any(value in str(info.value) for value in SENTINEL_PATIENT.values())


# --- results reference the frames


def _lung_results(options: FrameOptions) -> tuple[Volume, np.ndarray, Dataset, Dataset, Any]:
    hu, labels = lung_phantom()
    multiframe = enhanced(make_ct_datasets(hu, SeriesOptions(flip_y=True)).datasets, options)
    pipeline = LungCT()
    volume = pipeline.prepare(multiframe)
    prediction = measure_lungs(volume, labels)
    uids = DerivedUids([str(ds.SOPInstanceUID) for ds in multiframe], "lung-ct", "1.0.0")
    seg, sr = pipeline.encode(volume, prediction, uids)
    return volume, labels, seg, sr, multiframe


def _frame_positions(sources: list[Dataset]) -> dict[tuple[str, int], list[float]]:
    return {
        (str(ds.SOPInstanceUID), number): [
            float(v) for v in _position(ds, number).ImagePositionPatient
        ]
        for ds in sources
        for number in range(1, int(ds.NumberOfFrames) + 1)
    }


@pytest.mark.parametrize("instances", [1, 3])
def test_seg_frames_reference_the_source_frame_at_their_position(
    tmp_path: Path, instances: int
) -> None:
    volume, labels, seg, _, multiframe = _lung_results(
        FrameOptions(instances=instances, shuffle=True, seed=7)
    )
    seg.save_as(tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    positions = _frame_positions(multiframe)
    referenced = {str(ds.SOPInstanceUID) for ds in multiframe}

    assert {item.ReferencedSOPInstanceUID for item in seg.SourceImageSequence} == referenced
    for item in seg.PerFrameFunctionalGroupsSequence:
        [derivation] = item.DerivationImageSequence
        [source] = derivation.SourceImageSequence
        key = (source.ReferencedSOPInstanceUID, int(source.ReferencedFrameNumber))
        where = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert positions[key] == pytest.approx(where)
    # the segment pixels sit where the labels are, frame by frame
    z_of = {(str(volume.sources[i].SOPInstanceUID), n): z for z, (i, n) in enumerate(volume.frames)}
    masks = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    for item, mask in zip(seg.PerFrameFunctionalGroupsSequence, masks, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        z = z_of[(source.ReferencedSOPInstanceUID, int(source.ReferencedFrameNumber))]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        expected = (labels[z] == number + 1)[::-1]  # segment 1 right lung (2); flip_y stored
        np.testing.assert_array_equal(mask.astype(bool), expected)


@pytest.mark.parametrize("instances", [1, 3])
def test_sr_names_the_source_frames_each_lung_lies_on(instances: int) -> None:
    volume, labels, _, sr, _ = _lung_results(FrameOptions(instances=instances, shuffle=True))
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for group, label in zip(
        report.content.get_volumetric_roi_measurement_groups(), (2, 3), strict=True
    ):
        found = set()
        for item in group[0].ContentSequence:
            if item.ConceptNameCodeSequence[0].CodeValue != "121233":  # Source image for seg.
                continue
            image = item.ReferencedSOPSequence[0]
            numbers = image.ReferencedFrameNumber
            for number in numbers if isinstance(numbers, list | MultiValue) else [numbers]:
                found.add((image.ReferencedSOPInstanceUID, int(number)))
        expected = {
            (str(volume.sources[i].SOPInstanceUID), n)
            for z, (i, n) in enumerate(volume.frames)
            if (labels[z] == label).any()
        }
        assert found == expected


# --- the manifest pipeline (brain-t1) takes multi-frame MR


@pytest.mark.skipif(not brain_mr.available(), reason="insighttoolkit5-examples not installed")
def test_enhanced_and_legacy_mr_prepare_as_the_classic_brain_series(tmp_path: Path) -> None:
    series = brain_mr.write_brain_series(tmp_path / "classic")
    classic = read_series(series.paths)
    pipeline = get("brain-t1")
    expected = pipeline.prepare(classic)
    made = {
        "enhanced-mr": enhanced(classic, FrameOptions(shuffle=True)),
        "pixelmed-legacy-mr": read_series(
            pixelmed_legacy(tmp_path / "classic", tmp_path / "pixelmed")
        ),
    }
    for name, datasets in made.items():
        assert len(datasets) == 1 and int(datasets[0].NumberOfFrames) == len(classic), name
        _assert_same_volume(pipeline.prepare(datasets), expected)


def test_the_manifest_counts_frames_as_slices() -> None:
    pipeline = get("brain-t1")  # min_slices: 20
    mr = _classic(_random_hu((8, 10, 12)))
    for ds in mr:
        ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
    with pytest.raises(SeriesNotUsable, match="needs at least 20 slices, the series has 8"):
        pipeline.prepare(enhanced(mr))


def test_a_vendor_enhanced_ct_loads_with_its_rescale_and_flip() -> None:
    """pydicom-data's eCT_Supplemental.dcm: two frames 10 mm apart, rows stored right
    to left, rescale in the shared functional groups."""
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]

    volume = load_ct_volume([ds])

    assert volume.voxels.shape == (2, 512, 512)
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert (volume.flip_x, volume.flip_y, volume.frames) == (True, False, [(0, 1), (0, 2)])
    stored = ds.pixel_array.astype(np.float64) * float(shared.RescaleSlope)
    expected = np.clip(np.rint(stored + float(shared.RescaleIntercept)), -32768, 32767)
    np.testing.assert_array_equal(volume.voxels, expected[:, :, ::-1])


def test_multi_frame_without_functional_groups_from_pydicom_data_is_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("emri_small_jpeg_ls_lossless.dcm"))
    with pytest.raises(SeriesNotUsable, match=r"NumberOfFrames is 10 .* PerFrameFunctional"):
        load_image_stack([ds])
