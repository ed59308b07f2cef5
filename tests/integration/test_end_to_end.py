"""Chest CT in, SEG + SR back in the archive: the whole node on real peers.

Orthanc plays the hospital PACS: it holds the study, pushes it to the node by
C-STORE, and receives the results as the node's ``archive`` destination. The
node runs from the shipped config.yaml with only contract keys changed (and one rule
for the series the pipeline cannot use); the tests that do not stop or reconfigure it
share it (``lung_site``, tests/support/lung_site.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.support.compressed import SYNTAXES, convert
from tests.support.ct_series import SENTINEL_PATIENT, SeriesOptions, write_ct_series
from tests.support.lung_site import UNUSABLE, LungSite, shipped_config
from tests.support.peers import NodeProcess, Redis, Storescp, stop_together, storescu
from tests.support.phantom import make_chest_phantom
from tests.support.results import LEFT_LUNG, RIGHT_LUNG, dice, seg_labels, sr_measurements
from tests.support.validators import errors_in_seg, errors_in_sr
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def phantom():
    return make_chest_phantom((60, 384, 384), (2.5, 0.9, 0.9), seed=11)


def check_results(seg_path: Path, sr_path: Path, series: Any, phantom: Any) -> None:
    assert errors_in_seg(seg_path) == []
    assert errors_in_sr(sr_path) == []
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    for result in (seg, sr):
        assert result.StudyInstanceUID == series.study_uid
        assert result.SeriesInstanceUID != series.series_uid
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
    labels = seg_labels(seg, series.sop_uids)
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    found = sr_measurements(sr)
    for label, name in ((2, "Right lung"), (3, "Left lung")):
        assert dice(labels == label, phantom.truth == label) >= 0.95, name
        volume, unit = found[name]["Volume"]
        truth_ml = float((phantom.truth == label).sum()) * voxel_ml
        assert unit in ("ml", "cm3")
        assert abs(volume - truth_ml) / truth_ml < 0.05, (name, volume, truth_ml)
    codes = {str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence}
    assert codes == {RIGHT_LUNG, LEFT_LUNG}


def assert_valid(paths: list[Path]) -> None:
    """dciodvfy and PixelMed find no error in any SEG or SR the node delivered."""
    for path in paths:
        modality = str(pydicom.dcmread(path, stop_before_pixels=True).Modality)
        errors = errors_in_seg(path) if modality == "SEG" else errors_in_sr(path)
        assert errors == [], (path.name, errors)


@pytest.mark.parametrize(
    "syntax",
    [
        pytest.param(None, id="uncompressed"),
        pytest.param(
            SYNTAXES[7],
            id="jpeg-ls-lossless",
            marks=pytest.mark.one_engine("what it adds, decoding JPEG-LS, is the pipeline's"),
        ),
    ],
)
def test_orthanc_pushes_a_chest_ct_and_gets_seg_and_sr_back(
    lung_site: LungSite, tmp_path: Path, phantom: Any, syntax: Any
) -> None:
    """``syntax``: the PACS holds the study compressed and, like many, never
    transcodes: the node receives it as it is and the pipeline decodes it."""
    archive, node = lung_site.archive, lung_site.node
    sent = lung_site.sent()
    series = write_ct_series(tmp_path / "ct", phantom.hu, SeriesOptions(spacing=phantom.spacing))
    files = series.paths
    if syntax is not None:
        files = [convert(syntax, p, tmp_path / "stored" / p.name) for p in series.paths]
    uploaded = [archive.upload(p) for p in files]
    archive.push("node", uploaded[0]["ParentStudy"])
    ids = wait_for(lambda: archive.result_ids(series.study_uid), 240,
                   "SEG and SR in Orthanc", poll=1.0)  # fmt: skip
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_path.write_bytes(archive.file(ids["SEG"]))
    sr_path.write_bytes(archive.file(ids["SR"]))
    check_results(seg_path, sr_path, series, phantom)
    [job] = lung_site.jobs_of(series.study_uid, node.status())
    assert job["state"] == "done" and set(job["timings"]) >= {"load", "infer", "encode"}
    node.wait_status(lambda s: s["outbox"] == {"sent": sent + 2}, 30, "outbox to drain")
    log = node.log()
    assert all(value not in log for value in SENTINEL_PATIENT.values())


@pytest.mark.one_engine("Redis mode's job table runs on PostgreSQL in test_faults")
def test_redis_mode_runs_inference_in_separate_worker_processes(tmp_path, phantom):
    redis = Redis(tmp_path / "redis").start()
    archive = Storescp(tmp_path / "archive").start()
    config = shipped_config(archive.aet, archive.port)
    config["broker"] = {"url": redis.url}
    node = NodeProcess(tmp_path / "node", config)
    worker = NodeProcess(tmp_path / "node", config, command="worker", port=node.port)
    try:
        node.start()
        assert "embedded worker" not in node.log()
        worker.start()
        series = write_ct_series(
            tmp_path / "ct", phantom.hu, SeriesOptions(spacing=phantom.spacing)
        )
        assert storescu(node.port, series.paths).returncode == 0
        wait_for(lambda: len(archive.files()) >= 2, 240, "SEG and SR at storescp", poll=1.0)
        by_modality = {str(pydicom.dcmread(p).Modality): p for p in archive.files()}
        check_results(by_modality["SEG"], by_modality["SR"], series, phantom)
        assert "loaded model" in worker.log()
    finally:
        codes = stop_together(node, worker)
        archive.stop()
        redis.stop()
    assert codes[0] == 0, node.log()


def test_series_the_pipeline_cannot_use_end_skipped_with_a_reason(
    lung_site: LungSite, tmp_path: Path, phantom: Any
) -> None:
    """An MR series and a one-slice CT, which a rule sends to lung-ct: both jobs end
    skipped with a reason, nothing reaches the archive, and the node keeps serving."""
    node = lung_site.node
    mr = write_ct_series(
        tmp_path / "mr",
        phantom.hu[::10],
        SeriesOptions(spacing=(25.0, *phantom.spacing[1:]), series_description=UNUSABLE),
    )
    for path in mr.paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    one = write_ct_series(
        tmp_path / "one",
        phantom.hu[30:31],
        SeriesOptions(spacing=phantom.spacing, series_description=UNUSABLE),
    )
    assert storescu(node.port, [*mr.paths, *one.paths]).returncode == 0

    def skipped(status: dict[str, Any]) -> bool:
        jobs = lung_site.jobs_of(mr.study_uid, status) + lung_site.jobs_of(one.study_uid, status)
        return len(jobs) == 2 and all(j["state"] == "skipped" for j in jobs)

    status = node.wait_status(skipped, 120, "two skipped jobs")
    jobs = lung_site.jobs_of(mr.study_uid, status) + lung_site.jobs_of(one.study_uid, status)
    reasons = sorted(j["reason"] for j in jobs)
    assert any("(0008,0060) Modality" in r and "MR" in r for r in reasons), reasons
    assert any("slice" in r or "instance" in r for r in reasons), reasons
    for study in (mr.study_uid, one.study_uid):
        assert lung_site.archive.result_counts(study) == {}
    assert storescu(node.port, one.paths).returncode == 0, "the node keeps serving"


def test_node_killed_mid_job_comes_back_and_still_delivers(tmp_path, phantom):
    """SIGKILL the node while its job runs: the restarted node stops the orphaned
    worker, finds the job unfinished or finished, and the results still arrive once."""
    archive = Storescp(tmp_path / "archive").start()
    node = NodeProcess(tmp_path / "node", shipped_config(archive.aet, archive.port)).start()
    try:
        series = write_ct_series(
            tmp_path / "ct", phantom.hu, SeriesOptions(spacing=phantom.spacing)
        )
        assert storescu(node.port, series.paths).returncode == 0
        wait_for(lambda: "job 1 queued" in node.log(), 60, "the job to be queued")
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()
        node.start()
        wait_for(lambda: "left by an earlier run" in node.log(), 60, "the orphan to be stopped")
        wait_for(lambda: len(archive.files()) >= 2, 240, "SEG and SR at the archive", poll=0.5)
        status = node.wait_status(lambda s: s["outbox"] == {"sent": 2}, 60, "outbox to drain")
        assert status["jobs"] == {"done": 1}
        modalities = sorted(str(pydicom.dcmread(p).Modality) for p in archive.files())
        assert modalities in (["SEG", "SR"], ["SEG", "SEG", "SR", "SR"])
        uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in archive.files()}
        assert len(uids) == 2, "a re-run writes the same UIDs: the archive sees no duplicates"
        assert_valid(archive.files())
    finally:
        code = node.stop()
        archive.stop()
    assert code == 0, node.log()
