"""The node's database: SQLite (one file, the embedded default) or PostgreSQL (by URL).

The tables are owned by the modules that write them: ``index`` (studies,
series, instances), ``jobs`` (jobs) and ``outbox`` (outbox). This module opens
connections, creates and migrates the schema, and hides the two dialects'
differences behind one small interface:

- ``transaction()`` yields a connection whose ``execute(sql, params)`` takes
  ``?`` placeholders on both engines; rows answer ``row["column"]`` and
  ``row[0]``. ``transaction(pipeline=True)``: PostgreSQL sends statements
  without waiting for their answers until a result is read (and sends BEGIN
  with the first, COMMIT with the last), so a statement's error may surface
  only at the next read or at the commit; SQLite runs in process and has
  nothing to batch;
- ``lock(conn, key)`` serialises transactions on one key (SQLite: every write
  transaction is already serial; PostgreSQL: a transaction-scoped advisory
  lock), for read-then-write sequences that two receiving nodes could race on;
- ``transient_errors``: what a caller may retry at its next round.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed row survives a
power cut, and readers never block the SCP. ``transaction(durable=False)``
commits without waiting for the disk: on SQLite ``synchronous=NORMAL`` for that
commit (a power cut may undo it and later such commits, never an earlier or a
durable one, and never corrupts), on PostgreSQL ``synchronous_commit`` off for
that transaction (a server crash may undo it and later such commits, never an
earlier or a synchronous one). The receiving side uses it because the spool
can give back what it would lose (``commit``); on PostgreSQL the server can
fail while the node runs, so the leader checks before every round that it has
not (``epoch``). Every other commit is durable.
The schema version lives in the ``schema_version`` table on both; a database
newer than this code is refused, never written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

# The schema as of this version. ``{id}``, ``{real}`` and ``{big}`` are the two
# dialects' names for an auto-numbered key, a double and a 64-bit integer.
SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    revision         {big} NOT NULL DEFAULT 0,
    routed_revision  {big} NOT NULL DEFAULT 0,
    first_received   {real} NOT NULL,
    last_received    {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid       TEXT PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    modality         TEXT NOT NULL DEFAULT '',
    body_part        TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    protocol_name    TEXT NOT NULL DEFAULT '',
    manufacturer     TEXT NOT NULL DEFAULT '',
    sop_class_uid    TEXT NOT NULL DEFAULT '',
    instances        {big} NOT NULL DEFAULT 0,
    last_received    {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid          TEXT PRIMARY KEY,
    series_uid       TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    path             TEXT NOT NULL,
    size             {big} NOT NULL,
    received_at      {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id               {id},
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    rule             TEXT NOT NULL,
    pipeline         TEXT NOT NULL,
    input_digest     TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    destinations     TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    attempts         {big} NOT NULL DEFAULT 0,
    created_at       {real} NOT NULL,
    updated_at       {real} NOT NULL,
    enqueued_at      {real},
    started_at       {real},
    finished_at      {real},
    timings          TEXT NOT NULL DEFAULT '{{}}',
    summary          TEXT NOT NULL DEFAULT '{{}}',
    UNIQUE (series_uid, rule, input_digest)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS outbox (
    id               {id},
    job_id           {big} NOT NULL,
    destination      TEXT NOT NULL,
    path             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         {big} NOT NULL DEFAULT 0,
    next_attempt_at  {real} NOT NULL,
    last_error       TEXT NOT NULL DEFAULT '',
    sent_at          {real},
    UNIQUE (job_id, destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS schema_version (
    version          INTEGER NOT NULL
);
"""

# Columns added after the first release: (version, table, column, definition).
# Applied at open when missing; ``schema_version`` records the newest applied.
ADDED_COLUMNS: tuple[tuple[int, str, str, str], ...] = (
    (2, "jobs", "ticket", "{big} NOT NULL DEFAULT 0"),
    (2, "jobs", "beat", "TEXT NOT NULL DEFAULT ''"),
    (2, "jobs", "beat_at", "{real}"),
    (2, "jobs", "not_before", "{real}"),
    # 3: routing rules (header facts, triggers, per-run queue, lane, priority, parameters)
    (3, "series", "facts", "TEXT NOT NULL DEFAULT '{{}}'"),
    (3, "series", "first_received", "{real}"),
    (3, "series", "released_at", "{real}"),
    (3, "jobs", "queue", "TEXT NOT NULL DEFAULT 'default'"),
    (3, "jobs", "lane", "TEXT NOT NULL DEFAULT 'normal'"),
    (3, "jobs", "priority", "{big} NOT NULL DEFAULT 5"),
    (3, "jobs", "parameters", "TEXT NOT NULL DEFAULT '{{}}'"),
    # 4: the facts' revision, so a receiver re-reads them only when another changed them
    (4, "series", "facts_rev", "{big} NOT NULL DEFAULT 0"),
    # 5: when the instances not yet routed started arriving (forced-completion timeouts)
    (5, "studies", "pending_since", "{real}"),
    # 7: when an association that brought instances of the series ended unfinished
    # (aborted, lost, or with failed stores): routing holds the series for the retry
    (7, "series", "interrupted_at", "{real}"),
)
# 6: PostgreSQL only: the functions of ``index.POSTGRES_FUNCTIONS`` (created by
# ``postgres``; SQLite has nothing to add).
# 8: PostgreSQL only: the unlogged ``server_epoch`` table (``epoch``).
SCHEMA_VERSION = 8
assert SCHEMA_VERSION >= max(version for version, *_ in ADDED_COLUMNS)

SQLITE_TYPES = {"id": "INTEGER PRIMARY KEY", "real": "REAL", "big": "INTEGER"}
POSTGRES_TYPES = {
    "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "real": "DOUBLE PRECISION",
    "big": "BIGINT",
}


class SchemaTooNew(RuntimeError):
    """The database was written by a newer node; this one must not touch it."""


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...
    def keys(self) -> Any: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    """What the tables' owners need from either engine."""

    transient_errors: tuple[type[BaseException], ...]
    url: str
    dialect: str  # "sqlite" or "postgresql", for the few statements that differ

    def transaction(
        self, pipeline: bool = False, durable: bool = True
    ) -> AbstractContextManager[Connection]: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    def lock(self, conn: Connection, key: str) -> None: ...
    def close(self) -> None: ...


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_database(target: str | Path) -> Database:
    """SQLite for a path, PostgreSQL for a ``postgresql://`` URL."""
    if isinstance(target, str) and is_postgres_url(target):
        from dicom_node.postgres import PostgresDatabase

        return PostgresDatabase(target)
    return SqliteDatabase(Path(target))


def check_version(found: int | None) -> None:
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {found}, newer than this node's"
            f" {SCHEMA_VERSION}: upgrade the node, or point storage.database elsewhere"
        )


def lock_number(key: str) -> int:
    """A stable signed 64-bit number for an advisory lock on ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class SqliteDatabase:
    """Hands each thread its own connection to the same SQLite file."""

    transient_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        with self._write_lock:
            conn = self.connection()
            conn.executescript(SCHEMA.format(**SQLITE_TYPES))  # commits by itself
            self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            check_version(row[0])
            if row[0] is None or row[0] < SCHEMA_VERSION:
                for _, table, column, definition in ADDED_COLUMNS:
                    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        ddl = definition.format(**SQLITE_TYPES)
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, pipeline: bool = False, durable: bool = True) -> Iterator[Connection]:
        """A write transaction; writers queue on one lock instead of spinning on
        SQLITE_BUSY: a thread lock within the process and an ``flock`` on
        ``<database>.lock`` between processes (several receiving processes share
        one index), which wakes the next writer at once where SQLite's busy
        handler would sleep. ``pipeline`` changes nothing in process;
        ``durable=False``: the commit does not wait for the disk."""
        conn = self.connection()
        with self._write_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def lock(self, conn: Connection, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already makes write transactions serial."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
