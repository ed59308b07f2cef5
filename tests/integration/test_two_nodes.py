"""Two receiving nodes on one PostgreSQL database and one shared storage, with a
separate worker on Redis and Orthanc as the archive: a series split between the
nodes is processed once, and when the leading node is killed in the middle of a
push, the other one takes the lead, keeps receiving, and nothing is lost."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from tests.support import postgres
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import NodeProcess, Orthanc, Redis, stop_together, storescu
from tests.support.phantom import make_chest_phantom
from tests.support.wait import wait_for

# Both nodes' tables are always in one PostgreSQL database (storage.database is set):
# the suite's SQLite and PostgreSQL runs would run the same thing twice.
pytestmark = pytest.mark.one_engine("its nodes share a PostgreSQL database of their own")

CT = "1.2.840.10008.5.1.4.1.1.2"
ENDED = {"done", "skipped", "failed"}


@dataclass
class Pair:
    folder: Path
    a: NodeProcess
    b: NodeProcess
    worker: NodeProcess
    archive: Orthanc

    def results(self, study_uid: str) -> dict[str, int]:
        return self.archive.result_counts(study_uid)

    def one_seg_and_sr(self, study_uid: str) -> None:
        wait_for(lambda: self.results(study_uid) == {"SEG": 1, "SR": 1}, 180,
                 f"one SEG and one SR of study {study_uid}", poll=0.5)  # fmt: skip

    def logs(self) -> str:
        return self.a.log() + self.b.log() + self.worker.log()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    database = postgres.fresh_database()
    redis = Redis(tmp_path / "redis").start()
    archive = Orthanc(tmp_path / "orthanc").start()

    def config() -> dict[str, Any]:
        return {
            "node": {"stable_after_seconds": 2},
            "storage": {"dir": str(tmp_path / "shared"), "database": database},
            "broker": {"url": redis.url},
            "workers": {
                "heartbeat_seconds": 0.5,
                "lease_seconds": 10,
                "requeue_after_seconds": 30,
                "task_time_limit_seconds": 120,
            },  # fmt: skip
            "send": {"initial_backoff_seconds": 1, "max_backoff_seconds": 2},
            "destinations": {
                "archive": {
                    "ae_title": archive.aet,
                    "host": "127.0.0.1",
                    "port": archive.dicom_port,
                }
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

    a = NodeProcess(tmp_path / "a", config())
    b = NodeProcess(tmp_path / "b", config())
    worker = NodeProcess(tmp_path / "a", a.config, command="worker", port=a.port)
    site = Pair(tmp_path, a, b, worker, archive)
    try:
        a.start()
        wait_for(lambda: "this node leads" in a.log(), 30, "node A to take the lead")
        b.start()
        wait_for(lambda: "another node leads" in b.log(), 30, "node B to stand by")
        worker.start(wait_listening=False)
        yield site
    finally:
        stop_together(worker, b, a)
        archive.stop()
        redis.stop()


def send(port: int, paths: list[Path]) -> int:
    """Store files over one association with pynetdicom; how many got Success."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CT)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM-NODE")
    assert assoc.is_established
    stored = sum(1 for p in paths if assoc.send_c_store(dcmread(p)).Status == 0)
    assoc.release()
    return stored


def test_a_series_split_between_two_nodes_is_processed_once(pair: Pair):
    phantom = make_chest_phantom((24, 128, 128), (5.0, 1.8, 1.8), body_scale=0.55, seed=11)
    options = SeriesOptions(spacing=phantom.spacing)
    series = write_ct_series(pair.folder / "split", phantom.hu, options)
    half = len(series.paths) // 2
    assert storescu(pair.a.port, series.paths[:half]).returncode == 0
    assert storescu(pair.b.port, series.paths[half:]).returncode == 0
    pair.one_seg_and_sr(series.study_uid)
    status = pair.b.status()
    assert status["jobs"] == {"done": 1}
    [job] = status["recent_jobs"]
    assert job["instances"] == len(series.paths), "the job ran on the whole series"


def test_leader_killed_mid_push_the_other_node_takes_over_and_loses_nothing(pair: Pair):
    phantom = make_chest_phantom((24, 128, 128), (5.0, 1.8, 1.8), body_scale=0.55, seed=12)
    options = SeriesOptions(spacing=phantom.spacing)
    series = write_ct_series(pair.folder / "killed", phantom.hu, options)
    assert send(pair.a.port, series.paths[:10]) == 10
    assert pair.a.proc is not None
    os.kill(pair.a.proc.pid, signal.SIGKILL)
    pair.a.proc.wait()
    # The PACS sends the whole study again, to the node that still answers.
    assert storescu(pair.b.port, series.paths).returncode == 0
    wait_for(lambda: "this node leads" in pair.b.log(), 30, "node B to take the lead")
    pair.one_seg_and_sr(series.study_uid)
    status = pair.b.status()
    assert set(status["jobs"]) <= ENDED and status["jobs"].get("done") == 1
    assert status["index"]["instances"] == len(series.paths)
    [job] = status["recent_jobs"]
    assert job["instances"] == len(series.paths)
