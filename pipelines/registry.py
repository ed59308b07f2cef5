"""Where pipelines come from: manifest folders, and nothing else.

The built-in pipelines are manifest folders shipped as package data
(``BUILTIN``); a site adds its own with ``models:`` in config.yaml (folders
holding ``model.yaml``). Code only enters through named hooks (``HOOKS``, a
dict literal) that a manifest may name for a stage; no import side effects,
no plugins.

A manifest that cannot be used is refused with its error (file, key, line)
and the other pipelines stay available (``Catalog.refused``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.manifest import Manifest, ManifestError, read_manifest

if TYPE_CHECKING:
    from pipelines.base import Pipeline
    from pipelines.generic import Hooks
    from pipelines.lung import LungCT

logger = logging.getLogger(__name__)

# Built-in pipelines: name -> manifest folder inside the ``pipelines`` package.
BUILTIN: dict[str, str] = {
    "lung-ct": "models/lung_ct",
    "brain-t1": "models/brain_t1",
}


# The pipeline code (highdicom, scipy) is imported when a pipeline is first built,
# not by every command that only needs the pipelines' names (status, serve).
@functools.cache
def _lung() -> LungCT:
    from pipelines.lung import LungCT

    return LungCT()


def _lung_prepare(*args: Any) -> Any:
    return _lung().prepare(*args)


def _lung_infer(*args: Any) -> Any:
    return _lung().infer(*args)


def _lung_encode(*args: Any) -> Any:
    return _lung().encode(*args)


HOOKS: Hooks = {
    "lung-ct.prepare": _lung_prepare,
    "lung-ct.infer": _lung_infer,
    "lung-ct.encode": _lung_encode,
}


def builtin_folder(relative: str) -> Path:
    folder: Any = resources.files("pipelines")
    for part in relative.split("/"):
        folder = folder.joinpath(part)
    return Path(str(folder))


@dataclass
class Catalog:
    """The pipelines that loaded, by name, and the folders that were refused
    with their error (``label`` is the manifest's name when it could be read,
    else the folder)."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Callable[[], Pipeline]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.manifests) | set(self.refused) | set(self.extra)

    def get(self, name: str) -> Pipeline:
        """A pipeline by name. ``KeyError`` for an unknown name; ``ManifestError``
        for one whose manifest was refused."""
        if name in self.extra:
            return self.extra[name]()
        if name in self.manifests:
            from pipelines.generic import ManifestPipeline

            return ManifestPipeline(self.manifests[name], HOOKS)
        if name in self.refused:
            raise ManifestError(self.refused[name])
        known = ", ".join(sorted(self.names()))
        raise KeyError(f"unknown pipeline {name!r}; known: {known}")


def discover(folders: Iterable[Path] = (), verify: bool = True, log: bool = True) -> Catalog:
    """The built-in manifests, then those in ``folders`` (a later one with the
    same name replaces an earlier one, with a warning). With ``verify``, each
    model file must exist and match its checksum; with ``log``, each refused
    folder is logged (once per call) with its error."""
    catalog = Catalog()
    candidates = [builtin_folder(rel) for rel in BUILTIN.values()] + [Path(f) for f in folders]
    for folder in candidates:
        try:
            manifest = read_manifest(folder, verify=verify)
        except ManifestError as exc:
            label = _name_in(folder) or str(folder)
            catalog.refused[label] = str(exc)
            if log:
                logger.error("model folder %s refused: %s", folder, exc)
            continue
        unknown = set(manifest.hooks.values()) - set(HOOKS)
        if unknown:
            message = f"{folder}/model.yaml: hooks: unknown hook(s) {', '.join(sorted(unknown))}"
            catalog.refused[manifest.name] = message
            if log:
                logger.error("model folder %s refused: %s", folder, message)
            continue
        if manifest.name in catalog.manifests and log:
            logger.warning("model folder %s replaces pipeline %s", folder, manifest.name)
        catalog.manifests[manifest.name] = manifest
        catalog.refused.pop(manifest.name, None)
    return catalog


def _name_in(folder: Path) -> str | None:
    """The ``name:`` of a manifest that did not validate, if it has a usable one."""
    import yaml

    try:
        raw = yaml.safe_load((folder / "model.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and name else None


def get(name: str) -> Pipeline:
    """A new instance of the built-in pipeline called ``name``."""
    return discover().get(name)
