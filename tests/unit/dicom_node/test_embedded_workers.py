"""The embedded worker's supervisor: restarts with a backoff that doubles, says so."""

from __future__ import annotations

import logging
import sys

from dicom_node.node import EmbeddedWorkers
from tests.support.wait import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_that_keeps_dying_is_restarted_with_backoff_and_logged(tmp_path, caplog):
    clock = Clock()
    dies = [sys.executable, "-c", "raise SystemExit(3)"]
    workers = EmbeddedWorkers(dies, grace=5, pidfile=tmp_path / "worker.pid", clock=clock)
    caplog.set_level(logging.INFO, logger="dicom_node.node")
    workers.start()
    starts = []
    for _ in range(4):
        proc = workers.proc
        assert proc is not None
        wait_for(lambda p=proc: p.poll() is not None, 10, "the worker to exit")
        workers.check()  # notices the death, schedules the restart
        assert workers.restart_at is not None
        starts.append(workers.restart_at - clock.now)
        clock.now = workers.restart_at - 0.01
        workers.check()
        assert workers.proc is proc, "not restarted before its backoff has passed"
        clock.now = workers.restart_at
        workers.check()
        assert workers.proc is not proc
    assert starts == [1.0, 2.0, 4.0, 8.0]
    assert "embedded worker keeps dying: exit code 3, 3 deaths in a row" in caplog.text
    workers.stop()


def test_a_worker_that_ran_a_while_before_dying_starts_the_backoff_again(tmp_path):
    clock = Clock()
    dies = [sys.executable, "-c", "raise SystemExit(1)"]
    workers = EmbeddedWorkers(dies, grace=5, pidfile=tmp_path / "worker.pid", clock=clock)
    workers.start()
    workers.deaths = 5
    clock.now += EmbeddedWorkers.STABLE_SECONDS + 1
    proc = workers.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, 10, "the worker to exit")
    workers.check()
    assert workers.deaths == 1 and workers.restart_at == clock.now + 1.0


def test_storage_removed_under_the_node_never_starts_a_second_worker(tmp_path, caplog):
    """The pid file cannot be written (its folder is gone): the worker that started is
    the one supervised, and ticks that find it running start nothing more."""
    clock = Clock()
    sleeps = [sys.executable, "-c", "import time; time.sleep(60)"]
    workers = EmbeddedWorkers(sleeps, grace=5, pidfile=tmp_path / "gone" / "worker.pid",
                              clock=clock)  # fmt: skip
    caplog.set_level(logging.INFO, logger="dicom_node.node")
    workers.start()
    first = workers.proc
    assert first is not None and workers.restart_at is None
    for _ in range(5):
        clock.now += 10
        workers.check()
    assert workers.proc is first and first.poll() is None
    assert "could not write the embedded worker's pid file" in caplog.text
    workers.stop()
    assert first.poll() is not None
