"""``dicom-node models list`` and ``dicom-node models check FOLDER``.

``list`` prints every pipeline the workers have: those from manifest folders
(built-in and ``models:`` in config.yaml) with their algorithm, model file and
checksum, the refused folders with their errors, and code pipelines.
``check`` validates one folder's manifest, verifies the checksum, loads the
model and runs it once on a synthetic input of the shape the model declares,
printing what it returned. Exit status 0: usable; 1: the model failed to load
or run; 2: the manifest is invalid.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.manifest import Manifest, ManifestError, read_manifest
from pipelines.registry import discover

SYNTHETIC_SIZE = 32  # voxels along an axis the model leaves free


def list_models(folders: Sequence[Path], code: Mapping[str, Any]) -> int:
    # The refusals are printed below, not logged as well.
    catalog = discover(folders, log=False)
    for name in sorted(catalog.manifests):
        m = catalog.manifests[name]
        hooks = f" hooks: {', '.join(sorted(m.hooks))}" if m.hooks else ""
        print(
            f"{name} {m.version}: {m.algorithm.name} {m.algorithm.version} "
            f"[{', '.join(m.accepts.modalities)} -> {m.outputs.kind}] "
            f"{m.model.format} {m.model_path} sha256:{m.model.sha256[:12]}{hooks}"
        )
        for label, value in _about(m):
            print(f"    {label + ':':<14}{value}")
    for name in sorted(code):
        print(f"{name}: code pipeline")
    for label in sorted(catalog.refused):
        print(f"REFUSED {label}: {catalog.refused[label]}")
    return 1 if catalog.refused else 0


def _about(m: Manifest) -> list[tuple[str, str]]:
    """The manifest's own words about the model, those it gives, one per line."""
    about = [
        ("description", m.description),
        ("authors", ", ".join(m.algorithm.authors)),
        ("licence", m.algorithm.licence),
        ("intended use", m.algorithm.intended_use),
        ("manufacturer", m.algorithm.manufacturer),
    ]
    return [(label, " ".join(value.split())) for label, value in about if value.strip()]


def check_model(folder: Path) -> int:
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    print(f"{folder}/model.yaml: valid; {manifest.model.path} matches model.sha256")
    try:
        from pipelines.model import Model

        started = time.perf_counter()
        model = Model(manifest)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        shape, output = _run_synthetic(model)
        ran = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - a report of whatever the model did
        print(f"{folder}: the model did not load or run: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"loaded {manifest.model.format} in {loaded:.1f} s; ran on a synthetic input "
          f"{list(shape)} in {ran:.2f} s -> {output}")  # fmt: skip
    return 0


def _run_synthetic(model: Any) -> tuple[tuple[int, ...], str]:
    """Run once on random input; returns the input shape and a description of the output."""
    rng = np.random.default_rng(0)
    signature = getattr(model, "_signature", None)
    if signature is not None and len(signature.structured_input_signature[1]) > 1:
        specs = signature.structured_input_signature[1]
        inputs = {
            name: np.ones([d or SYNTHETIC_SIZE for d in spec.shape], spec.dtype.as_numpy_dtype)
            for name, spec in specs.items()
        }
        result = model(**inputs)
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in result.items())
        first = next(iter(inputs.values()))
        return tuple(first.shape), shapes
    shape = (1, *[d or SYNTHETIC_SIZE for d in model.item_shape])
    output = model.run(rng.random(shape, dtype=np.float32))
    values = f"values {output.min():.3g}..{output.max():.3g}"
    return shape, f"{list(output.shape)} {output.dtype}, {values}"
