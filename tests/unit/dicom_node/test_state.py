"""The database layer on both engines: schema versions, two nodes at once, the lead."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs
from dicom_node.leader import FileLease, PostgresLease, lease_for
from dicom_node.postgres import redact
from dicom_node.presence import FilePresence, PostgresPresence, presence_for
from dicom_node.state import SCHEMA_VERSION, SchemaTooNew, SqliteDatabase, open_database
from tests.support import postgres
from tests.support.wait import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_a_database_written_by_a_newer_node_is_refused(open_db):
    db = open_db()
    with db.transaction() as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
        open_db()


def test_two_nodes_storing_one_instance_at_once_count_it_once(open_db):
    nodes = [Index(open_db()), Index(open_db())]
    barrier = threading.Barrier(8)
    results: list[tuple[bool, str | None]] = []

    def store(i: int) -> None:
        rec = InstanceRecord("1.2", "1.2.3", "1.2.3.4", CT, f"spool/copy{i}.dcm", 10)
        barrier.wait()
        results.append(nodes[i % 2].record(rec))

    threads = [threading.Thread(target=store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(new for new, _ in results) == 1
    assert nodes[0].counts() == {"studies": 1, "series": 1, "instances": 1}
    [study] = nodes[1].studies_to_route()
    assert study.revision == 1
    [series] = nodes[0].series_of("1.2")
    assert series.instances == 1


def test_two_nodes_creating_one_job_at_once_make_one(open_db):
    nodes = [Jobs(open_db()), Jobs(open_db())]
    barrier = threading.Barrier(6)
    ids: list[int | None] = []

    def create(i: int) -> None:
        barrier.wait()
        ids.append(nodes[i % 2].create(study_uid="1.2", series_uid="1.2.3", rule="r",
                                       pipeline="p", sop_uids=["1"], inputs=["a"],
                                       destinations=[], queue="gpu", lane="urgent"))  # fmt: skip

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [i for i in ids if i is not None]
    assert len(made) == 1
    job = nodes[1].get(made[0])
    assert job is not None and (job.queue, job.lane) == ("gpu", "urgent")


def test_one_node_leads_and_another_takes_over_when_it_stops(open_db):
    first, second = open_db(), open_db()
    target = first.path if isinstance(first, SqliteDatabase) else None
    a, b = lease_for(first, target), lease_for(second, target)
    assert isinstance(a, FileLease if target else PostgresLease)
    assert a.hold() and a.hold()
    assert not b.hold()
    a.release()  # the server drops the lock when the session has ended, soon after
    wait_for(b.hold, 10, "the other node to take the lead")
    assert not a.hold()


def test_a_starting_node_is_alone_only_while_no_other_node_receives(open_db):
    # Alone, a node may remove every unindexed spool file at start; beside a receiving
    # node it must not (that node may be between its move and its commit).
    first, second, third = open_db(), open_db(), open_db()
    target = first.path if isinstance(first, SqliteDatabase) else None
    a, b, c = (presence_for(db, target) for db in (first, second, third))
    assert isinstance(a, FilePresence if target else PostgresPresence)
    assert a.alone()
    a.arrive()
    assert not b.alone()
    b.arrive()
    a.keep()
    a.leave()
    assert not c.alone(), "b still receives"
    b.leave()
    wait_for(c.alone, 10, "the last receiving node to be gone")
    c.arrive()
    c.leave()


def test_an_interruption_is_cleared_only_by_an_association_begun_after_it(open_db):
    index = Index(open_db())
    index.record(InstanceRecord("1.2", "1.2.3", "1.2.3.4", CT, "spool/a.dcm", 10), now=100.0)
    index.mark_interrupted(["1.2.3"], now=110.0)  # an association lost mid-push

    def interrupted() -> float | None:
        return index.series_of("1.2")[0].interrupted_at

    index.mark_released(["1.2.3"], started=50.0, now=120.0)  # one running beside it
    assert interrupted() == 110.0
    index.mark_released(["1.2.3"], started=115.0, now=130.0)  # the sender's retry
    assert interrupted() is None


def test_an_sqlite_file_from_before_schema_versions_is_migrated(tmp_path: Path):
    old = sqlite3.connect(tmp_path / "node.sqlite")
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT"
        " NOT NULL, rule TEXT NOT NULL, pipeline TEXT NOT NULL, input_digest TEXT NOT NULL,"
        " inputs TEXT NOT NULL, destinations TEXT NOT NULL, state TEXT NOT NULL, reason TEXT"
        " NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, enqueued_at REAL, started_at REAL, finished_at REAL,"
        " timings TEXT NOT NULL DEFAULT '{}', summary TEXT NOT NULL DEFAULT '{}',"
        " UNIQUE (series_uid, rule, input_digest));"
        "INSERT INTO jobs (study_uid, series_uid, rule, pipeline, input_digest, inputs,"
        " destinations, state, created_at, updated_at) VALUES ('1.2', '1.2.3', 'r', 'p', 'd',"
        " '[]', '[]', 'done', 0, 0); PRAGMA user_version = 2;"
    )
    old.close()
    db = open_database(tmp_path / "node.sqlite")
    job = Jobs(db).get(1)
    assert job is not None and (job.state, job.ticket, job.queue, job.lane) == (
        "done", 0, "default", "normal")  # fmt: skip
    assert db.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION


def test_a_postgresql_database_of_schema_version_5_gets_the_record_function():
    url = postgres.fresh_database()
    db = open_database(url)
    with db.transaction() as conn:  # as a node of schema version 5 left it
        conn.execute("DROP FUNCTION index_record")
        conn.execute("UPDATE schema_version SET version = 5")
    db.close()
    db = open_database(url)
    try:
        rec = InstanceRecord("1.2", "1.2.3", "1.2.3.4", CT, "spool/a.dcm", 10)
        assert Index(db).record(rec) == (True, None)
        assert db.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION
    finally:
        db.close()


def test_an_instance_filed_again_under_another_series_moves_there_on_both_engines(open_db):
    index = Index(open_db())
    facts = {"00080060": ["CT"]}
    index.record(InstanceRecord("1.2", "1.2.3", "1.2.3.9", CT, "spool/a.dcm", 10, facts=facts))
    index.record(InstanceRecord("1.2", "1.2.3", "1.2.3.8", CT, "spool/b.dcm", 10, facts=facts))
    removed: list[str] = []
    new, replaced = index.record(
        InstanceRecord("1.2", "1.2.4", "1.2.3.9", CT, "spool/c.dcm", 10, facts=facts),
        remove=removed.append,
    )
    assert (new, replaced, removed) == (True, None, ["spool/a.dcm"])
    assert {s.series_uid: s.instances for s in index.series_of("1.2")} == {"1.2.3": 1, "1.2.4": 1}
    assert index.record(
        InstanceRecord("1.2", "1.2.4", "1.2.3.9", CT, "spool/c.dcm", 10, facts=facts)
    ) == (False, None)
    [study] = index.studies_to_route()
    assert study.revision == 3
    [_, moved] = index.series_of("1.2")
    assert moved.facts["00080060"] == ["CT"] and moved.first_received > 0


def test_a_database_password_never_reaches_logs_or_status():
    assert redact("postgresql://node:s3cret@db.example:5432/dicom") == (
        "postgresql://node:***@db.example:5432/dicom"
    )
    assert redact("postgresql://postgres@127.0.0.1/x") == "postgresql://postgres@127.0.0.1/x"


def test_a_batch_merges_each_series_facts_and_another_node_sees_them(open_db):
    a, b = Index(open_db()), Index(open_db())

    def rec(series: str, n: int, thickness: str) -> InstanceRecord:
        return InstanceRecord("1.2", series, f"{series}.{n}", CT, f"spool/{series}/{n}.dcm", 1,
                              facts={"00080060": ["CT"], "00180050": [thickness]})  # fmt: skip

    batch = [rec("1.2.3", 1, "1"), rec("1.2.4", 1, "5"), rec("1.2.3", 2, "2"), rec("1.2.3", 1, "1")]
    results = a.record_batch([(r, None) for r in batch])
    assert results == [(True, None), (True, None), (True, None), (False, None)]
    b.record(rec("1.2.3", 3, "3"))  # another node: its facts are read from the table
    a.record(rec("1.2.3", 4, "4"))  # a's cached facts are stale now
    s3, s4 = a.series_of("1.2")
    assert (s3.instances, s3.facts["00180050"]) == (4, ["1", "2", "3", "4"])
    assert (s4.instances, s4.facts["00180050"]) == (1, ["5"])
    [study] = b.studies_to_route()
    assert study.revision == 5


def test_two_nodes_batches_over_two_studies_in_opposite_orders_all_commit(open_db):
    """Locks and rows are taken in one order whatever the batch's order: no deadlock."""
    nodes = [Index(open_db()), Index(open_db())]
    errors: list[BaseException] = []

    def store(i: int) -> None:
        try:
            for n in range(15):
                # threads 0, 2 fill series .0 of both studies, 1, 3 series .1; 2, 3 backwards
                batch = [InstanceRecord(st, f"{st}.{i % 2}", f"{st}.{i}.{n}", CT, f"p/{i}.{n}", 1)
                         for st in ("1.2", "1.5")]  # fmt: skip
                nodes[i % 2].record_batch([(r, None) for r in (batch if i < 2 else batch[::-1])])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for study in ("1.2", "1.5"):
        assert [(s.series_uid, s.instances) for s in nodes[0].series_of(study)] == [
            (f"{study}.0", 30), (f"{study}.1", 30)]  # fmt: skip


def test_opening_a_postgresql_database_never_waits_for_a_receiver_mid_transaction():
    """``dicom-node status`` (or a second node starting) opens the database while a
    receiver's index transaction holds its row locks: opening reads the schema
    version and takes no table lock, so neither waits for the other."""
    url = postgres.fresh_database()
    db = open_database(url)
    inside, go = threading.Event(), threading.Event()

    def place() -> None:
        inside.set()
        assert go.wait(60)

    rec = InstanceRecord("1.2", "1.2.3", "1.2.3.4", CT, "spool/a.dcm", 10)
    receiver = threading.Thread(target=lambda: Index(db).record(rec, place=place))
    receiver.start()
    try:
        assert inside.wait(30)
        opened: list[object] = []
        opener = threading.Thread(target=lambda: opened.append(open_database(url).close()))
        opener.start()
        wait_for(lambda: not opener.is_alive(), 20, "the database to open")
    finally:
        go.set()
        receiver.join(30)
        db.close()
    assert opened == [None]
