#!/bin/sh
# Everything CI runs: lint, types, unit and integration tests against real peers.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install.sh test
.venv/bin/ruff check dicom_node pipelines workers tests bench
.venv/bin/mypy
CI="${CI:-true}" .venv/bin/pytest -q "$@"
