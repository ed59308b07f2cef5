"""brain-t1 (a manifest pipeline) on the ITK T1 head as multi-frame MR: Enhanced MR
written by this repository (frames shuffled) and Legacy Converted Enhanced MR made by
PixelMed. Same brain as the classic series (Dice against the expert mask, SR volume),
SEG frames referencing the source frames, both validators clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipelines.registry import discover
from pipelines.runner import read_series, run_series
from pipelines.uids import DerivedUids
from tests.support import brain_mr
from tests.support.enhanced import FrameOptions, enhanced, pixelmed_legacy, write
from tests.support.lung_site import LungSite
from tests.support.peers import storescu
from tests.support.validators import errors_in_seg, errors_in_sr
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    # In process, or a node whose tables do what the classic brain series' do in
    # test_models_end_to_end, which runs on both engines.
    pytest.mark.one_engine("multi-frame decoding and routing are the same on both engines"),
]


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return discover().get("brain-t1")


@pytest.fixture(scope="module")
def model(pipeline: Any) -> Any:
    return pipeline.load_model()


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> brain_mr.BrainSeries:
    return brain_mr.brain_series_or_skip(tmp_path_factory.mktemp("brain") / "series")


def _enhanced_mr(brain: brain_mr.BrainSeries, folder: Path) -> list[Path]:
    return write(enhanced(read_series(brain.paths), FrameOptions(shuffle=True, seed=9)), folder)


def _pixelmed_legacy_mr(brain: brain_mr.BrainSeries, folder: Path) -> list[Path]:
    return pixelmed_legacy(brain.paths[0].parent, folder)


PRODUCERS = {"enhanced-mr-shuffled": _enhanced_mr, "pixelmed-legacy-mr": _pixelmed_legacy_mr}


def _masks_by_classic_instance(
    seg: Dataset, sources: list[Dataset], brain: brain_mr.BrainSeries
) -> dict[str, np.ndarray]:
    """SEG frames by the classic instance at the position of the source frame each
    one references."""
    classic = {
        tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 2)): str(ds.SOPInstanceUID)
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in brain.paths)
    }
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    masks = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        source = by_uid[str(ref.ReferencedSOPInstanceUID)]
        groups = source.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        where = groups.PlanePositionSequence[0].ImagePositionPatient
        masks[classic[tuple(np.round(np.asarray(where, float), 2))]] = frame > 0
    return masks


@pytest.mark.parametrize("producer", PRODUCERS.values(), ids=PRODUCERS.keys())
def test_multiframe_t1_head_gives_the_brain_with_frame_references(
    pipeline: Any, model: Any, brain: brain_mr.BrainSeries, tmp_path: Path, producer: Any
) -> None:
    files = producer(brain, tmp_path / "multiframe")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert [int(ds.NumberOfFrames) for ds in sources] == [len(brain.paths)]

    result = run_series(pipeline, model, files, DerivedUids([p.name for p in files],
                                                            "brain-t1", "1.0.0"))  # fmt: skip

    paths = {}
    for ds in result.datasets:
        paths[ds.Modality] = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(paths[ds.Modality], enforce_file_format=True)
    _check_results(paths, sources, brain)
    volume = result.prediction.found[0].volume_ml
    assert volume == pytest.approx(brain.volume_ml, rel=0.10)


def _check_results(
    paths: dict[str, Path], sources: list[Dataset], brain: brain_mr.BrainSeries
) -> None:
    """Both validators clean on the SEG and SR; the SEG's masks, mapped back to the
    classic slices, match the brain with Dice >= 0.90."""
    assert errors_in_seg(paths["SEG"]) == []
    assert errors_in_sr(paths["SR"]) == []
    seg = pydicom.dcmread(paths["SEG"])
    found = _masks_by_classic_instance(seg, sources, brain)
    empty = np.zeros_like(next(iter(brain.masks.values())))
    got = np.stack([found.get(uid, empty) for uid in brain.masks])
    assert brain_mr.dice(got, np.stack(list(brain.masks.values()))) >= 0.90


def test_a_node_routes_an_enhanced_mr_head_to_brain_t1_and_delivers_seg_and_sr(
    lung_site: LungSite, brain: brain_mr.BrainSeries, tmp_path: Path
) -> None:
    """One Enhanced MR instance sent by storescu to a node on the shipped config.yaml
    (the shared end-to-end site): the t1-brain-mr rule picks it (SOP class,
    NumberOfFrames), the results reach the archive and pass both validators."""
    files = _enhanced_mr(brain, tmp_path / "multiframe")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    archive, node = lung_site.archive, lung_site.node
    study = str(sources[0].StudyInstanceUID)
    assert storescu(node.port, files, extra=["-R"]).returncode == 0
    ids = wait_for(lambda: archive.result_ids(study), 300,
                   "SEG and SR in Orthanc", poll=1.0)  # fmt: skip
    paths = {m: tmp_path / f"{m}.dcm" for m in ids}
    for modality, path in paths.items():
        path.write_bytes(archive.file(ids[modality]))
    _check_results(paths, sources, brain)
    [job] = lung_site.jobs_of(study, node.status())
    assert job["pipeline"] == "brain-t1" and job["state"] == "done"
