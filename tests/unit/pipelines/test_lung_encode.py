"""Lung SEG + SR: encode -> write -> read back -> decode equals the input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipelines.base import PipelineFailed, SeriesNotUsable, Volume
from pipelines.lung import LungCT, LungPrediction, measure_lungs
from pipelines.registry import get
from pipelines.runner import run_series, summarize
from pipelines.uids import DerivedUids
from tests.support.ct_series import (
    SENTINEL_PATIENT,
    SeriesOptions,
    lung_phantom,
    make_ct_datasets,
    write_ct_series,
)

RIGHT_LUNG = "3341006"
LEFT_LUNG = "44029006"
LABEL_OF_CODE = {RIGHT_LUNG: 2, LEFT_LUNG: 3}


def _encode(
    labels: np.ndarray, hu: np.ndarray, **options: Any
) -> tuple[Volume, LungPrediction, list[Dataset], DerivedUids]:
    pipeline = LungCT()
    series = make_ct_datasets(hu, SeriesOptions(**options))
    volume = pipeline.prepare(series.datasets)
    prediction = measure_lungs(volume, labels)
    uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)
    return volume, prediction, pipeline.encode(volume, prediction, uids), uids


def _write_and_read(datasets: list[Dataset], folder: Path) -> tuple[hd.seg.Segmentation, Any]:
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    datasets[0].save_as(seg_path)
    datasets[1].save_as(sr_path)
    return hd.seg.segread(seg_path), hd.sr.srread(sr_path)


def _decode_labels(seg: hd.seg.Segmentation, volume: Volume) -> np.ndarray:
    """SEG frames -> (z, y, x) uint8 labels (2 right, 3 left) in canonical order."""
    source_uids = [str(ds.SOPInstanceUID) for ds in volume.sources]
    numbers = seg.get_pixels_by_source_instance(
        source_uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    labels = np.zeros(numbers.shape, np.uint8)
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        labels[numbers == item.SegmentNumber] = LABEL_OF_CODE[code]
    return volume.to_source_frames(labels)  # the flips are their own inverse


def _lungs_only(labels: np.ndarray) -> np.ndarray:
    return np.where(labels >= 2, labels, 0).astype(np.uint8)


def _measurements(sr: Any) -> dict[str, dict[str, float]]:
    found = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        values = {m.name.value: m.value for m in group.get_measurements()}
        found[group.finding_type.value] = values
    return found


@pytest.mark.parametrize("flipped", [False, True])
def test_seg_round_trip_gives_back_the_lung_labels(tmp_path: Path, flipped: bool) -> None:
    hu, labels = lung_phantom()
    volume, _, datasets, _ = _encode(labels, hu, flip_x=flipped, flip_y=flipped)

    seg, _ = _write_and_read(datasets, tmp_path)

    np.testing.assert_array_equal(_decode_labels(seg, volume), _lungs_only(labels))
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Right lung", "Left lung"]


def test_seg_is_binary_and_omits_empty_frames(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    _, _, datasets, _ = _encode(labels, hu)
    seg, _ = _write_and_read(datasets, tmp_path)

    slices_with_lung = int(np.count_nonzero((labels == 2).any(axis=(1, 2))))
    assert seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 2 * slices_with_lung < 2 * len(labels)


def test_sr_reports_the_measured_volume_and_emphysema_index(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    _, prediction, datasets, _ = _encode(labels, hu)
    _, sr = _write_and_read(datasets, tmp_path)

    voxel_ml = 2.5 * 0.8 * 0.8 / 1000
    right_voxels = int(np.count_nonzero(labels == 2))
    right_low = int(np.count_nonzero((labels == 2) & (hu < -950)))
    found = _measurements(sr)
    assert found[RIGHT_LUNG]["118565006"] == pytest.approx(right_voxels * voxel_ml, abs=1e-3)
    assert found[RIGHT_LUNG]["LAA950"] == pytest.approx(100 * right_low / right_voxels, abs=1e-4)
    assert found[LEFT_LUNG]["LAA950"] == 0
    assert summarize(prediction)["right"]["volume_ml"] == pytest.approx(
        right_voxels * voxel_ml, abs=0.1
    )


def test_sr_groups_reference_their_seg_segments(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    volume, _, datasets, _ = _encode(labels, hu)
    seg, sr = _write_and_read(datasets, tmp_path)

    numbers = {
        item.SegmentedPropertyTypeCodeSequence[0].CodeValue: item.SegmentNumber
        for item in seg.SegmentSequence
    }
    for group in sr.content.get_volumetric_roi_measurement_groups():
        reference = group.referenced_segment
        item = reference[0].ReferencedSOPSequence[0]
        assert item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert item.ReferencedSegmentNumber == numbers[group.finding_type.value]
        assert reference[1].UID == volume.sources[0].SeriesInstanceUID


def test_results_join_the_source_study_in_new_series() -> None:
    hu, labels = lung_phantom()
    volume, _, datasets, uids = _encode(labels, hu)
    source = volume.sources[0]

    for ds, output in zip(datasets, ("seg", "sr"), strict=True):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == SENTINEL_PATIENT["PatientID"]
        assert ds.SeriesInstanceUID == uids.uid(output, "series") != source.SeriesInstanceUID
        assert ds.SOPInstanceUID == uids.uid(output, "instance")
        assert ds.Manufacturer and ds.ManufacturerModelName and ds.SoftwareVersions


def test_encoding_twice_gives_the_same_uids() -> None:
    hu, labels = lung_phantom()
    series = make_ct_datasets(hu)
    pipeline = LungCT()
    runs = []
    for _ in range(2):
        volume = pipeline.prepare(series.datasets)
        uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)
        runs.append(pipeline.encode(volume, measure_lungs(volume, labels), uids))
    first, second = ([(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in run] for run in runs)
    assert first == second


def test_one_lung_encodes_a_single_segment_and_group(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    labels[labels == 2] = 1  # no right lung found
    volume, _, datasets, _ = _encode(labels, hu)
    seg, sr = _write_and_read(datasets, tmp_path)

    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Left lung"]
    np.testing.assert_array_equal(_decode_labels(seg, volume), _lungs_only(labels))
    assert list(_measurements(sr)) == [LEFT_LUNG]
    anatomy = seg.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == "L"


def test_no_lung_at_all_skips_the_series() -> None:
    hu, labels = lung_phantom()
    volume = LungCT().prepare(make_ct_datasets(hu).datasets)
    with pytest.raises(SeriesNotUsable, match="no lung found"):
        measure_lungs(volume, np.minimum(labels, 1))


def _labels_model(labels: np.ndarray) -> Callable[..., dict[str, np.ndarray]]:
    """A stand-in model that returns fixed labels (until the real model ships)."""

    def model(volume: np.ndarray, spacing: np.ndarray) -> dict[str, np.ndarray]:
        assert volume.dtype == np.int16 and spacing.dtype == np.float32
        return {"labels": labels}

    return model


def test_runner_reads_files_and_times_each_stage(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    series = write_ct_series(tmp_path / "in", hu, shuffle=True)
    pipeline = get("lung-ct")
    uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)

    result = run_series(pipeline, _labels_model(labels), series.paths, uids)

    assert [ds.Modality for ds in result.datasets] == ["SEG", "SR"]
    assert set(result.timings) == {"load", "infer", "encode"}
    assert set(summarize(result.prediction)) == {"right", "left"}
    assert pydicom.dcmread(series.paths[0]).PatientID == SENTINEL_PATIENT["PatientID"]


def test_model_output_of_the_wrong_shape_fails_the_job() -> None:
    hu, labels = lung_phantom()
    pipeline = LungCT()
    volume = pipeline.prepare(make_ct_datasets(hu).datasets)
    with pytest.raises(PipelineFailed, match="shape"):
        pipeline.infer(_labels_model(labels[1:]), volume)


def test_registry_names_the_known_pipelines_for_an_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown pipeline 'lung-mr'; known: brain-t1, lung-ct"):
        get("lung-mr")


def test_emphysema_index_counts_voxels_strictly_below_minus_950() -> None:
    hu = np.full((3, 4, 4), -950, np.int16)
    hu[:, :, :2] = -951
    labels = np.full(hu.shape, 3, np.uint8)
    volume = LungCT().prepare(make_ct_datasets(hu).datasets)

    (left,) = measure_lungs(volume, labels).lungs

    assert left.side == "left"
    assert left.emphysema_percent == pytest.approx(50.0)
    assert left.volume_ml == pytest.approx(48 * 2.5 * 0.8 * 0.8 / 1000)
