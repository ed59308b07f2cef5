"""A receiving process killed -9 inside the group commit, at the point where the
index work and the file's fsync overlap: nothing of the instance remains (no row,
no spool file once reconciled), its locks are free, and storing it again works."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from dicom_node.commit import GroupCommit
from dicom_node.index import Index
from dicom_node.scp import reconcile_spool
from dicom_node.spool import Spool
from dicom_node.state import Database, open_database
from tests.support import postgres
from tests.support.commit_child import RECORD
from tests.support.peers import REPO, die_with_the_tests, received_files
from tests.support.wait import wait_for


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_kill_9_while_the_file_syncs_after_the_index_call_leaves_no_instance(tmp_path, engine):
    database = str(tmp_path / "node.sqlite") if engine == "sqlite" else postgres.fresh_database()
    storage = tmp_path / "var"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.commit_child", database, str(storage)],
        cwd=REPO, stdin=subprocess.PIPE, preexec_fn=die_with_the_tests,
    )  # fmt: skip
    try:
        wait_for(lambda: (storage / "syncing").exists() or child.poll() is not None, 60,
                 "the child to stop inside the fsync")  # fmt: skip
        assert child.poll() is None, "the child ended before its fsync"
        if engine == "postgresql":  # the call is in the server meanwhile: its two locks held
            db = open_database(database)
            try:
                wait_for(lambda: _advisory_locks(db) == 2, 30, "the index call's locks")
            finally:
                db.close()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    db = open_database(database)
    try:
        index = Index(db)
        spool = Spool(storage)
        assert index.counts()["instances"] == 0, "no row for an instance never answered"
        assert not (storage / RECORD.path).exists()
        reconcile_spool(spool, index, min_age=0)
        assert not received_files(storage / "incoming"), "its partial file swept"
        again = spool.incoming(1) / "again.dcm"
        again.write_bytes(bytes(128) + b"DICMwhole")
        assert GroupCommit(index, spool).record(RECORD, again) is True
        assert (storage / RECORD.path).read_bytes()[128:] == b"DICMwhole"
        assert index.counts()["instances"] == 1
    finally:
        db.close()


def _advisory_locks(db: Database) -> int:
    rows = db.query(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(rows[0][0])
