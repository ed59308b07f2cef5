"""Series as scanners write them, made by dcmtk's ``dump2dcm`` (not pydicom, not
the node's own helpers): CT with and without BodyPartExamined, lower-case
values, chest-abdomen, scouts with LOCALIZER image types, head and abdomen CT,
a dose report SR, a secondary capture and an MR series.

Each case names the routing the shipped config.yaml must give it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import require

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ROOT = "1.2.826.0.1.3680043.8.498.77"


@dataclass(frozen=True)
class Case:
    name: str
    sop_class: str
    modality: str
    instances: int
    lungs: bool  # does the shipped chest-ct-lungs rule route it?
    attrs: tuple[tuple[str, str, str], ...] = ()  # (tag, VR, value)
    image: bool = True
    brain: bool = False  # does the shipped t1-brain-mr rule route it?


CASES = (
    Case("chest-bodypart", CT_IMAGE, "CT", 12, True, (
        ("0018,0015", "CS", "CHEST"), ("0008,103e", "LO", "Thorax 1.0 B70f"),
        ("0008,0008", "CS", "ORIGINAL\\PRIMARY\\AXIAL"), ("0008,0070", "LO", "SIEMENS"))),
    Case("chest-no-bodypart", CT_IMAGE, "CT", 12, True, (
        ("0008,103e", "LO", "CHEST W/O 1.25mm"), ("0008,0008", "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
        ("0008,0070", "LO", "GE MEDICAL SYSTEMS"))),
    Case("chest-empty-bodypart-protocol", CT_IMAGE, "CT", 12, True, (
        ("0018,0015", "CS", ""), ("0008,103e", "LO", "Recon 2"),
        ("0018,1030", "LO", "Lung Screening Low Dose"))),
    Case("chest-lowercase", CT_IMAGE, "ct", 12, True, (
        ("0018,0015", "CS", "chest"), ("0008,103e", "LO", "lung 1mm"),
        ("0008,0008", "CS", "original\\primary\\axial"))),
    Case("chest-abdomen", CT_IMAGE, "CT", 12, True, (
        ("0018,0015", "CS", "CHEST_ABDOMEN"), ("0008,103e", "LO", "CAP 3mm"))),
    Case("chest-abdomen-pelvis-description", CT_IMAGE, "CT", 12, True, (
        ("0008,1030", "LO", "CT Chest Abdomen Pelvis with contrast"),
        ("0008,103e", "LO", "Venous 3.0 Br40"))),
    Case("scout-localizer", CT_IMAGE, "CT", 2, False, (
        ("0018,0015", "CS", "CHEST"), ("0008,103e", "LO", "Topogram 0.6 T20f"),
        ("0008,0008", "CS", "ORIGINAL\\PRIMARY\\LOCALIZER"))),
    Case("scout-many-images", CT_IMAGE, "CT", 12, False, (
        ("0018,0015", "CS", "CHEST"), ("0008,103e", "LO", "Scout"),
        ("0008,0008", "CS", "ORIGINAL\\PRIMARY\\LOCALIZER"))),
    Case("head", CT_IMAGE, "CT", 12, False, (
        ("0018,0015", "CS", "HEAD"), ("0008,103e", "LO", "Head 5mm"))),
    Case("head-no-bodypart", CT_IMAGE, "CT", 12, False, (
        ("0008,103e", "LO", "Brain 5mm H31s"), ("0008,1030", "LO", "CT HEAD W/O"))),
    Case("abdomen", CT_IMAGE, "CT", 12, False, (
        ("0018,0015", "CS", "ABDOMEN"), ("0008,103e", "LO", "Abdomen 3mm"))),
    Case("abdomen-no-bodypart", CT_IMAGE, "CT", 12, False, (
        ("0008,103e", "LO", "Abd/Pelvis 5mm"), ("0008,1030", "LO", "CT ABDOMEN PELVIS"))),
    Case("dose-report", DOSE_SR, "SR", 1, False, (
        ("0008,103e", "LO", "Dose Report"), ("0040,a040", "CS", "CONTAINER")), image=False),
    Case("dose-screen", SECONDARY_CAPTURE, "CT", 1, False, (
        ("0018,0015", "CS", "CHEST"), ("0008,103e", "LO", "Dose Info"),
        ("0008,0008", "CS", "DERIVED\\SECONDARY\\SCREEN SAVE"))),
    Case("mr-brain-t1", MR_IMAGE, "MR", 24, False, (
        ("0018,0015", "CS", "BRAIN"), ("0008,103e", "LO", "t1_mprage_sag"),
        ("0008,0008", "CS", "ORIGINAL\\PRIMARY\\M\\ND"), ("0018,0080", "DS", "2300"),
        ("0018,0081", "DS", "2.98")), brain=True),
    Case("mr-brain-flair", MR_IMAGE, "MR", 24, False, (
        ("0018,0015", "CS", "HEAD"), ("0008,103e", "LO", "t2_tirm_tra_dark-fluid"),
        ("0018,0082", "DS", "2500"))),
)  # fmt: skip


def _dump(case: Case, study: str, series: str, sop: str, number: int) -> str:
    lines = [
        f"(0008,0016) UI [{case.sop_class}]",
        f"(0008,0018) UI [{sop}]",
        f"(0008,0060) CS [{case.modality}]",
        "(0008,0020) DA [20261130]",
        "(0010,0010) PN [SENTINEL^ROUTING]",
        "(0010,0020) LO [SENTINEL-ID]",
        f"(0020,000d) UI [{study}]",
        f"(0020,000e) UI [{series}]",
        f"(0020,0013) IS [{number}]",
    ]
    lines += [f"({tag}) {vr} [{value}]" for tag, vr, value in case.attrs]
    if case.image:
        lines += [
            "(0028,0002) US 1",
            "(0028,0004) CS [MONOCHROME2]",
            "(0028,0010) US 2",
            "(0028,0011) US 2",
            "(0028,0100) US 16",
            "(0028,0101) US 12",
            "(0028,0102) US 11",
            "(0028,0103) US 0",
            f"(0020,0032) DS [0\\0\\{number}]",
            "(7fe0,0010) OW 0000\\0001\\0002\\0003",
        ]
    return "\n".join(sorted(lines)) + "\n"


def write_cases(folder: Path, cases: tuple[Case, ...] = CASES) -> dict[str, Case]:
    """Write every case as its own study and series; returns series UID → case."""
    dump2dcm = require("dump2dcm")
    by_series = {}
    for i, case in enumerate(cases, start=1):
        study, series = f"{ROOT}.{i}", f"{ROOT}.{i}.1"
        by_series[series] = case
        target = folder / case.name
        target.mkdir(parents=True)
        for n in range(1, case.instances + 1):
            dump = target / f"{n}.txt"
            dump.write_text(_dump(case, study, series, f"{series}.{n}", n))
            subprocess.run([dump2dcm, "-q", str(dump), str(target / f"{n}.dcm")], check=True)
            dump.unlink()
    return by_series
