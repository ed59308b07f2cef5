"""On PostgreSQL a receiver's index commit does not wait for the server's disk; the
leader checks before every round that the server lost nothing since (an unlogged
row that a crash empties), files the spool again when it did, and no decision
taken across a crash survives it. Crash recovery's effect on the unlogged table
is played here with TRUNCATE; tests/integration/test_database_crash.py loses
commits for real."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dicom_node.dispatch import Dispatcher
from dicom_node.epoch import Guarded, ServerEpoch, ServerRestarted
from dicom_node.facts import instance_facts
from dicom_node.header import read_header
from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs
from dicom_node.outbox import Outbox
from dicom_node.postgres import PostgresDatabase
from dicom_node.scp import Origin, instance_record, reconcile_spool
from dicom_node.settings import Settings
from dicom_node.spool import Spool, seal
from dicom_node.state import SCHEMA_VERSION
from tests.support import postgres
from tests.support.ct_series import write_ct_series
from tests.support.wait import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
ORIGIN = Origin("MODALITY_AE", "DICOM_NODE", "10.1.2.3")


@pytest.fixture
def db() -> Iterator[PostgresDatabase]:
    opened = PostgresDatabase(postgres.fresh_database())
    yield opened
    opened.close()


def crash(db: PostgresDatabase) -> None:
    """What PostgreSQL's crash recovery does to the unlogged table."""
    with db.transaction() as conn:
        conn.execute("TRUNCATE server_epoch")


def nothing() -> None:
    return None


def test_the_epoch_is_an_unlogged_table_of_the_current_schema(db):
    [row] = db.query("SELECT relpersistence FROM pg_class WHERE relname = 'server_epoch'")
    assert row[0] == "u"
    assert db.query("SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION == 8


def test_a_lost_epoch_files_the_spool_again_once_before_the_round_goes_on(db):
    filed: list[int] = []
    epoch = ServerEpoch(db)
    assert epoch.check(lambda: filed.append(1)), "a new database has no epoch yet"
    assert not epoch.check(lambda: filed.append(2)), "nothing lost since"
    crash(db)
    assert epoch.check(lambda: filed.append(3))
    assert not epoch.check(lambda: filed.append(4))
    assert filed == [1, 3]
    assert db.query("SELECT COUNT(*) FROM server_epoch WHERE whole")[0][0] == 1


def test_a_crash_while_the_spool_is_filed_leaves_the_epoch_missing_for_the_next_round(db):
    epoch = ServerEpoch(db)
    with pytest.raises(ServerRestarted, match="restarted while the spool was filed"):
        epoch.check(lambda: crash(db))
    assert epoch.token is None
    filed: list[int] = []
    assert epoch.check(lambda: filed.append(1)), "filed again, whole"
    assert filed == [1]


def test_a_node_alone_at_start_sets_the_epoch_around_its_start_up_reconcile(db):
    filed: list[int] = []
    ServerEpoch(db).at_start(lambda: filed.append(1))
    ServerEpoch(db).at_start(lambda: filed.append(2))  # set already: only the reconcile
    assert filed == [1, 2]
    assert not ServerEpoch(db).check(nothing), "the leader finds it whole"


def _insert_study(conn, uid: str) -> None:
    conn.execute(
        "INSERT INTO studies (study_uid, first_received, last_received) VALUES (?, 0, 0)", (uid,)
    )


def test_a_decision_taken_across_a_crash_or_another_leaders_refiling_is_rolled_back(db):
    epoch = ServerEpoch(db)
    epoch.check(nothing)
    deciding = Guarded(db, epoch)
    assert ServerRestarted in deciding.transient_errors
    crash(db)  # after the round's check, before its decision
    with pytest.raises(ServerRestarted), deciding.transaction() as conn:
        _insert_study(conn, "1.1")
    ServerEpoch(db).check(nothing)  # another node leads now and filed the spool
    with pytest.raises(ServerRestarted), deciding.transaction() as conn:
        _insert_study(conn, "1.2")
    assert db.query("SELECT COUNT(*) FROM studies")[0][0] == 0
    epoch.check(nothing)  # the next round starts from the new epoch
    with deciding.transaction() as conn:
        _insert_study(conn, "1.3")
    assert db.query("SELECT study_uid FROM studies")[0][0] == "1.3"


def test_only_the_receivers_transaction_commits_asynchronously_and_the_setting_stays_in_it():
    db = PostgresDatabase(postgres.fresh_database(), max_size=1)  # one connection, reused
    try:
        with db.pipeline(durable=False) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with db.transaction(durable=False) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with db.pipeline() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        with db.transaction() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert db.query("SHOW synchronous_commit")[0][0] == "on"
    finally:
        db.close()


def test_a_round_cut_short_by_a_crash_creates_its_job_in_the_next_round(db, tmp_path):
    settings = Settings.model_validate({
        "node": {"stable_after_seconds": 10},
        "storage": {"dir": str(tmp_path)},
        "rules": [{"name": "r", "when": {"attribute": "Modality", "equals": "CT"},
                   "pipeline": "lung-ct"}],
    })  # fmt: skip
    spool = Spool(tmp_path)
    spool.create()
    epoch = ServerEpoch(db)
    deciding = Guarded(db, epoch)
    sent: list[dict[str, object]] = []
    d = Dispatcher(settings, spool, Index(deciding), Jobs(deciding), Outbox(deciding),
                   lambda message, **_: sent.append(message))  # fmt: skip
    receiving = Index(db)
    for i in range(3):
        rel = spool.store_instance("1.2", "1.2.3", f"1.2.3.{i}", b"DICM")
        facts = {"00080060": ["CT"], "00080016": [CT]}
        receiving.record(InstanceRecord("1.2", "1.2.3", f"1.2.3.{i}", CT, rel, 4, facts=facts),
                         now=0.0)  # fmt: skip
    epoch.check(nothing)
    crash(db)
    with pytest.raises(ServerRestarted):
        d.tick(now=11.0)
    assert d.jobs.active() == []
    epoch.check(nothing)
    d.tick(now=12.0)
    [job] = d.jobs.active()
    assert len(job.inputs) == 3 and len(sent) == 1


def _sealed_copy(spool: Spool, source: Path) -> tuple[Path, InstanceRecord]:
    received = spool.blank()
    received.write_bytes(source.read_bytes())
    seal(received, ORIGIN.sealed(), named=True)
    header, ds = read_header(received, "1.2.840.10008.1.2.1", 2**30)
    return received, instance_record(spool, header, instance_facts(ds, ORIGIN.context()), 0)


def test_refiling_files_young_sealed_files_removes_nothing_and_filing_twice_counts_once(
    db, tmp_path
):
    ct = write_ct_series(tmp_path / "src", np.full((3, 8, 8), 40, dtype=np.int16))
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(db)
    # A lost commit: sealed and placed, no row.
    lost, record = _sealed_copy(spool, ct.paths[0])
    spool.place(lost, record.path)
    # Not sealed (no receiver places such a file; the periodic clean-up removes it
    # once old): left alone.
    stray = tmp_path / "var" / spool.instance_relpath(ct.study_uid, ct.series_uid, "1.2.9")
    stray.write_bytes(ct.paths[2].read_bytes())
    # A live receiver between its move and its commit: its row comes after ours.
    live, live_record = _sealed_copy(spool, ct.paths[1])
    placed, go_on = threading.Event(), threading.Event()

    def place() -> None:
        spool.place(live, live_record.path)
        placed.set()
        go_on.wait(30)

    receiver = threading.Thread(target=index.record, args=(live_record,),
                                kwargs={"place": place})  # fmt: skip
    receiver.start()
    assert placed.wait(30)
    refiler = threading.Thread(target=reconcile_spool, args=(spool, index),
                               kwargs={"min_age": 0.0, "sweep": False})  # fmt: skip
    refiler.start()
    waiting = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    wait_for(lambda: db.query(waiting), 30, "the refiling to wait for the receiver's lock")
    go_on.set()
    receiver.join(30)
    refiler.join(30)
    assert index.counts() == {"studies": 1, "series": 1, "instances": 2}
    assert index.study(ct.study_uid).revision == 2, "the live instance counted once"
    assert stray.exists()
