"""Array steps of the manifest pipeline: orientation, resampling, intensity, clean-up."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.manifest import Intensity, Postprocessing
from pipelines.postprocess import clean, max_diameter
from pipelines.transform import Reorientation, normalise, resize


def test_reorientation_from_coronal_storage_to_ras_and_back() -> None:
    # stored coronal slices: slice axis toward posterior, rows toward feet, columns toward left
    stored = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    turn = Reorientation.between("PIL", "RAS")
    ras = turn.apply(stored)
    assert ras.shape == (4, 2, 3)  # x (R), y (A), z (S)
    # RAS x increases to the right: the last stored column (leftmost) comes first
    assert ras[0, 0, 0] == stored[-1, -1, -1]
    assert np.array_equal(turn.undo(ras), stored)
    assert turn.spacing((3.0, 2.0, 1.0)) == (1.0, 3.0, 2.0)


def test_reorientation_keeps_a_channel_axis() -> None:
    array = np.random.default_rng(0).random((2, 3, 4, 5))
    turn = Reorientation.between("SPL", "LPS")
    assert np.array_equal(turn.undo(turn.apply(array)), array)
    assert turn.apply(array).shape == (4, 3, 2, 5)


def test_resize_reaches_the_exact_shape_and_keeps_corners() -> None:
    array = np.random.default_rng(1).random((62, 128, 127)).astype(np.float32)
    out = resize(array, (128, 128, 128), order=1)
    assert out.shape == (128, 128, 128)
    assert out[0, 0, 0] == pytest.approx(array[0, 0, 0])
    assert out[-1, -1, -1] == pytest.approx(array[-1, -1, -1])
    assert resize(out, array.shape, order=1).shape == array.shape


@pytest.mark.parametrize(
    ("intensity", "low", "high"),
    [
        (Intensity(method="max"), -1000 / 3000, 1.0),  # divided by the maximum only
        (Intensity(method="minmax"), 0.0, 1.0),
        (Intensity(method="window", center=40, width=400), 0.0, 1.0),
        (Intensity(method="percentile", percentiles=(1, 99)), 0.0, 1.0),
    ],
)
def test_intensity_methods_scale_to_their_range(intensity: Intensity, low: float, high: float):
    values = np.linspace(-1000, 3000, 1000, dtype=np.float32).reshape(10, 10, 10)
    out = normalise(values, intensity)
    assert out.min() >= low - 1e-6 and out.max() <= high + 1e-6


def test_zscore_has_zero_mean_and_unit_deviation() -> None:
    values = np.random.default_rng(2).normal(300, 50, (8, 8, 8)).astype(np.float32)
    out = normalise(values, Intensity(method="zscore"))
    assert out.mean() == pytest.approx(0, abs=1e-4)
    assert out.std() == pytest.approx(1, abs=1e-3)


def test_clean_keeps_the_largest_component_and_drops_small_ones() -> None:
    labels = np.zeros((10, 20, 20), np.uint16)
    labels[1:9, 1:9, 1:9] = 1  # 512 voxels
    labels[2:4, 15:17, 15:17] = 1  # 8 voxels, a stray island
    clean(labels, Postprocessing(largest_component=True), (1.0, 1.0, 1.0))
    assert np.count_nonzero(labels) == 512


def test_max_diameter_of_a_box_is_its_diagonal() -> None:
    mask = np.zeros((12, 12, 12), bool)
    mask[1:11, 1:6, 1:3] = True  # 10 x 5 x 2 voxels, centres 9, 4, 1 voxels apart
    assert max_diameter(mask, (2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(18**2 + 4**2 + 1**2))


@pytest.mark.parametrize("flat", [False, True])
def test_max_diameter_is_the_largest_distance_between_any_two_voxel_centres(flat: bool) -> None:
    mask = np.random.default_rng(7).random((1 if flat else 9, 11, 13)) > 0.6
    spacing = (3.0, 0.7, 1.1)

    points = np.argwhere(mask) * np.asarray(spacing)
    brute = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)).max()
    assert max_diameter(mask, spacing) == pytest.approx(brute, rel=1e-12)
