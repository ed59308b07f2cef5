"""The shipped config.yaml routes a multi-frame series like the classic one: one
Enhanced (or Legacy Converted Enhanced) CT / MR instance of many frames is a
whole series; a multi-frame instance of a few frames (a scout) is not."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node import facts as header
from dicom_node.index import SeriesSummary
from dicom_node.routing import count_complete, select
from dicom_node.settings import load_settings

SHIPPED = Path(__file__).resolve().parents[3] / "config.yaml"
NOON = datetime(2026, 12, 2, 12, 0)
CT, ENHANCED_CT, LEGACY_CT = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                              "1.2.840.10008.5.1.4.1.1.2.2")  # fmt: skip
ENHANCED_MR, LEGACY_MR = "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"


def summary(instances: int, **attrs: object) -> SeriesSummary:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    facts: header.SeriesFacts = {}
    for _ in range(instances):
        header.merge(facts, header.instance_facts(ds, None))
    return SeriesSummary("1.2", "1.2.3", "", "", "", "", "", "", instances, facts, 0.0, 0.0, None)


def chest(sop_class: str, instances: int, frames: int, **attrs: object) -> SeriesSummary:
    attrs = {"ImageType": ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], **attrs}
    return summary(instances, SOPClassUID=sop_class, Modality="CT", NumberOfFrames=frames,
                   BodyPartExamined="CHEST", **attrs)  # fmt: skip


def head(sop_class: str, instances: int, frames: int) -> SeriesSummary:
    return summary(instances, SOPClassUID=sop_class, Modality="MR", NumberOfFrames=frames,
                   ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                   BodyPartExamined="HEAD", SeriesDescription="3D T1 MPRAGE")  # fmt: skip


def pipelines_for(series: SeriesSummary) -> list[str]:
    rules = load_settings(SHIPPED).rules
    return [run.pipeline for rule in select(series, rules, NOON) for run in rule.runs]


@pytest.mark.parametrize("sop_class", [ENHANCED_CT, LEGACY_CT])
@pytest.mark.parametrize("instances", [1, 3])
def test_multi_frame_chest_ct_goes_to_the_lung_pipeline(sop_class: str, instances: int) -> None:
    assert pipelines_for(chest(sop_class, instances, 120)) == ["lung-ct"]


@pytest.mark.parametrize("sop_class", [ENHANCED_MR, LEGACY_MR])
def test_multi_frame_t1_head_mr_goes_to_the_brain_pipeline(sop_class: str) -> None:
    assert pipelines_for(head(sop_class, 1, 160)) == ["brain-t1"]


def test_a_multi_frame_scout_of_a_few_frames_goes_nowhere() -> None:
    assert pipelines_for(chest(ENHANCED_CT, 1, 2)) == []
    scout = chest(ENHANCED_CT, 1, 40, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"])
    assert pipelines_for(scout) == []


def test_classic_series_still_count_instances() -> None:
    axial = {"SOPClassUID": CT, "Modality": "CT", "BodyPartExamined": "CHEST",
             "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}  # fmt: skip
    assert pipelines_for(summary(60, **axial)) == ["lung-ct"]
    assert pipelines_for(summary(3, **axial)) == []


def test_one_multi_frame_instance_is_a_complete_series_whatever_images_in_acquisition_says() -> (
    None
):
    series = chest(ENHANCED_CT, 1, 120, ImagesInAcquisition=120)
    assert count_complete(series) == ""
