"""The shipped lung CT model, loaded as the worker loads it, on synthetic chest
phantoms (known lung masks) and on a real abdominal CT slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import pipelines
from pipelines.manifest import read_manifest
from pipelines.model import SavedModel, load_model
from tests.support.phantom import Phantom, make_chest_phantom

MODEL_DIR = Path(pipelines.__file__).resolve().parent / "models" / "lung_ct"
RIGHT, LEFT = 2, 3

# (shape z, y, x; spacing z, y, x mm; phantom options)
PHANTOMS = {
    "thin-slices-300x1mm": ((300, 256, 256), (1.0, 0.7, 0.7), {"body_scale": 0.5}),
    "thick-slices-40x5mm": ((40, 256, 256), (5.0, 0.8, 0.8), {"body_scale": 0.55, "seed": 1}),
    "adult-512px-0.7mm": ((110, 512, 512), (2.5, 0.7, 0.7), {"body_scale": 1.0, "seed": 2}),
    "noisy-0.9mm-pixels": (
        (100, 256, 256),
        (2.0, 0.9, 0.9),
        {"body_scale": 0.65, "noise_hu": 60, "seed": 3},
    ),
    "child-0.6mm-pixels": ((70, 256, 256), (3.0, 0.6, 0.6), {"body_scale": 0.42, "seed": 4}),
    "plain-lungs-no-vessels-nodules-emphysema": (
        (60, 256, 256),
        (4.0, 0.75, 0.75),
        {"body_scale": 0.55, "vessels": False, "nodules": False, "emphysema": 0},
    ),
    "short-scan-through-mid-lungs": ((40, 256, 256), (1.25, 0.7, 0.7), {"body_scale": 0.5}),
}


@pytest.fixture(scope="module")
def model() -> SavedModel:
    return load_model(MODEL_DIR)


@pytest.fixture(scope="module")
def chest(model: SavedModel) -> tuple[Phantom, np.ndarray]:
    """A phantom with everything in it, and the model's labels for it."""
    phantom = make_chest_phantom(
        (160, 256, 256), (2.0, 0.7, 0.7), body_scale=0.5, seed=7, emphysema=60
    )
    return phantom, segment(model, phantom.hu, phantom.spacing)


def segment(model: SavedModel, hu: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    return model(volume=hu, spacing=np.asarray(spacing, np.float32))["labels"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def assert_lungs_match(labels: np.ndarray, truth: np.ndarray, min_dice: float = 0.95) -> None:
    for label, name in ((RIGHT, "right"), (LEFT, "left")):
        found, expected = labels == label, truth == label
        score = dice(found, expected)
        error = np.count_nonzero(found) / np.count_nonzero(expected) - 1.0
        assert score >= min_dice, f"{name} lung: Dice {score:.3f}, expected >= {min_dice}"
        assert abs(error) <= 0.05, f"{name} lung: volume off by {100 * error:+.1f} %, limit 5 %"


@pytest.mark.parametrize("shape, spacing, options", PHANTOMS.values(), ids=PHANTOMS.keys())
def test_finds_both_lungs_within_5_percent_of_truth(
    model: SavedModel, shape: tuple[int, int, int], spacing: tuple[float, float, float], options
) -> None:
    phantom = make_chest_phantom(shape, spacing, **options)
    labels = segment(model, phantom.hu, spacing)
    assert labels.shape == phantom.hu.shape and labels.dtype == np.uint8
    assert_lungs_match(labels, phantom.truth)


def test_right_lung_is_labelled_on_the_low_x_side(chest: tuple[Phantom, np.ndarray]) -> None:
    _, labels = chest
    x_right = np.nonzero(labels == RIGHT)[2].mean()
    x_left = np.nonzero(labels == LEFT)[2].mean()
    assert x_right < labels.shape[2] / 2 < x_left


def test_airways_and_stomach_gas_outside_the_lungs_are_body(
    chest: tuple[Phantom, np.ndarray],
) -> None:
    phantom, labels = chest
    assert np.count_nonzero(phantom.gas) > 1000
    found = labels[phantom.gas]
    assert np.mean(found >= RIGHT) < 0.05
    assert np.all(found >= 1)


def surrounded(mask: np.ndarray, reach: int) -> np.ndarray:
    """Voxels of ``mask`` whose in-plane neighbours ``reach`` voxels away (in y and x,
    both ways) are in ``mask`` too."""
    out = mask.copy()
    out[:, reach:] &= mask[:, :-reach]
    out[:, :-reach] &= mask[:, reach:]
    out[:, :, reach:] &= mask[:, :, :-reach]
    out[:, :, :-reach] &= mask[:, :, reach:]
    return out


def test_vessels_within_the_lungs_are_mostly_lung(chest: tuple[Phantom, np.ndarray]) -> None:
    phantom, labels = chest
    reach = int(round(8.0 / phantom.spacing[1]))
    dense = (phantom.hu > -400) & surrounded(phantom.truth > 0, reach)
    assert np.count_nonzero(dense) > 1000
    # Vessels and bronchi where they enter a lung at the hilum are left out.
    assert np.mean(labels[dense] == phantom.truth[dense]) > 0.7


def test_nodules_inside_the_lungs_are_lung(chest: tuple[Phantom, np.ndarray]) -> None:
    phantom, labels = chest
    inner = [nodule for nodule in phantom.nodules if not nodule.pleural]
    assert len(inner) == 4
    for nodule in inner:
        mask = phantom.nodule_mask(nodule)
        assert np.mean(labels[mask] == phantom.truth[mask]) > 0.95, nodule


def test_table_and_air_around_the_patient_are_outside(chest: tuple[Phantom, np.ndarray]) -> None:
    phantom, labels = chest
    around = ~phantom.body
    table = around & (phantom.hu > -400)
    assert np.count_nonzero(table) > 1000
    assert np.mean(labels[table] == 0) > 0.99
    assert np.mean(labels[around] == 0) > 0.995


def test_body_label_covers_the_patient(chest: tuple[Phantom, np.ndarray]) -> None:
    phantom, labels = chest
    assert dice(labels >= 1, phantom.body) > 0.99


def test_emphysema_index_of_found_lungs_matches_truth(chest: tuple[Phantom, np.ndarray]) -> None:
    phantom, labels = chest

    def emphysema_index(lung: np.ndarray) -> float:
        return 100.0 * np.mean(phantom.hu[lung] < -950)

    expected = emphysema_index(phantom.truth > 0)
    assert expected > 2.0  # the phantom has low-attenuation patches
    assert emphysema_index(labels >= RIGHT) == pytest.approx(expected, abs=0.3)


def test_single_slice_input_finds_both_lungs(model: SavedModel) -> None:
    phantom = make_chest_phantom((60, 256, 256), (3.0, 0.7, 0.7), body_scale=0.5, seed=5)
    middle = int(np.mean(np.nonzero(phantom.truth.any(axis=(1, 2)))[0]))
    one = slice(middle, middle + 1)
    labels = segment(model, phantom.hu[one], phantom.spacing)
    assert labels.shape == (1, 256, 256)
    assert_lungs_match(labels, phantom.truth[one])


def test_odd_sized_volume_keeps_its_shape(model: SavedModel) -> None:
    phantom = make_chest_phantom((23, 199, 211), (4.0, 0.85, 0.85), body_scale=0.45, seed=6)
    labels = segment(model, phantom.hu, phantom.spacing)
    assert labels.shape == (23, 199, 211)
    assert_lungs_match(labels, phantom.truth)


def test_air_only_volume_has_no_body_and_no_lung(model: SavedModel) -> None:
    labels = segment(model, np.full((5, 64, 64), -1000, np.int16), (2.0, 0.7, 0.7))
    assert not labels.any()


def real_abdominal_slice() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The 512 x 512 abdominal CT slice of pydicom's test data, in HU, canonical rows."""
    path = get_testdata_file("explicit_VR-UN.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # (0020,0037) ImageOrientationPatient is [1, 0, 0, 0, -1, 0]: rows run anterior,
    # so reverse them to make y increase toward posterior.
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
    pixel = float(ds.PixelSpacing[0])
    return np.ascontiguousarray(hu[None, ::-1]).astype(np.int16), (2.5, pixel, pixel)


def grow_region(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected region of a 2-D ``mask`` holding ``seed`` (plain numpy)."""
    region = np.zeros_like(mask)
    region[seed] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


def test_real_abdominal_slice_has_body_but_no_lung(model: SavedModel) -> None:
    hu, spacing = real_abdominal_slice()
    labels = segment(model, hu, spacing)[0]
    patient = grow_region(hu[0] > -500, (256, 256))
    assert np.count_nonzero(patient) > 50_000
    assert np.mean(labels[patient] >= 1) > 0.99, "the patient is not covered by the body label"
    body = labels >= 1
    extra = np.count_nonzero(body & ~patient) / np.count_nonzero(patient)
    assert extra < 0.03, "the body label spills beyond the patient (table, bowel gas aside)"
    assert not np.any(labels >= RIGHT), "bowel gas was labelled lung"


def test_fresh_export_matches_the_shipped_model(model: SavedModel, tmp_path: Path) -> None:
    from pipelines.lung.export import export

    fresh = load_model(export(tmp_path))
    assert fresh.manifest.model_dump(exclude={"folder", "model"}) == model.manifest.model_dump(
        exclude={"folder", "model"}
    )
    phantom = make_chest_phantom((30, 128, 128), (5.0, 1.3, 1.3), body_scale=0.45, seed=8)
    assert np.array_equal(
        segment(fresh, phantom.hu, phantom.spacing), segment(model, phantom.hu, phantom.spacing)
    ), "the shipped model is stale: run python -m pipelines.lung.export"


def test_rejects_spacing_that_is_not_positive(model: SavedModel) -> None:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="spacing must be positive"):
        segment(model, np.zeros((2, 32, 32), np.int16), (0.0, 0.7, 0.7))


def test_manifest_matches_the_saved_signature() -> None:
    import tensorflow as tf

    manifest = read_manifest(MODEL_DIR)
    assert (manifest.name, manifest.version) == ("lung-ct", "1.0.0")
    loaded = tf.saved_model.load(str(manifest.model_path))
    signature = loaded.signatures[manifest.model.signature]
    _, inputs = signature.structured_input_signature
    assert set(inputs) == {manifest.model.input, "spacing"}
    assert inputs[manifest.model.input].dtype.name == manifest.model.input_dtype
    assert manifest.model.output in signature.structured_outputs
