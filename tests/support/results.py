"""Read back what the node wrote: SEG masks per lung, SR measurements per lung."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

RIGHT_LUNG, LEFT_LUNG = "3341006", "44029006"
LABEL_OF_CODE = {RIGHT_LUNG: 2, LEFT_LUNG: 3}


def seg_labels(seg: Dataset, source_uids_in_z_order: Sequence[str]) -> np.ndarray:
    """(z, y, x) uint8 labels, 2 right lung, 3 left lung, in the sources' stored pixel order."""
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    numbers = segmentation.get_pixels_by_source_instance(
        list(source_uids_in_z_order), combine_segments=True, assert_missing_frames_are_empty=True
    )
    labels = np.zeros(numbers.shape, np.uint8)
    for item in segmentation.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        labels[numbers == item.SegmentNumber] = LABEL_OF_CODE[code]
    return labels


def sr_measurements(sr: Dataset) -> dict[str, dict[str, Any]]:
    """{finding (e.g. "Right lung") → {measurement name → (value, unit)}}."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    found: dict[str, dict[str, Any]] = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        found[group.finding_type.meaning] = {
            m.name.meaning: (float(m.value), m.unit.value) for m in group.get_measurements()
        }
    return found


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)
