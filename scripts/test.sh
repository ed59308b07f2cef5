#!/bin/sh
# Everything CI runs: lint, types, unit and integration tests against real peers.
# The tests of the node's tables run on SQLite and PostgreSQL within the suite; with no
# arguments, the Orthanc round trip and the fault tests then run again with every
# test node's tables in PostgreSQL (DICOM_NODE_TEST_DATABASE=postgresql; set it
# yourself to run any selection, or the whole suite, that way).
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
    DICOM_NODE_TEST_DATABASE=postgresql CI="${CI:-true}" .venv/bin/pytest -q -n "$JOBS" --dist loadfile \
        tests/integration/test_faults.py \
        "tests/integration/test_end_to_end.py::test_orthanc_pushes_a_chest_ct_and_gets_seg_and_sr_back"
fi
