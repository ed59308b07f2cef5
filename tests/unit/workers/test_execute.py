"""The worker's job runner on real files, without a broker: outcomes, no-ops, locks, claims."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.jobspec import JobRequest
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.phantom import Phantom, small_chest
from tests.support.validators import errors_in_seg, errors_in_sr
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
    """A job with its work folder opened by "the node" (ticket 1), as the dispatcher does."""
    series = write_ct_series(tmp_path / "spool" / "1.2" / "1.2.3", hu, SeriesOptions(**opts))
    Spool(tmp_path).job_folder(7).open_ticket(1)
    return JobRequest(
        job_id=7,
        ticket=1,
        pipeline=pipeline,
        inputs=[str(p.relative_to(tmp_path)) for p in series.paths],
        uid_root="1.2.826.0.1.3680043.8.498.",
        max_attempts=3,
    )


def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"storage": {"dir": str(tmp_path)}})


@functools.cache
def chest() -> Phantom:
    """One small chest for the module (read only): results are counted, not checked."""
    return small_chest()


def test_done_job_writes_seg_and_sr_then_the_outcome(tmp_path, cache):
    req = request_for(tmp_path, chest().hu, spacing=chest().spacing)
    outcome = execute(req, settings(tmp_path), cache)
    assert outcome is not None and outcome.status == "done", outcome
    folder = Spool(tmp_path).job_folder(7)
    modalities = sorted(pydicom.dcmread(folder.result(1, n)).Modality for n in outcome.outputs)
    assert modalities == ["SEG", "SR"]
    report = folder.report(1)
    assert report.outcome == outcome and report.claims == 1 and report.beat is not None
    assert set(outcome.timings) >= {"load", "infer", "encode", "write"}
    assert set(outcome.summary) >= {"right", "left", "peak_rss_mb"}


def test_model_is_loaded_once_per_process(tmp_path, cache):
    for n in range(2):
        req = request_for(tmp_path / str(n), chest().hu, spacing=chest().spacing)
        execute(req, settings(tmp_path / str(n)), cache)
    assert cache.loads == 1


def test_message_for_an_ended_job_is_a_no_op_that_leaves_nothing(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    Spool(tmp_path).job_folder(7).remove()
    assert execute(req, settings(tmp_path), cache) is None
    assert list((tmp_path / "work").iterdir()) == []


def test_message_for_a_superseded_ticket_is_a_no_op(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    Spool(tmp_path).job_folder(7).open_ticket(2)
    assert execute(req, settings(tmp_path), cache) is None
    assert Spool(tmp_path).job_folder(7).claims() == 0


def test_ticket_held_by_another_delivery_is_left_to_it(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    ticket = Spool(tmp_path).job_folder(7).ticket(1)
    fd = os.open(ticket.path / "lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert execute(req, settings(tmp_path), cache) is None
        assert not ticket.has_outcome() and ticket.job.claims() == 0
    finally:
        os.close(fd)


def test_no_delivery_starts_once_the_attempts_are_spent(tmp_path, cache):
    req = request_for(tmp_path, np.full((3, 16, 16), -1000, np.int16))
    ticket = Spool(tmp_path).job_folder(7).ticket(1)
    for n in range(3):
        ticket.claim(f"dead-worker-{n}")
    assert execute(req, settings(tmp_path), cache) is None
    assert ticket.job.claims() == 3 and not ticket.has_outcome()


def test_series_without_lungs_is_skipped_with_a_reason(tmp_path, cache):
    hu = np.full((4, 64, 64), -1000, np.int16)
    hu[:, 8:56, 8:56] = 40  # a block of soft tissue: a body with no lung
    outcome = execute(request_for(tmp_path, hu), settings(tmp_path), cache)
    assert outcome.status == "skipped"
    assert "no lung found" in outcome.reason


def test_unknown_pipeline_fails_with_a_reason(tmp_path, cache):
    req = request_for(tmp_path, np.zeros((2, 8, 8), np.int16), pipeline="liver-mr")
    outcome = execute(req, settings(tmp_path), cache)
    assert (outcome.status, outcome.reason) == ("failed", "unknown pipeline 'liver-mr'")


def test_input_outside_the_spool_is_refused(tmp_path, cache):
    req = request_for(tmp_path, np.zeros((2, 8, 8), np.int16))
    for ticket, bad in enumerate(("/etc/passwd", "spool/../node.sqlite", "work/7/t1/lock"), 2):
        Spool(tmp_path).job_folder(7).open_ticket(ticket)  # as the node would for a new try
        message = dataclasses.replace(req, inputs=[bad], ticket=ticket, max_attempts=9)
        outcome = execute(message, settings(tmp_path), cache)
        assert outcome.status == "failed" and "inside storage.dir/spool" in outcome.reason


def test_missing_input_file_asks_the_node_to_retry(tmp_path, cache):
    req = request_for(tmp_path, np.zeros((3, 8, 8), np.int16))
    (tmp_path / req.inputs[0]).unlink()
    outcome = execute(req, settings(tmp_path), cache)
    assert (outcome.status, outcome.reason) == (
        "retry", "a file could not be read or written (FileNotFoundError)")  # fmt: skip


def test_malformed_demographics_are_left_out_and_never_fail_the_job(tmp_path, cache):
    req = request_for(tmp_path, chest().hu, spacing=chest().spacing)
    for path in req.inputs:
        ds = pydicom.dcmread(tmp_path / path)
        ds.PatientBirthDate = "1970-01-01"
        ds.PatientSex = "m"
        ds.PatientAge = "45"
        ds.StudyDate = "2024/03/05"
        ds.PatientName = "SENTINEL^\x07BELL\x1b"
        ds.save_as(tmp_path / path)
    outcome = execute(req, settings(tmp_path), cache)
    assert outcome is not None and outcome.status == "done", outcome
    folder = Spool(tmp_path).job_folder(7)
    for name in outcome.outputs:
        result = pydicom.dcmread(folder.result(1, name))
        assert result.PatientBirthDate == "" and result.PatientSex == ""
        assert result.StudyDate == "" and str(result.PatientName) == ""
        assert result.PatientID == pydicom.dcmread(tmp_path / req.inputs[0]).PatientID
        path = folder.result(1, name)
        errors = errors_in_seg(path) if result.Modality == "SEG" else errors_in_sr(path)
        assert errors == [], errors


def test_a_series_holding_another_patients_slices_gets_no_result(tmp_path, cache):
    # A sender reused a Series Instance UID under another study and patient: the
    # index files both under one series; one volume of two patients must not come back.
    req = request_for(tmp_path, chest().hu, spacing=chest().spacing)
    for path in req.inputs[len(req.inputs) // 2 :]:
        ds = pydicom.dcmread(tmp_path / path)
        ds.PatientID = "SENTINEL-OTHER-PATIENT"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
        ds.save_as(tmp_path / path)
    outcome = execute(req, settings(tmp_path), cache)
    assert outcome is not None and outcome.status == "skipped", outcome
    assert "(0010,0020) PatientID differs between instances" in outcome.reason
    assert "SENTINEL" not in outcome.reason and not outcome.outputs


def test_a_source_without_patient_and_study_type2_attributes_still_gets_results(tmp_path, cache):
    req = request_for(tmp_path, chest().hu, spacing=chest().spacing)
    for path in req.inputs:
        ds = pydicom.dcmread(tmp_path / path)
        for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                        "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                        "ReferringPhysicianName"):  # fmt: skip
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(tmp_path / path)
    outcome = execute(req, settings(tmp_path), cache)
    assert outcome is not None and outcome.status == "done", outcome
    folder = Spool(tmp_path).job_folder(7)
    for name in outcome.outputs:
        path = folder.result(1, name)
        result = pydicom.dcmread(path)
        assert result.PatientID == "" and str(result.PatientName) == ""
        errors = errors_in_seg(path) if result.Modality == "SEG" else errors_in_sr(path)
        assert errors == [], errors


def test_run_parameters_a_pipeline_does_not_take_fail_the_job_with_a_reason(tmp_path, cache):
    req = dataclasses.replace(request_for(tmp_path, chest().hu, spacing=chest().spacing),
                              parameters={"threshold": 0.8})  # fmt: skip
    outcome = execute(req, settings(tmp_path), cache)
    assert outcome is not None and outcome.status == "failed"
    assert outcome.reason == "pipeline lung-ct takes no run parameters (its inference is code)"


def test_a_job_runs_with_automatic_collection_paused_and_collects_once_after(tmp_path, cache):
    import gc
    import weakref

    from workers.execute import collection_deferred

    seen: list[bool] = []

    def pipeline():  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return cache.catalog.get("lung-ct")

    request = request_for(tmp_path, chest().hu, spacing=chest().spacing)
    outcome = execute(dataclasses.replace(request, pipeline="watched"), settings(tmp_path), cache,
                      {"watched": pipeline})  # fmt: skip
    assert outcome is not None and outcome.status == "done"
    assert seen == [False] and gc.isenabled()

    class Cycle:
        pass

    with collection_deferred():
        cycle = Cycle()
        cycle.me = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None  # not collected while the job runs
    assert gone() is None  # the collection after it found it
    gc.disable()
    try:
        with collection_deferred():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()
