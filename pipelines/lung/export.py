"""Export the lung segmentation graph as a SavedModel with its manifest.

    python -m pipelines.lung.export [--out DIR]

writes ``DIR/saved_model/`` and ``DIR/model.yaml`` (default DIR: the package's
``pipelines/models/lung_ct``), the manifest being the shipped one with the new
export's SHA-256. The model has no weights: the folder holds only
the graph, so it is small enough to ship as package data.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from pathlib import Path

from pipelines.manifest import MANIFEST_FILE, model_checksum, read_manifest

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "lung_ct"
SAVED_MODEL = "saved_model"
SIGNATURE = "serving_default"


def export(out: Path) -> Path:
    """Write ``out/saved_model`` (replacing an older export) and ``out/model.yaml``."""
    import tensorflow as tf  # heavy; only the exporting process needs it

    from pipelines.lung.graph import build

    template = (DEFAULT_OUT / MANIFEST_FILE).read_text(encoding="utf-8")
    module = build()
    target = out / SAVED_MODEL
    if target.exists():
        shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)
    signature = module.__call__.get_concrete_function()
    tf.saved_model.save(module, str(target), signatures={SIGNATURE: signature})
    text = re.sub(r"(?m)^(  sha256: )[0-9a-f]{64}$", rf"\g<1>{model_checksum(target)}", template)
    (out / MANIFEST_FILE).write_text(text, encoding="utf-8")
    manifest = read_manifest(out)
    logger.info("exported %s %s to %s", manifest.name, manifest.version, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="manifest folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export(args.out)


if __name__ == "__main__":
    main()
