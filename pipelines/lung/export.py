"""Export the lung segmentation graph as a SavedModel with its manifest.

    python -m pipelines.lung.export [--out DIR]

writes ``DIR/saved_model/`` and ``DIR/model.yaml`` (default DIR: the package's
``pipelines/models/lung_ct``). The model has no weights: the folder holds only
the graph, so it is small enough to ship as package data.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import yaml

from pipelines.model import ModelManifest, TensorSpec

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "lung_ct"

MANIFEST = ModelManifest(
    name="lung-ct-threshold",
    version="1.0.0",
    format="tf-saved-model",
    path="saved_model",
    signature="serving_default",
    description=(
        "Lungs in chest CT by HU thresholds, morphology and connected components as a "
        "TensorFlow graph (no learned weights); labels 0 outside, 1 body, 2 right lung, "
        "3 left lung."
    ),
    inputs={
        "volume": TensorSpec(
            dtype="int16",
            shape=[None, None, None],
            description="CT volume (z, y, x) in Hounsfield units, canonical LPS orientation: "
            "x toward patient left, y toward posterior, z toward head; any z >= 1",
        ),
        "spacing": TensorSpec(
            dtype="float32",
            shape=[3],
            description="voxel spacing (z, y, x) in mm; z is the distance between slice centres",
        ),
    },
    outputs={
        "labels": TensorSpec(
            dtype="uint8",
            shape=[None, None, None],
            description="label map (z, y, x) like volume: 0 outside the body, 1 body not "
            "lung, 2 right lung, 3 left lung",
        ),
    },
)


def export(out: Path) -> Path:
    """Write ``out/saved_model`` (replacing an older export) and ``out/model.yaml``."""
    import tensorflow as tf  # heavy; only the exporting process needs it

    from pipelines.lung.graph import build

    module = build()
    target = out / MANIFEST.path
    if target.exists():
        shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)
    signature = module.__call__.get_concrete_function()
    tf.saved_model.save(module, str(target), signatures={MANIFEST.signature: signature})
    manifest = MANIFEST.model_dump(mode="json", exclude_defaults=False)
    with open(out / "model.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(manifest, fh, sort_keys=False, allow_unicode=True)
    logger.info("exported %s %s to %s", MANIFEST.name, MANIFEST.version, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="manifest folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export(args.out)


if __name__ == "__main__":
    main()
