"""The built-in brain-t1 pipeline (deepbrain's pretrained graph through a manifest,
no code of its own) on a real T1 head MR from Debian's ITK examples: brain Dice
against the expert mask, SR brain volume, IHE AI Results identity, and one traced
function for every study. (Validators run on the same outputs in
test_models_end_to_end, where Orthanc pushes the series to a node.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.sr.codedict import codes

from pipelines.registry import discover
from pipelines.results import device_uid
from pipelines.runner import RunResult, run_series
from pipelines.uids import DerivedUids
from tests.support import brain_mr


def _uids(series: brain_mr.BrainSeries) -> DerivedUids:
    return DerivedUids([p.stem for p in series.paths], "brain-t1", "1.0.0")


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return discover().get("brain-t1")


@pytest.fixture(scope="module")
def model(pipeline: Any) -> Any:
    return pipeline.load_model()


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> brain_mr.BrainSeries:
    return brain_mr.brain_series_or_skip(tmp_path_factory.mktemp("brain") / "series")


@pytest.fixture(scope="module")
def result(pipeline: Any, model: Any, brain: brain_mr.BrainSeries) -> RunResult:
    return run_series(pipeline, model, brain.paths, _uids(brain))


@pytest.fixture(scope="module")
def written(result: RunResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("brain-results")
    paths = {}
    for ds in result.datasets:
        paths[ds.Modality] = folder / f"{ds.Modality}.dcm"
        ds.save_as(paths[ds.Modality], enforce_file_format=True)
    return paths


def test_brain_outline_matches_the_expert_mask(
    brain: brain_mr.BrainSeries, written: dict[str, Path]
) -> None:
    seg = pydicom.dcmread(written["SEG"])
    assert brain_mr.dice_against(brain, seg) >= 0.90
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Brain"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert seg.StudyInstanceUID == brain.study_uid
    assert seg.SeriesInstanceUID != brain.series_uid


def _brain_volume_ml(sr: pydicom.Dataset) -> float:
    volume = codes.SCT.Volume.value
    for item in sr.ContentSequence:
        for group in getattr(item, "ContentSequence", []):
            for entry in getattr(group, "ContentSequence", []):
                name = entry.ConceptNameCodeSequence[0]
                if entry.ValueType == "NUM" and name.CodeValue == volume:
                    value = entry.MeasuredValueSequence[0]
                    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
                    return float(value.NumericValue)
    raise AssertionError("no volume in the SR")


def test_sr_brain_volume_is_within_ten_percent(
    brain: brain_mr.BrainSeries, written: dict[str, Path]
) -> None:
    measured = _brain_volume_ml(pydicom.dcmread(written["SR"]))
    assert measured == pytest.approx(brain.volume_ml, rel=0.10)


def test_results_name_the_algorithm_as_ihe_ai_results_asks(
    pipeline: Any, written: dict[str, Path]
) -> None:
    for path in written.values():
        ds = pydicom.dcmread(path)
        (item,) = ds.ContributingEquipmentSequence
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("Newcode1", "99IHE")
        assert purpose.CodeMeaning == "Processing Algorithm"
        assert item.ManufacturerModelName == "deepbrain brain extractor"
        assert item.SoftwareVersions == "0.1"
        assert item.DeviceUID == device_uid(pipeline.manifest)
    seg = pydicom.dcmread(written["SEG"])
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "deepbrain brain extractor"
    other = pipeline.manifest.model_copy(
        update={"model": pipeline.manifest.model.model_copy(update={"sha256": "0" * 64})}
    )
    assert device_uid(other) != device_uid(pipeline.manifest), "a new model is a new device"


def test_one_traced_function_serves_every_study(
    pipeline: Any, model: Any, result: RunResult, tmp_path: Path
) -> None:
    other = brain_mr.write_brain_series(tmp_path / "other", patient_id="BRAIN-T1-02")
    again = run_series(pipeline, model, other.paths[5:-5], _uids(other))
    assert [ds.Modality for ds in again.datasets] == ["SEG", "SR"]
    assert model.tracing_count == 1
