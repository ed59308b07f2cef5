"""The shipped config.yaml sends T1-weighted brain MR to brain-t1, and nothing else."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node import facts as header
from dicom_node.index import SeriesSummary
from dicom_node.routing import select
from dicom_node.settings import load_settings

SHIPPED = Path(__file__).resolve().parents[3] / "config.yaml"
MR = "1.2.840.10008.5.1.4.1.1.4"
NOON = datetime(2026, 12, 2, 12, 0)


def mr_series(n: int = 60, **attrs: object) -> SeriesSummary:
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "T1 SE COR"
    ds.RepetitionTime = 500
    ds.EchoTime = 15
    for key, value in attrs.items():
        setattr(ds, key, value)
    facts: header.SeriesFacts = {}
    for _ in range(n):
        header.merge(facts, header.instance_facts(ds, None))
    return SeriesSummary("1.2", "1.2.3", "", "", "", "", "", "", n, facts, 0.0, 0.0, None)


def pipelines_for(summary: SeriesSummary) -> list[str]:
    rules = load_settings(SHIPPED).rules
    return [run.pipeline for rule in select(summary, rules, NOON) for run in rule.runs]


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"BodyPartExamined": "", "StudyDescription": "MRI BRAIN W/O"},
        {"BodyPartExamined": "", "SeriesDescription": "sag T1 head"},
        {"BodyPartExamined": "BRAIN", "SeriesDescription": "3D MPRAGE", "RepetitionTime": 2300,
         "EchoTime": 2.3, "InversionTime": 900},
        {"SeriesDescription": "Series 3"},  # nothing named: short TR and TE make it T1
        {"SeriesDescription": "AX SPGR", "ProtocolName": "BRAIN ROUTINE"},
    ],
)  # fmt: skip
def test_t1_brain_mr_goes_to_the_brain_pipeline(attrs: dict[str, object]) -> None:
    assert pipelines_for(mr_series(**attrs)) == ["brain-t1"]


@pytest.mark.parametrize(
    "attrs",
    [
        {"SeriesDescription": "AX T2 TSE", "RepetitionTime": 4000, "EchoTime": 100},
        {"SeriesDescription": "AX FLAIR", "RepetitionTime": 9000, "EchoTime": 120,
         "InversionTime": 2500},
        {"SeriesDescription": "Series 4", "RepetitionTime": 9000, "EchoTime": 90,
         "InversionTime": 2500},  # a FLAIR that does not say so
        {"SeriesDescription": "DWI b1000"},
        {"BodyPartExamined": "KNEE", "SeriesDescription": "COR T1"},
        {"BodyPartExamined": "", "SeriesDescription": "COR T1", "StudyDescription": "MR KNEE"},
        {"SeriesDescription": "T1 3-plane localizer"},
        {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
        {"n": 3},
    ],
)  # fmt: skip
def test_other_mr_is_not_sent_to_the_brain_pipeline(attrs: dict[str, object]) -> None:
    n = int(attrs.pop("n", 60))  # type: ignore[call-overload]
    assert "brain-t1" not in pipelines_for(mr_series(n, **attrs))
