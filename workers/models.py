"""Models load lazily, once per worker process, cached by (name, version)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.base import Pipeline, PipelineError
from pipelines.registry import Catalog, discover

logger = logging.getLogger(__name__)


class ModelLoadFailed(Exception):
    """Loading a model stopped half-way (time limit, an error inside TensorFlow's own
    import). The process's TensorFlow may be left half-imported: ``broken`` is set
    and the task shell replaces the process after reporting."""


class ModelCache:
    """Loaded models of this process, and the catalog of pipelines they come from.

    ``folders``: the config's ``models:``; ``threads``: TensorFlow's (intra-op,
    inter-op) thread counts, applied before the first model loads."""

    def __init__(self, folders: Sequence[Path] = (), threads: tuple[int, int] = (0, 0)) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._folders = list(folders)
        self._threads = threads
        self._catalog: Catalog | None = None
        self.broken = False

    @property
    def catalog(self) -> Catalog:
        """The pipelines from the built-in and configured manifest folders, read once."""
        if self._catalog is None:
            self._catalog = discover(self._folders)
        return self._catalog

    def get(self, pipeline: Pipeline) -> Any:
        key = (pipeline.spec.name, pipeline.spec.version)
        with self._lock:
            if key not in self._models:
                started = time.perf_counter()
                try:
                    if not self._models and any(self._threads):
                        from pipelines.model import configure_threads

                        configure_threads(*self._threads)
                    self._models[key] = pipeline.load_model()
                except PipelineError:
                    raise
                except BaseException as exc:
                    self.broken = True
                    raise ModelLoadFailed(type(exc).__name__) from exc
                # TensorFlow and the model live as long as the process (~600k objects
                # the cyclic collector would otherwise walk again in every full
                # collection during a job): keep them out of its way.
                gc.freeze()
                logger.info("loaded model for %s %s in %.1f s", *key, time.perf_counter() - started)
            return self._models[key]
