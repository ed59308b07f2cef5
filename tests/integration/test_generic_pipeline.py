"""The manifest pipeline with small Keras models whose weights are set by hand (no
training): slices in batches, 3-D patches, findings, accepts checks, a refused
manifest in a worker, and one traced function whatever the batch or image size.
(SEG and SR of segmentation manifests are validated in test_models_end_to_end.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from pipelines.generic import ManifestPipeline
from pipelines.manifest import read_manifest
from pipelines.runner import run_series
from pipelines.uids import DerivedUids
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.validators import errors_in_sr
from tests.unit.workers.test_execute import request_for, settings
from workers.execute import execute
from workers.models import ModelCache

BASE: dict[str, Any] = {
    "version": "1.0.0",
    "algorithm": {"name": "Threshold test model", "version": "2.0"},
    "accepts": {"modalities": ["CT"], "min_slices": 3},
    "preprocessing": {"intensity": {"method": "window", "center": 200, "width": 400}},
}
LESION = {
    "label": 1,
    "name": "Lesion",
    "category": {
        "code": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically Altered Structure",
    },
    "type": {"code": "52988006", "scheme": "SCT", "meaning": "Lesion"},
    "measurements": ["volume", "mean_intensity", "max_diameter"],
}


def threshold_model(path: Path, rank: int, pooled: bool = False) -> Path:
    """A 1x1 convolution: sigmoid(40 * (x - 0.5)), i.e. > 0.5 above 200 HU after the
    window; ``pooled``: the maximum over the image (a findings model)."""
    import keras

    conv = keras.layers.Conv2D if rank == 2 else keras.layers.Conv3D
    inputs = keras.Input((None,) * rank + (1,))
    outputs = conv(1, 1, activation="sigmoid")(inputs)
    if pooled:
        pool = keras.layers.GlobalMaxPooling2D if rank == 2 else keras.layers.GlobalMaxPooling3D
        outputs = pool()(outputs)
    model = keras.Model(inputs, outputs)
    model.layers[1].set_weights([np.full((1,) * rank + (1, 1), 40.0), np.array([-20.0])])
    model.save(path)
    return path


def model_folder(tmp: Path, name: str, rank: int, extra: dict[str, Any], pooled: bool = False):
    folder = tmp / name
    folder.mkdir()
    weights = threshold_model(folder / "model.keras", rank, pooled)
    manifest = {
        **BASE,
        "name": name,
        "model": {
            "format": "keras",
            "path": "model.keras",
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        },
        **extra,
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    pre = BASE["preprocessing"]
    return {
        "slices": model_folder(tmp, "lesion-slices", 2, {
            "preprocessing": {**pre, "mode": "slices", "batch_size": 3},
            "outputs": {"segments": [LESION]},
        }),
        "patches": model_folder(tmp, "lesion-patches", 3, {
            "preprocessing": {**pre, "mode": "patches", "patch": [4, 32, 32]},
            "outputs": {"segments": [LESION], "postprocessing": {"largest_component": True}},
        }),
        "findings": model_folder(tmp, "lesion-present", 2, {
            "preprocessing": {**pre, "mode": "slices"},
            "outputs": {"kind": "findings", "findings": [{
                "concept": {"code": "52988006", "scheme": "SCT", "meaning": "Lesion"},
                "positive_threshold": 0.5,
            }]},
        }, pooled=True),
    }  # fmt: skip


def lesion_series(folder: Path, shape: tuple[int, int, int]) -> tuple[Any, np.ndarray]:
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2
    ball = ((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.8) ** 2 + (
        (x - centre[2]) * 0.8
    ) ** 2 <= 64
    hu = np.where(ball, 300, 40).astype(np.int16)
    series = write_ct_series(folder, hu, SeriesOptions(series_description="Lesion phantom"))
    return series, ball


def run(folder: Path, series: Any, model: Any = None) -> tuple[Any, Any]:
    pipeline = ManifestPipeline(read_manifest(folder))
    model = model or pipeline.load_model()
    uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)
    return run_series(pipeline, model, series.paths, uids), model


def test_slices_in_batches_make_one_trace_for_any_batch_or_image_size(
    models: dict[str, Path], tmp_path: Path
) -> None:
    first, ball = lesion_series(tmp_path / "a", (7, 64, 64))  # batches of 3, 3, 1
    result, model = run(models["slices"], first)
    second, _ = lesion_series(tmp_path / "b", (5, 48, 40))
    run(models["slices"], second, model)
    assert model.tracing_count == 1
    assert np.array_equal(result.prediction.labels == 1, ball)
    (measures,) = result.prediction.found
    assert measures.volume_ml == pytest.approx(ball.sum() * 2.5 * 0.8 * 0.8 / 1000)
    assert measures.mean_intensity == pytest.approx(300)


def test_patches_cover_the_volume(models: dict[str, Path], tmp_path: Path) -> None:
    series, ball = lesion_series(tmp_path / "a", (10, 50, 70))  # not whole patches
    result, _ = run(models["patches"], series)
    assert np.array_equal(result.prediction.labels == 1, ball)
    assert [ds.Modality for ds in result.datasets] == ["SEG", "SR"]


def test_findings_become_an_sr_with_a_present_verdict(
    models: dict[str, Path], tmp_path: Path
) -> None:
    series, _ = lesion_series(tmp_path / "a", (6, 40, 40))
    result, _ = run(models["findings"], series)
    (sr,) = result.datasets
    assert sr.Modality == "SR"
    assert result.prediction.findings[0] > 0.99
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert errors_in_sr(path) == []
    text = str(pydicom.dcmread(path).ContentSequence)
    assert "Present" in text


def test_a_series_the_manifest_does_not_accept_is_skipped_with_the_reason(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from pipelines.base import SeriesNotUsable

    series, _ = lesion_series(tmp_path / "a", (2, 32, 32))
    pipeline = ManifestPipeline(read_manifest(models["slices"]))
    datasets = [pydicom.dcmread(p) for p in series.paths]
    with pytest.raises(SeriesNotUsable, match="lesion-slices needs at least 3 slices"):
        pipeline.prepare(datasets)
    for ds in datasets:
        ds.Modality = "MR"
    with pytest.raises(
        SeriesNotUsable, match=r"\(0008,0060\) Modality is MR; lesion-slices needs CT"
    ):
        pipeline.prepare(datasets * 2)


def test_a_job_for_a_refused_manifest_fails_with_its_key_and_line(
    models: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = (
        (models["slices"] / "model.yaml")
        .read_text()
        .replace("name: lesion-slices", "name: lesion-broken")
    )
    (broken / "model.yaml").write_text(manifest.replace("mode: slices", "mode: slabs"))
    (broken / "model.keras").write_bytes((models["slices"] / "model.keras").read_bytes())
    request = request_for(tmp_path, np.zeros((3, 16, 16), np.int16), pipeline="lesion-broken")
    outcome = execute(request, settings(tmp_path), ModelCache([broken]))
    assert outcome is not None and outcome.status == "failed"
    assert "lesion-broken" in outcome.reason and "preprocessing.mode" in outcome.reason
    assert "model.yaml:" in outcome.reason
