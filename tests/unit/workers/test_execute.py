"""The worker's job runner on real files, without a broker: outcomes, idempotency, locks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.jobspec import OUTCOME, OUTPUTS, STARTED, JobOutcome, JobRequest
from dicom_node.settings import Settings
from tests.support.ct_series import SeriesOptions, write_ct_series
from workers.execute import execute
from workers.models import ModelCache


class CountingCache(ModelCache):
    """The real cache, counting loads (the pipeline's own load_model runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def get(self, pipeline):  # type: ignore[no-untyped-def]
        before = len(self._models)
        model = super().get(pipeline)
        self.loads += len(self._models) - before
        return model


@pytest.fixture(scope="module")
def cache() -> CountingCache:
    return CountingCache()


def request_for(tmp_path: Path, hu: np.ndarray, pipeline: str = "lung-ct", **opts) -> JobRequest:
    series = write_ct_series(tmp_path / "spool", hu, SeriesOptions(**opts))
    return JobRequest(
        job_id=7,
        pipeline=pipeline,
        inputs=[str(p.relative_to(tmp_path)) for p in series.paths],
        work_dir="work/7",
        uid_root="1.2.826.0.1.3680043.8.498.",
    )


def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"storage": {"dir": str(tmp_path)}})


def small_chest() -> np.ndarray:
    from tests.support.phantom import make_chest_phantom

    return make_chest_phantom((24, 192, 192), (5.0, 1.2, 1.2), body_scale=0.55, seed=3).hu


def test_done_job_writes_seg_and_sr_then_the_outcome(tmp_path, cache):
    req = request_for(tmp_path, small_chest(), spacing=(5.0, 1.2, 1.2))
    outcome = execute(req, settings(tmp_path), cache, final_attempt=False)
    assert outcome is not None and outcome.status == "done", outcome
    work = tmp_path / "work/7"
    modalities = sorted(pydicom.dcmread(work / OUTPUTS / n).Modality for n in outcome.outputs)
    assert modalities == ["SEG", "SR"]
    assert JobOutcome.read(work) == outcome
    assert set(outcome.timings) >= {"load", "infer", "encode", "write"}
    assert set(outcome.summary) >= {"right", "left", "peak_rss_mb"}
    assert (work / STARTED).exists()


def test_model_is_loaded_once_per_process(tmp_path, cache):
    for n in range(2):
        req = request_for(tmp_path / str(n), small_chest(), spacing=(5.0, 1.2, 1.2))
        execute(req, settings(tmp_path / str(n)), cache, final_attempt=False)
    assert cache.loads == 1


def test_redelivered_job_with_an_outcome_is_not_run_again(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    work = tmp_path / "work/7"
    work.mkdir(parents=True)
    JobOutcome("skipped", "earlier run").write(work)
    assert execute(req, settings(tmp_path), cache, final_attempt=False) is None
    assert JobOutcome.read(work).reason == "earlier run"


def test_job_held_by_another_worker_is_left_to_it(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    work = tmp_path / "work/7"
    work.mkdir(parents=True)
    fd = os.open(work / "lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert execute(req, settings(tmp_path), cache, final_attempt=False) is None
        assert not (work / OUTCOME).exists()
    finally:
        os.close(fd)


def test_series_without_lungs_is_skipped_with_a_reason(tmp_path, cache):
    hu = np.full((4, 64, 64), -1000, np.int16)
    hu[:, 8:56, 8:56] = 40  # a block of soft tissue: a body with no lung
    outcome = execute(request_for(tmp_path, hu), settings(tmp_path), cache, final_attempt=False)
    assert outcome.status == "skipped"
    assert "no lung found" in outcome.reason


def test_unknown_pipeline_fails_with_a_reason(tmp_path, cache):
    req = request_for(tmp_path, np.zeros((2, 8, 8), np.int16), pipeline="liver-mr")
    outcome = execute(req, settings(tmp_path), cache, final_attempt=False)
    assert (outcome.status, outcome.reason) == ("failed", "unknown pipeline 'liver-mr'")


def test_missing_input_file_is_transient_until_the_last_attempt(tmp_path, cache):
    from workers.execute import TransientError

    req = request_for(tmp_path, np.zeros((3, 8, 8), np.int16))
    (tmp_path / req.inputs[0]).unlink()
    with pytest.raises(TransientError, match="FileNotFoundError"):
        execute(req, settings(tmp_path), cache, final_attempt=False)
    outcome = execute(req, settings(tmp_path), cache, final_attempt=True)
    assert outcome.status == "failed" and "FileNotFoundError" in outcome.reason
