"""Models load lazily, once per worker process, cached by (name, version)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipelines.base import Pipeline

logger = logging.getLogger(__name__)


class ModelCache:
    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, pipeline: Pipeline) -> Any:
        key = (pipeline.spec.name, pipeline.spec.version)
        with self._lock:
            if key not in self._models:
                started = time.perf_counter()
                self._models[key] = pipeline.load_model()
                logger.info("loaded model for %s %s in %.1f s", *key, time.perf_counter() - started)
            return self._models[key]
