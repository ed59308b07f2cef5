"""Every SEG and SR the lung pipeline writes passes dciodvfy and PixelMed with no Error.

dciodvfy (dicom3tools) checks the IODs; PixelMed's DicomInstanceValidator checks
the SEG and DicomSRValidator the SR against TID 1500 (the IHE Connectathon
checkers). A missing tool skips locally and fails with CI=true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipelines.lung import LungCT, measure_lungs
from pipelines.runner import encoded
from pipelines.uids import DerivedUids
from tests.support.compressed import SYNTAXES, convert
from tests.support.ct_series import (
    SeriesOptions,
    lung_phantom,
    make_ct_datasets,
    write_ct_series,
)
from tests.support.enhanced import FrameOptions, enhanced, highdicom_legacy
from tests.support.validators import dciodvfy, errors_in_seg, errors_in_sr, pixelmed

pytestmark = pytest.mark.integration

CASES: dict[str, dict[str, Any]] = {
    "two-lungs": {},
    "two-lungs-flipped": {"flip_x": True, "flip_y": True},
    "left-lung-only": {"drop_right": True},
    # Enhanced CT sources: frames referenced per SEG frame and in the SR
    "enhanced-ct-shuffled-frames": {"frames": FrameOptions(shuffle=True), "flip_y": True},
    "enhanced-ct-three-instances": {"frames": FrameOptions(instances=3, shuffle=True)},
    "highdicom-legacy-converted-ct": {"legacy": True, "flip_x": True},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    case: dict[str, Any] = dict(CASES[request.param])
    drop_right = case.pop("drop_right", False)
    frames = case.pop("frames", None)
    legacy = case.pop("legacy", False)
    hu, labels = lung_phantom()
    if drop_right:
        labels = np.where(labels == 2, 1, labels).astype(np.uint8)
    pipeline = LungCT()
    series = make_ct_datasets(hu, SeriesOptions(**case))
    sources = series.datasets if frames is None else enhanced(series.datasets, frames)
    folder = tmp_path_factory.mktemp(request.param)
    if legacy:  # a Legacy Converted Enhanced CT made by highdicom.legacy
        classic = write_ct_series(folder / "classic", hu, SeriesOptions(**case))
        sources = [pydicom.dcmread(highdicom_legacy(classic.paths, folder / "legacy.dcm"))]
    volume = pipeline.prepare(sources)
    uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)
    seg, sr = pipeline.encode(volume, measure_lungs(volume, labels), uids)
    paths = {"seg": folder / "seg.dcm", "sr": folder / "sr.dcm"}
    paths["seg"].write_bytes(encoded(seg))  # the bytes the worker writes
    paths["sr"].write_bytes(encoded(sr))
    return paths


def test_dciodvfy_finds_no_error(results: dict) -> None:
    for path in results.values():
        report = dciodvfy(path)
        assert not report.errors, report.text


def test_pixelmed_instance_validator_finds_no_error_in_the_seg(results: dict) -> None:
    report = pixelmed("DicomInstanceValidator", results["seg"])
    assert "IOD validation complete" in report.text, report.text
    assert not report.errors, report.text


def test_pixelmed_sr_validator_finds_no_error_in_the_tid1500_report(results: dict) -> None:
    report = pixelmed("DicomSRValidator", results["sr"])
    assert "Found Root Template TID_1500" in report.text, report.text
    assert not report.errors, report.text


def test_results_from_a_vendor_enhanced_ct_pass_both_validators(tmp_path: Path) -> None:
    """pydicom-data's eCT_Supplemental.dcm, an Enhanced CT from a scanner vendor (two
    frames, rows stored right to left): SEG and SR referencing its frames."""
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    pipeline = LungCT()
    volume = pipeline.prepare([ds])
    labels = np.ones(volume.voxels.shape, np.uint8)
    labels[:, 100:400, 60:250] = 2
    labels[:, 100:400, 270:450] = 3
    uids = DerivedUids([str(ds.SOPInstanceUID)], pipeline.spec.name, pipeline.spec.version)
    seg, sr = pipeline.encode(volume, measure_lungs(volume, labels), uids)
    (tmp_path / "seg.dcm").write_bytes(encoded(seg))
    (tmp_path / "sr.dcm").write_bytes(encoded(sr))

    assert errors_in_seg(tmp_path / "seg.dcm") == []
    assert errors_in_sr(tmp_path / "sr.dcm") == []
    numbers = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert numbers == {1, 2}


def test_seg_from_jpeg_2000_lossy_sources_names_the_method_and_passes(tmp_path: Path) -> None:
    """Sources made lossy by GDCM (``gdcmconv --j2k --lossy``), which writes Lossy Image
    Compression 01 and a ratio but no method: the SEG must still carry the method
    (Type 1C), here taken from the sources' transfer syntax."""
    hu, labels = lung_phantom()
    classic = write_ct_series(tmp_path / "classic", hu, SeriesOptions())
    lossy = next(s for s in SYNTAXES if s.name == "j2k-lossy")
    paths = [convert(lossy, p, tmp_path / "lossy" / p.name) for p in classic.paths]
    sources = [pydicom.dcmread(p) for p in paths]
    assert "LossyImageCompressionMethod" not in sources[0]
    pipeline = LungCT()
    volume = pipeline.prepare(sources)
    uids = DerivedUids(classic.sop_uids, pipeline.spec.name, pipeline.spec.version)
    seg, sr = pipeline.encode(volume, measure_lungs(volume, labels), uids)
    (tmp_path / "seg.dcm").write_bytes(encoded(seg))
    (tmp_path / "sr.dcm").write_bytes(encoded(sr))

    assert seg.LossyImageCompression == "01"
    assert seg.LossyImageCompressionMethod == "ISO_15444_1"
    assert errors_in_seg(tmp_path / "seg.dcm") == []
    assert errors_in_sr(tmp_path / "sr.dcm") == []
