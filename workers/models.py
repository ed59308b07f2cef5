"""Models load lazily, once per worker process, cached by (name, version)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipelines.base import Pipeline, PipelineError

logger = logging.getLogger(__name__)


class ModelLoadFailed(Exception):
    """Loading a model stopped half-way (time limit, an error inside TensorFlow's own
    import). The process's TensorFlow may be left half-imported: ``broken`` is set
    and the task shell replaces the process after reporting."""


class ModelCache:
    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.broken = False

    def get(self, pipeline: Pipeline) -> Any:
        key = (pipeline.spec.name, pipeline.spec.version)
        with self._lock:
            if key not in self._models:
                started = time.perf_counter()
                try:
                    self._models[key] = pipeline.load_model()
                except PipelineError:
                    raise
                except BaseException as exc:
                    self.broken = True
                    raise ModelLoadFailed(type(exc).__name__) from exc
                logger.info("loaded model for %s %s in %.1f s", *key, time.perf_counter() - started)
            return self._models[key]
