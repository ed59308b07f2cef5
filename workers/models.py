"""Models load lazily, once per worker process, cached by (name, version).

A loaded model stays in use until the process ends: when its ``model.yaml`` or
model file changes on disk afterwards, the next job that uses it logs a warning
(once per change) that a restart loads the new one.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.base import Pipeline, PipelineError
from pipelines.manifest import MANIFEST_FILE, Manifest
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
        self._on_disk: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}
        self.broken = False

    @property
    def catalog(self) -> Catalog:
        """The pipelines from the built-in and configured manifest folders, read once."""
        if self._catalog is None:
            # The node logged each refusal at its start; a job for a refused
            # pipeline fails with the refusal as its reason.
            self._catalog = discover(self._folders, log=False)
        return self._catalog

    def get(self, pipeline: Pipeline) -> Any:
        key = (pipeline.spec.name, pipeline.spec.version)
        manifest: Manifest | None = getattr(pipeline, "manifest", None)
        with self._lock:
            if key in self._models and manifest is not None:
                self._notice_change(key, manifest)
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
                if manifest is not None:
                    self._on_disk[key] = on_disk(manifest)
            return self._models[key]

    def _notice_change(self, key: tuple[str, str], manifest: Manifest) -> None:
        now = on_disk(manifest)
        if now != self._on_disk.get(key, now):
            logger.warning(
                "model folder %s of pipeline %s %s changed on disk since this worker loaded"
                " it (model.yaml or the model file); the worker keeps running the model it"
                " loaded: restart the node and its workers to load the new one",
                manifest.folder,
                *key,
            )
        self._on_disk[key] = now


def on_disk(manifest: Manifest) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime in ns, size) of the manifest and of each model file; (path, -1,
    -1) for one that is gone. A ``stat`` per file: cheap enough for every job."""
    target = manifest.model_path
    files = [manifest.folder / MANIFEST_FILE]
    files += sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    found = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            found.append((str(file), -1, -1))
        else:
            found.append((str(file), st.st_mtime_ns, st.st_size))
    return tuple(found)
