"""Multi-frame studies in, SEG + SR back in the archive: the whole node on real peers.

dcmtk's ``storescu`` sends a chest phantom as multi-frame images to the node (run
from the shipped config.yaml); the node routes it to lung-ct like a classic series
and stores the SEG and SR in Orthanc, its ``archive``. The results must pass both
validators, reference the source frames, and give lungs within Dice 0.95 of the
phantom's truth.

Producers: this repository's Enhanced CT writer (frames stored shuffled), and
PixelMed's MultiFrameImageFactory (Legacy Converted Enhanced CT) re-encoded as
JPEG-LS lossless by dcmtk's ``dcmcjpls``, the way an archive may hold it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support.compressed import SYNTAXES, convert
from tests.support.ct_series import (
    SENTINEL_PATIENT,
    SeriesOptions,
    lung_phantom,
    make_ct_datasets,
    write_ct_series,
)
from tests.support.enhanced import FrameOptions, enhanced, pixelmed_legacy, write
from tests.support.lung_site import LungSite
from tests.support.peers import storescu
from tests.support.phantom import make_chest_phantom
from tests.support.results import LABEL_OF_CODE, dice, sr_measurements
from tests.support.validators import errors_in_seg, errors_in_sr
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

JPEG_LS_LOSSLESS = next(s for s in SYNTAXES if s.name == "jpeg-ls-lossless")


@pytest.fixture(scope="module")
def phantom() -> Any:
    return make_chest_phantom((60, 384, 384), (2.5, 0.9, 0.9), seed=11)


def _enhanced_ct(classic: Path, folder: Path) -> list[Path]:
    slices = [pydicom.dcmread(p) for p in sorted(classic.iterdir())]
    return write(enhanced(slices, FrameOptions(shuffle=True, seed=3)), folder)


def _pixelmed_jpeg_ls(classic: Path, folder: Path) -> list[Path]:
    made = pixelmed_legacy(classic, folder / "pixelmed")
    return [convert(JPEG_LS_LOSSLESS, p, folder / "jpeg-ls" / f"{p.name}.dcm") for p in made]


# How storescu proposes each: -R, only the files' own SOP classes (its default list lacks
# the Legacy Converted ones); -xt, JPEG-LS lossless (else it offers uncompressed only).
PRODUCERS = {
    "enhanced-ct-shuffled": (_enhanced_ct, ["-R"]),
    "pixelmed-legacy-jpeg-ls": (_pixelmed_jpeg_ls, ["-R", "-xt"]),
}


def _frame_z(source: Dataset, number: int, z0: float, dz: float) -> int:
    groups = source.PerFrameFunctionalGroupsSequence[number - 1]
    z = float(groups.PlanePositionSequence[0].ImagePositionPatient[2])
    return int(round((z - z0) / dz))


def seg_labels_by_frame(seg: Dataset, sources: list[Dataset], shape: Any, z0: float, dz: float):
    """(z, y, x) labels (2 right, 3 left) read back through the SEG's references to
    the source frames, each frame placed at its source frame's position."""
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    labels = np.zeros(shape, np.uint8)
    for source in sources:
        numbers = list(range(1, int(source.NumberOfFrames) + 1))
        pixels = segmentation.get_pixels_by_source_frame(
            str(source.SOPInstanceUID), numbers, combine_segments=True,
            assert_missing_frames_are_empty=True,
        )  # fmt: skip
        for index, number in enumerate(numbers):
            z = _frame_z(source, number, z0, dz)
            for item in segmentation.SegmentSequence:
                code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
                labels[z][pixels[index] == item.SegmentNumber] = LABEL_OF_CODE[code]
    return labels


# The tables see a multi-frame instance as any other: the skipped multi-frame series
# below and the classic series of test_end_to_end run on both engines.
@pytest.mark.one_engine("frames are decoded and referenced by the pipeline")
@pytest.mark.parametrize("producer", PRODUCERS.values(), ids=PRODUCERS.keys())
def test_multiframe_chest_ct_sent_by_storescu_gets_seg_and_sr_in_the_archive(
    lung_site: LungSite, tmp_path: Path, phantom: Any, producer: Any
) -> None:
    make, proposal = producer
    series = write_ct_series(tmp_path / "classic", phantom.hu,
                             SeriesOptions(spacing=phantom.spacing))  # fmt: skip
    files = make(tmp_path / "classic", tmp_path / "multiframe")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert all(int(ds.NumberOfFrames) > 1 for ds in sources)
    archive, node = lung_site.archive, lung_site.node
    before = lung_site.sent()
    sent = storescu(node.port, files, extra=proposal)
    assert sent.returncode == 0, sent.stderr
    ids = wait_for(lambda: archive.result_ids(series.study_uid), 300,
                   "SEG and SR in Orthanc", poll=1.0)  # fmt: skip
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_path.write_bytes(archive.file(ids["SEG"]))
    sr_path.write_bytes(archive.file(ids["SR"]))
    assert errors_in_seg(seg_path) == []
    assert errors_in_sr(sr_path) == []
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    assert {str(i.ReferencedSOPInstanceUID) for i in seg.SourceImageSequence} == {
        str(ds.SOPInstanceUID) for ds in sources
    }
    z0, dz = -300.0, phantom.spacing[0]  # SeriesOptions' origin and spacing
    labels = seg_labels_by_frame(seg, sources, phantom.truth.shape, z0, dz)
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    found = sr_measurements(sr)
    for label, name in ((2, "Right lung"), (3, "Left lung")):
        assert dice(labels == label, phantom.truth == label) >= 0.95, name
        truth_ml = float((phantom.truth == label).sum()) * voxel_ml
        assert abs(found[name]["Volume"][0] - truth_ml) / truth_ml < 0.05, name
    [job] = lung_site.jobs_of(series.study_uid, node.status())
    assert job["state"] == "done"
    node.wait_status(lambda s: s["outbox"] == {"sent": before + 2}, 60, "outbox to drain")
    log = node.log()
    assert all(value not in log for value in SENTINEL_PATIENT.values())


def test_a_multiframe_series_that_cannot_form_a_volume_is_skipped_with_a_reason(
    lung_site: LungSite, tmp_path: Path
) -> None:
    """Two frames at one position: the job ends skipped, the reason names the
    attribute, its tag and the frames; no patient value in the reason or the log."""
    hu, _ = lung_phantom((12, 40, 48))
    [ds] = enhanced(make_ct_datasets(hu).datasets)
    groups = ds.PerFrameFunctionalGroupsSequence
    groups[7].PlanePositionSequence = copy.deepcopy(groups[6].PlanePositionSequence)
    files = write([ds], tmp_path / "multiframe")
    node = lung_site.node
    study = str(ds.StudyInstanceUID)
    assert storescu(node.port, files, extra=["-R"]).returncode == 0

    def skipped(status: dict[str, Any]) -> bool:
        jobs = lung_site.jobs_of(study, status)
        return len(jobs) == 1 and jobs[0]["state"] == "skipped"

    status = node.wait_status(skipped, 240, "a skipped job")
    [job] = lung_site.jobs_of(study, status)
    assert "(0020,9113) PlanePositionSequence > (0020,0032) ImagePositionPatient is the " \
        "same for frame 7 and frame 8; duplicate slices" in job["reason"]  # fmt: skip
    assert lung_site.archive.result_counts(study) == {}
    log = node.log() + job["reason"]
    assert all(value not in log for value in SENTINEL_PATIENT.values())
