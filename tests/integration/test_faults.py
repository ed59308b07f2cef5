"""Faults injected while studies are in flight: real Redis, real worker processes, real
Orthanc as the archive, the node in Redis mode with two separate workers on one queue.

Every scenario ends with exactly one SEG and one SR per processed study in the
archive, every job in an ended state, no work folder left, and no patient value
in any log line, job reason or status output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery import Celery

from tests.support.ct_series import SENTINEL_PATIENT, SeriesOptions, write_ct_series
from tests.support.fault_pipelines import LEAKY_MESSAGE
from tests.support.peers import (
    NodeProcess,
    Orthanc,
    Redis,
    Storescp,
    require,
    stop_together,
    storescu,
)
from tests.support.phantom import small_chest
from tests.support.wait import wait_for

ENDED = {"done", "skipped", "failed"}
SENTINELS = [*SENTINEL_PATIENT.values(), "1970-01-01", "\x07BELL", "\\x07BELL", "SENTINEL^"]


def config(
    archive_aet: str, archive_port: int, redis_url: str, time_limit: float = 90, attempts: int = 3
) -> dict[str, Any]:
    def rule(name: str, description: str, pipeline: str) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"Modality": "CT", "SeriesDescription": description},
            "pipeline": pipeline,
            "destinations": ["archive"],
        }

    return {
        "node": {"stable_after_seconds": 1},
        "storage": {"dir": "var"},
        "broker": {"url": redis_url},
        "workers": {
            "heartbeat_seconds": 0.5,
            "lease_seconds": 5,
            "requeue_after_seconds": 6,
            "max_attempts": attempts,
            "task_time_limit_seconds": time_limit,  # a cold model load on a busy machine fits
        },
        # Quick retries, and enough of them (~30 min) that an archive outage of a
        # loaded test machine never runs out of attempts (dead-lettering has its test).
        "send": {"initial_backoff_seconds": 1, "max_backoff_seconds": 2, "max_attempts": 1000},
        "destinations": {
            "archive": {"ae_title": archive_aet, "host": "127.0.0.1", "port": archive_port}
        },  # fmt: skip
        "rules": [
            rule("normal", "NORMAL.*", "lung-ct"),
            rule("slow", "SLOW.*", "slow-lung"),
            rule("raise", "RAISE.*", "fault-raise"),
            rule("hang", "HANG.*", "fault-hang"),
            rule("abort", "ABORT.*", "fault-abort"),
        ],
    }


@dataclass
class Site:
    folder: Path
    redis: Redis
    archive: Orthanc
    node: NodeProcess
    workers: list[NodeProcess]
    hu: np.ndarray
    spacing: tuple[float, float, float]
    count: int = 0

    def push(self, description: str, patient: dict[str, str] | None = None) -> str:
        """Write a small chest CT and store it at the node with storescu; its study UID."""
        self.count += 1
        options = SeriesOptions(spacing=self.spacing, series_description=description)
        if patient is not None:
            options.patient = patient
        series = write_ct_series(self.folder / f"study-{self.count}", self.hu, options)
        sent = storescu(self.node.port, series.paths)
        assert sent.returncode == 0, sent.stderr
        return series.study_uid

    def job_of(self, study_uid: str, status: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The study's job in ``status`` (default: the status command's output)."""
        jobs = (status or self.node.status(limit=200))["recent_jobs"]
        series = {j["series_uid"]: j for j in jobs}
        found = [j for j in series.values() if j.get("study_uid") == study_uid]
        return found[0] if found else None

    def ended(self, study_uid: str, timeout: float = 120) -> dict[str, Any]:
        def check(status: dict[str, Any]) -> bool:
            job = self.job_of(study_uid, status)
            return job is not None and job["state"] in ENDED

        status = self.node.wait_status(check, timeout, f"the job of study {study_uid} to end",
                                       limit=200)  # fmt: skip
        job = self.job_of(study_uid, status)
        assert job is not None
        return job

    def results(self, study_uid: str) -> dict[str, int]:
        return self.archive.result_counts(study_uid)

    def one_seg_and_sr(self, study_uid: str, timeout: float = 60) -> None:
        wait_for(lambda: self.results(study_uid) == {"SEG": 1, "SR": 1}, timeout,
                 f"one SEG and one SR of study {study_uid} in Orthanc", poll=0.5)  # fmt: skip

    def work_folders(self) -> list[str]:
        work = self.node.folder / "var" / "work"
        return sorted(p.name for p in work.iterdir()) if work.exists() else []

    def running_pid(self, study_uid: str) -> int:
        """The worker process running the study's job, from its claim in the work folder."""

        def claim() -> int | None:
            job = self.job_of(study_uid, self.node.snapshot(limit=200))
            if job is None or job["state"] != "running":
                return None
            folder = self.node.folder / "var/work" / str(job["id"]) / "claims"
            try:
                claims = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
            except FileNotFoundError:  # the job ended between the status and the look
                return None
            if not claims:
                return None
            found = re.fullmatch(r"t[0-9]+\.(.*)-([0-9]+)\.[0-9]+", claims[-1].name)
            return int(found.group(2)) if found else None

        return wait_for(claim, 120, f"a worker to run study {study_uid}", poll=0.2)

    def logs(self) -> str:
        return self.node.log() + "".join(w.log() for w in self.workers)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, node_database: str) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("faults")
    phantom = small_chest()
    redis = Redis(folder / "redis").start()
    archive = Orthanc(folder / "orthanc").start()
    settings = config(archive.aet, archive.dicom_port, redis.url)
    node = NodeProcess(folder / "node", settings, module="tests.support.fault_node")
    workers = [
        NodeProcess(folder / "node", settings, command="worker", port=node.port,
                    module="tests.support.fault_node", log_name=f"worker-{n}.log")
        for n in (1, 2)
    ]  # fmt: skip
    site = Site(folder, redis, archive, node, workers, phantom.hu, phantom.spacing)
    try:
        node.start()
        for worker in workers:
            worker.start()
        yield site
    finally:
        stop_together(*workers, node)
        archive.stop()
        redis.stop()
    logs = site.logs()
    leaked = [s for s in SENTINELS if s in logs]
    assert leaked == [], f"patient values in the logs: {leaked}"


def no_leaks(site: Site) -> None:
    status = json.dumps(site.node.status(limit=500))
    logs = site.logs()
    for value in SENTINELS:
        assert value not in status, f"{value} in status output"
        assert value not in logs, f"{value} in a log line"


def all_ended(site: Site) -> None:
    site.node.wait_status(lambda s: set(s["jobs"]) <= ENDED, 120, "every job to end")
    wait_for(lambda: site.work_folders() == [], 30, "no work folder left", poll=0.5)


def test_pipeline_that_raises_fails_with_a_readable_reason_and_the_worker_goes_on(site):
    bad = site.push("RAISE chest")
    good = site.push("NORMAL chest")
    job = site.ended(bad)
    assert (job["state"], job["reason"]) == (
        "failed", "pipeline error while running the model (ValueError)")  # fmt: skip
    assert site.ended(good)["state"] == "done"
    site.one_seg_and_sr(good)
    assert site.results(bad) == {}
    assert LEAKY_MESSAGE not in site.logs()
    all_ended(site)


def test_pipeline_that_aborts_its_process_fails_after_max_attempts_without_endless_redelivery(
    site,
):
    study = site.push("ABORT chest")
    job = site.ended(study, timeout=180)
    assert job["state"] == "failed"
    assert job["reason"].startswith("gave up after 3 attempt(s): its worker was lost")
    all_ended(site)
    follow = site.push("NORMAL after abort")  # the workers still serve
    site.one_seg_and_sr(follow, timeout=120)
    r = subprocess.run(["redis-cli", "-p", str(site.redis.port), "llen", "dicom-node"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout.strip() == "0", "no copy of the aborting job's message is still queued"


def test_worker_killed_mid_inference_gets_its_job_run_again(site):
    study = site.push("SLOW chest")
    os.kill(site.running_pid(study), signal.SIGKILL)
    job = site.ended(study, timeout=180)
    assert job["state"] == "done" and job["attempts"] >= 2
    site.one_seg_and_sr(study)
    all_ended(site)


def test_frozen_worker_thawed_after_another_finished_its_job_changes_nothing(site):
    study = site.push("SLOW frozen")
    frozen = site.running_pid(study)
    os.kill(frozen, signal.SIGSTOP)
    try:
        job = site.ended(study, timeout=180)
        assert job["state"] == "done"
        site.one_seg_and_sr(study)
    finally:
        os.kill(frozen, signal.SIGCONT)
    follow = site.push("NORMAL after thaw")
    site.one_seg_and_sr(follow, timeout=120)
    assert site.results(study) == {"SEG": 1, "SR": 1}
    all_ended(site)


def test_duplicate_message_after_the_job_ended_is_a_no_op(site):
    study = site.push("NORMAL duplicate")
    job = site.ended(study)
    site.one_seg_and_sr(study)
    app = Celery("probe", broker=site.redis.url, set_as_current=False)
    message = {"job_id": job["id"], "ticket": 1, "pipeline": "lung-ct", "inputs": [],
               "uid_root": "1.2.826.0.1.3680043.8.498.", "max_attempts": 3}  # fmt: skip
    app.send_task("dicom_node.run_job", args=[message], queue="dicom-node")
    follow = site.push("NORMAL after duplicate")  # behind the duplicate on the same queue
    site.one_seg_and_sr(follow, timeout=120)
    assert site.work_folders() == []
    assert site.results(study) == {"SEG": 1, "SR": 1}
    assert site.job_of(study)["state"] == "done"


def test_flushed_redis_with_jobs_queued_and_running_loses_nothing(site):
    studies = [site.push(f"SLOW flush {n}") for n in range(3)]
    site.running_pid(studies[0])
    require("redis-cli")
    subprocess.run(["redis-cli", "-p", str(site.redis.port), "flushall"], check=True,
                   capture_output=True)  # fmt: skip
    for study in studies:
        assert site.ended(study, timeout=240)["state"] == "done"
        site.one_seg_and_sr(study)
    all_ended(site)


def test_restarted_redis_with_jobs_queued_and_running_loses_nothing(site):
    """Redis keeps nothing on disk here: a restart loses every message, and the node
    and workers must reconnect by themselves."""
    studies = [site.push(f"SLOW redis restart {n}") for n in range(2)]
    site.running_pid(studies[0])
    site.redis.stop()
    site.redis.start()
    for study in studies:
        assert site.ended(study, timeout=240)["state"] == "done"
        site.one_seg_and_sr(study)
    follow = site.push("NORMAL after redis restart")
    site.one_seg_and_sr(follow, timeout=120)
    all_ended(site)


def test_node_killed_with_jobs_queued_finishes_them_after_restart(site):
    studies = [site.push(f"SLOW node kill {n}") for n in range(2)]
    site.node.wait_status(lambda status: all(site.job_of(s, status) is not None for s in studies),
                          60, "jobs to exist", limit=200)  # fmt: skip
    assert site.node.proc is not None
    site.node.proc.kill()
    site.node.proc.wait()
    site.node.start()
    for study in studies:
        assert site.ended(study, timeout=240)["state"] == "done"
        site.one_seg_and_sr(study)
    all_ended(site)


def test_archive_stopped_during_sending_gets_the_results_when_back(site):
    study = site.push("SLOW archive down")
    site.running_pid(study)
    site.archive.stop()
    try:
        assert site.ended(study, timeout=120)["state"] == "done"
        site.node.wait_status(lambda s: s["outbox"].get("pending", 0) >= 2, 30,
                              "results waiting in the outbox")  # fmt: skip
    finally:
        site.archive.start()
    site.one_seg_and_sr(study, timeout=120)
    all_ended(site)


def test_malformed_sentinel_demographics_never_fail_a_job_nor_leak(site):
    patient = {
        "PatientName": "SENTINEL^\x07BELL",
        "PatientID": "SENTINEL-PID-0001",
        "PatientBirthDate": "1970-01-01",
        "AccessionNumber": "SENTINELACC1",
    }
    study = site.push("NORMAL malformed", patient=patient)
    assert site.ended(study)["state"] == "done"
    site.one_seg_and_sr(study)
    all_ended(site)
    no_leaks(site)


def test_pipeline_that_hangs_is_stopped_at_its_time_limit_retried_then_failed(tmp_path):
    """Its own small site: a 3 s time limit, which a real model's cold load would not fit."""
    redis = Redis(tmp_path / "redis").start()
    settings = config("ARCHIVE", 104, redis.url, time_limit=3, attempts=2)
    node = NodeProcess(tmp_path / "node", settings, module="tests.support.fault_node")
    worker = NodeProcess(tmp_path / "node", settings, command="worker", port=node.port,
                         module="tests.support.fault_node")  # fmt: skip
    try:
        node.start()
        worker.start()
        hu = np.full((4, 32, 32), -1000, np.int16)
        series = write_ct_series(tmp_path / "ct", hu, SeriesOptions(series_description="HANG"))
        assert storescu(node.port, series.paths).returncode == 0

        def ended(status: dict[str, Any]) -> bool:
            jobs = status["recent_jobs"]
            return bool(jobs) and jobs[0]["state"] in ENDED

        job = node.wait_status(ended, 120, "the hanging job to end")["recent_jobs"][0]
        assert (job["state"], job["attempts"]) == ("failed", 2)
        assert job["reason"] == (
            "gave up after 2 attempt(s): the job took longer than workers.task_time_limit_seconds"
        )
        assert (node.folder / "var/work").exists() and not any((node.folder / "var/work").iterdir())
    finally:
        codes = stop_together(node, worker)
        redis.stop()
    assert codes[0] == 0


def test_archive_answering_a_failure_status_is_retried_until_it_stores(tmp_path):
    """dcmtk storescp whose output folder has gone answers 0xA700 (out of resources);
    once the folder is back it stores, and each result arrives once."""
    archive = Storescp(tmp_path / "archive").start()
    node = NodeProcess(tmp_path / "node", {})
    try:
        node.config = {
            "node": {"stable_after_seconds": 1},
            "storage": {"dir": "var"},
            # Quick retries, and enough of them (~30 min) that an archive outage of a
            # loaded test machine never runs out of attempts (dead-lettering has its test).
            "send": {"initial_backoff_seconds": 1, "max_backoff_seconds": 2, "max_attempts": 1000},
            "destinations": {
                "archive": {"ae_title": archive.aet, "host": "127.0.0.1", "port": archive.port}
            },  # fmt: skip
            "rules": [
                {
                    "name": "lungs",
                    "match": {"Modality": "CT"},
                    "pipeline": "lung-ct",
                    "destinations": ["archive"],
                }
            ],  # fmt: skip
        }
        node.start()
        archive.folder.rmdir()
        phantom = small_chest()
        options = SeriesOptions(spacing=phantom.spacing)
        series = write_ct_series(tmp_path / "ct", phantom.hu, options)
        assert storescu(node.port, series.paths).returncode == 0

        def refused(status: dict[str, Any]) -> bool:
            waiting = status["outbox_waiting"]
            return len(waiting) == 2 and all("status 0xA700" in w["last_error"] for w in waiting)

        node.wait_status(refused, 180, "the archive to refuse the results with 0xA700")
        archive.folder.mkdir()
        node.wait_status(lambda s: s["outbox"] == {"sent": 2}, 60, "the results to be stored")
        assert len(archive.files()) == 2
    finally:
        code = node.stop()
        archive.stop()
    assert code == 0
