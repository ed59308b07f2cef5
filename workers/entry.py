"""Process entry point: the ``dicom-node`` command with the Celery backend wired in."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from dicom_node import cli
from workers.backend import CeleryBackend

if TYPE_CHECKING:
    from workers.execute import PipelineFactories


def main(
    argv: list[str] | None = None,
    pipelines: PipelineFactories | None = None,
    module: str = "workers",
) -> int:
    """``pipelines`` adds code pipelines by name; ``module`` is the ``python -m`` target
    that runs this same entry point (for the embedded worker)."""
    backend = CeleryBackend(pipelines, module)
    return cli.main(sys.argv[1:] if argv is None else argv, backend=backend)
