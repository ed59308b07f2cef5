"""Pipelines that misbehave on purpose, for the fault-injection tests.

They are handed to the real entry point as a parameter
(``workers.entry.main(argv, pipelines=FAULTS)``, see ``tests.support.fault_node``),
never patched into the registry. Each wraps the real lung pipeline, so the model
loads and the results are real when they do not fail.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipelines.base import PipelineSpec, SeriesNotUsable, Volume
from pipelines.lung import LungCT

# Looks like a patient value on purpose: it must never reach a log, reason or status.
LEAKY_MESSAGE = "Unable to convert 'SENTINEL-PID-0001' to 'DA' object"
SLOW_SECONDS = 4.0
PAUSE_SECONDS = 1.5
RELEASE = "release-pause-long"  # in the worker's folder (its cwd): ends pause-long's job
HOLD_SECONDS = 120


def _spec(name: str) -> PipelineSpec:
    base = LungCT.spec
    return PipelineSpec(name, base.version, base.modalities, base.min_instances, base.outputs)


class _NoModel(LungCT):
    """Fails before any model is needed: no TensorFlow load, so no cold start."""

    def load_model(self) -> Any:
        return None


class Raises(_NoModel):
    spec = _spec("fault-raise")

    def infer(self, model: Any, volume: Volume) -> Any:
        raise ValueError(LEAKY_MESSAGE)


class Hangs(_NoModel):
    spec = _spec("fault-hang")

    def infer(self, model: Any, volume: Volume) -> Any:
        while True:  # until the soft time limit interrupts it
            time.sleep(0.2)


class Aborts(_NoModel):
    spec = _spec("fault-abort")

    def infer(self, model: Any, volume: Volume) -> Any:
        os.abort()  # as a TensorFlow CHECK failure or the OOM killer would end the process


class Slow(LungCT):
    """The real lung pipeline, with inference that takes a few seconds: long enough
    to kill or freeze its worker in the middle of it."""

    spec = _spec("slow-lung")

    def infer(self, model: Any, volume: Volume) -> Any:
        deadline = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.1)
        return super().infer(model, volume)


class Pauses(_NoModel):
    """Holds its worker for ``PAUSE_SECONDS``, then skips the series: a job that takes
    time and needs no model (the lane and device-class tests)."""

    spec = _spec("pause")
    seconds = PAUSE_SECONDS

    def infer(self, model: Any, volume: Volume) -> Any:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise SeriesNotUsable("the pause pipeline never makes results")


class PausesLong(Pauses):
    """Holds its worker until the test says so (a file ``RELEASE`` in the worker's
    folder), at most ``HOLD_SECONDS``: long enough for a test to look at the running
    job from outside, on a machine of any load."""

    spec = _spec("pause-long")

    def infer(self, model: Any, volume: Volume) -> Any:
        deadline = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < deadline and not Path(RELEASE).exists():
            time.sleep(0.05)
        raise SeriesNotUsable("the pause pipeline never makes results")


FAULTS = {p.spec.name: p for p in (Raises, Hangs, Aborts, Slow, Pauses, PausesLong)}
