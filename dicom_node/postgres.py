"""PostgreSQL behind the ``state.Database`` interface (psycopg 3 and its pool).

Used when ``storage.database`` is a ``postgresql://`` URL, so several receiving
nodes can share one job table and no database file needs to sit on shared
storage. Statements are written once, with ``?`` placeholders, for both
engines; this module turns them into psycopg's ``%s``. Transactions run at
READ COMMITTED: every state change is a guarded ``UPDATE … WHERE state IN
(…)`` (re-checked by PostgreSQL after it takes the row lock) or an
``INSERT … ON CONFLICT``, and read-then-write sequences take an advisory lock
on their key first (``lock``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

from dicom_node.index import POSTGRES_FUNCTIONS
from dicom_node.state import (
    ADDED_COLUMNS,
    POSTGRES_TYPES,
    SCHEMA,
    SCHEMA_VERSION,
    Connection,
    Cursor,
    check_version,
    lock_number,
)

# The advisory lock that makes schema creation one node's job at a time.
SCHEMA_LOCK = lock_number("dicom-node schema")


class PgRow(tuple[Any, ...]):
    """A row that answers by position and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=256)
def _row_type(names: tuple[str, ...]) -> type[PgRow]:
    return type("Row", (PgRow,), {"_names": {name: i for i, name in enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    # One class per set of column names, made once: a receiver reads rows of
    # the same few statements for every instance.
    row_type = _row_type(tuple(col.name for col in cursor.description or ()))

    def make(values: Sequence[Any]) -> PgRow:
        return row_type(values)  # type: ignore[no-any-return]

    return make


@lru_cache(maxsize=512)
def to_psycopg(statement: str) -> str:
    """``?`` placeholders to ``%s``; a literal ``%`` is doubled."""
    return re.sub(r"\?", "%s", statement.replace("%", "%%"))


def redact(url: str) -> str:
    """The URL without its password, for logs and status output."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


class _Conn:
    """One pooled connection inside a transaction, taking ``?`` statements."""

    def __init__(self, conn: psycopg.Connection[PgRow]) -> None:
        self.raw = conn

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(to_psycopg(statement), tuple(params))  # type: ignore[arg-type]

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(to_psycopg(statement), [tuple(p) for p in params])  # type: ignore[arg-type]


class PostgresDatabase:
    transient_errors: tuple[type[BaseException], ...] = (
        psycopg.OperationalError,
        psycopg.errors.SerializationFailure,
        psycopg.errors.DeadlockDetected,
    )
    dialect = "postgresql"

    def __init__(self, url: str, max_size: int = 16) -> None:
        self.url = redact(url)
        self._conninfo = url
        self._pool: ConnectionPool[psycopg.Connection[PgRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"row_factory": _row_factory, "connect_timeout": 10},
            open=False,
            name="dicom-node",
        )
        self._pool.open(wait=True, timeout=30)
        self._create_schema()

    def _create_schema(self) -> None:
        """Create or migrate the tables, one node at a time. A database already at
        this version is only read: DDL on it (even ``CREATE INDEX IF NOT EXISTS``)
        would take table locks against the running nodes' writes, and a receiver's
        transaction could deadlock with every ``dicom-node status``."""
        statements = [s.strip() for s in SCHEMA.format(**POSTGRES_TYPES).split(";") if s.strip()]
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is not None:
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                check_version(row[0])
                if row[0] == SCHEMA_VERSION:
                    return
            for statement in statements:
                conn.execute(statement)
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            check_version(row[0])
            if row[0] is None or row[0] < SCHEMA_VERSION:
                for _, table, column, definition in ADDED_COLUMNS:
                    ddl = definition.format(**POSTGRES_TYPES)
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {ddl}")
                for function in POSTGRES_FUNCTIONS:
                    conn.execute(function)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def transaction(self, pipeline: bool = False) -> Iterator[Connection]:
        with self._pool.connection() as raw:
            if not pipeline:
                with raw.transaction():
                    yield _Conn(raw)
                return
            # Not raw.transaction(): in a pipeline it syncs and waits four times
            # (after BEGIN, before and after COMMIT, at the end). Here BEGIN goes
            # out with the first statement, a read waits for what it reads, and
            # COMMIT goes with the pipeline's one Sync, answered when durable.
            raw.autocommit = True  # BEGIN and COMMIT are sent as statements
            try:
                with raw.pipeline():
                    raw.execute("BEGIN")
                    yield _Conn(raw)
                    raw.execute("COMMIT")
            finally:
                try:
                    if not raw.closed:
                        raw.rollback()  # nothing when committed; ends a failed one
                        raw.autocommit = False
                except psycopg.Error:  # a broken connection: the pool replaces it
                    pass

    def lock(self, conn: Connection, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (lock_number(key),))

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._pool.connection() as raw:
            return raw.execute(to_psycopg(statement), tuple(params)).fetchall()  # type: ignore[arg-type]

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (the leader lease holds one)."""
        return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10, **options)

    def close(self) -> None:
        self._pool.close()


def create_database(server_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` on the server (tests and ``bench/``)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )
