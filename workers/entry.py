"""Process entry point: the ``dicom-node`` command with the Celery backend wired in."""

from __future__ import annotations

import sys

from dicom_node import cli
from workers.backend import CeleryBackend


def main(argv: list[str] | None = None) -> int:
    return cli.main(sys.argv[1:] if argv is None else argv, backend=CeleryBackend())
