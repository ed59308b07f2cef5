"""PostgreSQL's pipelined transaction (libpq's pipeline mode, no psycopg cursor):
values both ways, errors by class, nothing left behind by a failed transaction."""

from __future__ import annotations

import threading

import psycopg
import pytest

from dicom_node.postgres import PostgresDatabase
from dicom_node.state import open_database
from tests.support import postgres


@pytest.fixture
def db():
    opened = open_database(postgres.fresh_database())
    assert isinstance(opened, PostgresDatabase)
    yield opened
    opened.close()


def test_a_pipeline_sends_and_reads_back_each_kind_of_value(db):
    with db.pipeline() as conn:
        row = conn.execute(
            "SELECT ?::text AS s, ?::bigint AS i, ?::float8 AS f, ?::boolean AS b,"
            " ?::text AS n, cardinality(?::bigint[]) AS a, ?::text AS u",
            ("1.2.3", -(2**63), 1733443200.123456, False, None, [1, -2, 3], "Ünïcode"),
        ).fetchone()
    assert tuple(row) == ("1.2.3", -(2**63), 1733443200.123456, False, None, 3, "Ünïcode")
    assert (row["s"], row["f"]) == ("1.2.3", 1733443200.123456)


def test_a_pipelines_statements_are_one_transaction_committed_at_its_end(db):
    with db.pipeline() as conn:
        first = conn.execute("SELECT pg_current_xact_id()::text AS x")
        conn.execute(
            "INSERT INTO studies (study_uid, first_received, last_received) VALUES (?, 0, 0)",
            ("1.2",),
        )
        assert (
            first.fetchone()["x"] == conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        )
        assert db.query("SELECT COUNT(*) FROM studies")[0][0] == 0, "not committed yet"
    assert db.query("SELECT COUNT(*) FROM studies")[0][0] == 1


def test_a_failed_statement_raises_its_error_class_and_nothing_of_its_transaction_stays(db):
    insert = "INSERT INTO studies (study_uid, first_received, last_received) VALUES (?, 0, 0)"
    with pytest.raises(psycopg.errors.UniqueViolation), db.pipeline() as conn:
        db.lock(conn, "series 1.2.3")
        conn.execute(insert, ("1.2",))
        conn.execute(insert, ("1.2",))  # answered at the COMMIT: the first error raises
    assert db.query("SELECT COUNT(*) FROM studies")[0][0] == 0
    taken = threading.Event()

    def other_node() -> None:  # the lock ended with the transaction
        with db.transaction() as conn:
            db.lock(conn, "series 1.2.3")
            taken.set()

    thread = threading.Thread(target=other_node)
    thread.start()
    thread.join(30)
    assert taken.is_set()
    with db.pipeline() as conn:  # the statements are prepared again on a new connection
        conn.execute(insert, ("1.2",))
    assert db.query("SELECT study_uid FROM studies")[0][0] == "1.2"


def test_an_error_of_the_caller_mid_transaction_rolls_it_back(db):
    with pytest.raises(OSError, match="disk"), db.pipeline() as conn:
        conn.execute(
            "INSERT INTO studies (study_uid, first_received, last_received) VALUES (?, 0, 0)",
            ("1.2",),
        )
        conn.flush()
        raise OSError("disk full")
    assert db.query("SELECT COUNT(*) FROM studies")[0][0] == 0


def test_thousands_of_statements_before_the_first_read_do_not_block(db):
    """The answers fill the socket's buffers while the statements are still being
    sent: the pipeline reads them meanwhile instead of waiting on both sides."""
    with db.pipeline() as conn:
        answers = [conn.execute("SELECT repeat('x', 2000), ?::bigint", (n,)) for n in range(3000)]
        assert answers[-1].fetchone()[1] == 2999
        assert answers[0].fetchone()[1] == 0
