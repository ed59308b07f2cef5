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
