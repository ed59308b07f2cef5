"""The one SEG writer: label values -> segment numbers, slab by slab."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.seg import CHUNK_VOXELS, segment_numbers


def test_label_values_become_segment_numbers_in_the_order_given_across_slabs() -> None:
    rng = np.random.default_rng(5)
    shape = (2 * CHUNK_VOXELS // (64 * 64) + 3, 64, 64)  # more than two slabs
    labels = rng.integers(0, 5, size=shape).astype(np.uint8)

    numbers = segment_numbers(labels, [3, 1])

    expected = np.where(labels == 3, 1, np.where(labels == 1, 2, 0))
    assert numbers.dtype == np.uint8
    np.testing.assert_array_equal(numbers, expected)


def test_more_segments_than_eight_bits_hold_are_refused() -> None:
    with pytest.raises(ValueError, match="256 segments"):
        segment_numbers(np.zeros((1, 2, 2), np.uint16), list(range(1, 257)))
