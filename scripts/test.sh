#!/bin/sh
# Everything CI runs: lint, types, unit and integration tests against real peers.
# The unit tests of the node's tables run on SQLite and PostgreSQL within the suite;
# with no arguments, every test that starts a node or opens the suite's database
# (marker node_tables, tests/conftest.py) then runs again with its tables in
# PostgreSQL (DICOM_NODE_TEST_DATABASE=postgresql; set it yourself to run any
# selection that way). The other tests never open the node's tables.
#
# Tests run in TEST_JOBS processes (pytest-xdist, default 2, one file per process at a
# time): most of a test's time is spent waiting on its peers (nodes, workers, Orthanc),
# so two processes share the 2 cores well. TEST_JOBS=0 runs everything in one process.
set -eu
cd "$(dirname "$0")/.."
JOBS="${TEST_JOBS:-2}"
sh scripts/install.sh test
.venv/bin/ruff check dicom_node pipelines workers tests bench
.venv/bin/mypy
CI="${CI:-true}" .venv/bin/pytest -q -n "$JOBS" --dist loadfile "$@"
if [ $# -eq 0 ]; then
    echo "again with the node's tables in PostgreSQL:"
    DICOM_NODE_TEST_DATABASE=postgresql CI="${CI:-true}" .venv/bin/pytest -q -n "$JOBS" \
        --dist loadfile -m node_tables
fi
