"""The node's SQLite database: one file, one connection per thread, one schema.

The tables are owned by the modules that write them: ``index`` (studies,
series, instances), ``jobs`` (jobs) and ``outbox`` (outbox). This module only
opens connections and creates the schema. WAL mode with ``synchronous=FULL``:
a committed row survives a power cut, and readers never block the SCP.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    revision         INTEGER NOT NULL DEFAULT 0,
    routed_revision  INTEGER NOT NULL DEFAULT 0,
    first_received   REAL NOT NULL,
    last_received    REAL NOT NULL
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
    instances        INTEGER NOT NULL DEFAULT 0,
    last_received    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid          TEXT PRIMARY KEY,
    series_uid       TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    path             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    received_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id               INTEGER PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    rule             TEXT NOT NULL,
    pipeline         TEXT NOT NULL,
    input_digest     TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    destinations     TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    attempts         INTEGER NOT NULL DEFAULT 0,
    ticket           INTEGER NOT NULL DEFAULT 0,
    beat             TEXT NOT NULL DEFAULT '',
    beat_at          REAL,
    not_before       REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    enqueued_at      REAL,
    started_at       REAL,
    finished_at      REAL,
    timings          TEXT NOT NULL DEFAULT '{}',
    summary          TEXT NOT NULL DEFAULT '{}',
    UNIQUE (series_uid, rule, input_digest)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL,
    destination      TEXT NOT NULL,
    path             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT NOT NULL DEFAULT '',
    sent_at          REAL,
    UNIQUE (job_id, destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox(state, next_attempt_at);
"""


# Columns added after the first release: (table, column, definition). Applied at
# open by ``_migrate`` when missing; ``PRAGMA user_version`` records the schema.
SCHEMA_VERSION = 5
ADDED_COLUMNS = (
    ("jobs", "ticket", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "beat", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "beat_at", "REAL"),
    ("jobs", "not_before", "REAL"),
    # 3: routing rules (header facts, triggers, per-run queue, lane, priority, parameters)
    ("series", "facts", "TEXT NOT NULL DEFAULT '{}'"),
    ("series", "first_received", "REAL"),
    ("series", "released_at", "REAL"),
    ("jobs", "queue", "TEXT NOT NULL DEFAULT 'default'"),
    ("jobs", "lane", "TEXT NOT NULL DEFAULT 'normal'"),
    ("jobs", "priority", "INTEGER NOT NULL DEFAULT 5"),
    ("jobs", "parameters", "TEXT NOT NULL DEFAULT '{}'"),
    # 4: the facts' revision, so a receiver re-reads them only when another changed them
    ("series", "facts_rev", "INTEGER NOT NULL DEFAULT 0"),
    # 5: when the instances not yet routed started arriving (forced-completion timeouts)
    ("studies", "pending_since", "REAL"),
)


class Database:
    """Hands each thread its own connection to the same SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        with self._write_lock:
            conn = self.connection()
            conn.executescript(SCHEMA)  # executescript commits by itself
            self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        for table, column, definition in ADDED_COLUMNS:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; writers queue on one lock instead of spinning on
        SQLITE_BUSY: a thread lock within the process and an ``flock`` on
        ``<database>.lock`` between processes (several receiving processes share
        one index), which wakes the next writer at once where SQLite's busy
        handler would sleep."""
        conn = self.connection()
        with self._write_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
