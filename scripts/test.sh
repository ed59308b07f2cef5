#!/bin/sh
# Everything CI runs: lint, types, unit and integration tests against real peers.
# The unit tests of the node's tables run on SQLite and PostgreSQL within the suite.
# With no arguments, every test that starts a node or opens the suite's database
# (marker node_tables, tests/conftest.py) runs twice in the same session: with its
# tables in SQLite and in PostgreSQL (DICOM_NODE_TEST_DATABASE=both), except tests
# marked one_engine, whose checks do not depend on the engine (they say why). With arguments,
# the tables are in SQLite unless DICOM_NODE_TEST_DATABASE says postgresql or both.
#
# Tests run in TEST_JOBS processes (pytest-xdist, default 3): most of a test's time is
# spent waiting on its peers (nodes, workers, Orthanc); with two processes the suite used
# under one of the 2 cores on average (docs/benchmarks.md, "Test suite"). A module's
# tests run in one process, one engine's run at a time
# (--dist loadgroup, grouped by tests/conftest.py's scheduler), the slowest modules handed out
# first (--no-loadscope-reorder keeps that order). TEST_JOBS=0: everything in one process.
set -eu
cd "$(dirname "$0")/.."
JOBS="${TEST_JOBS:-3}"
sh scripts/install.sh test
.venv/bin/ruff check dicom_node pipelines workers tests bench
.venv/bin/mypy
if [ $# -eq 0 ]; then
    export DICOM_NODE_TEST_DATABASE="${DICOM_NODE_TEST_DATABASE:-both}"
fi
CI="${CI:-true}" .venv/bin/pytest -q -n "$JOBS" --dist loadgroup --no-loadscope-reorder "$@"
