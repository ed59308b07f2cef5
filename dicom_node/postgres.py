"""PostgreSQL behind the ``state.Database`` interface (psycopg 3 and its pool).

Used when ``storage.database`` is a ``postgresql://`` URL, so several receiving
nodes can share one job table and no database file needs to sit on shared
storage. Statements are written once, with ``?`` placeholders, for both
engines; this module turns them into psycopg's ``%s``. Transactions run at
READ COMMITTED: every state change is a guarded ``UPDATE … WHERE state IN
(…)`` (re-checked by PostgreSQL after it takes the row lock) or an
``INSERT … ON CONFLICT``, and read-then-write sequences take an advisory lock
on their key first (``lock``).

``transaction(pipeline=True)`` (a receiver's ``Index.record_batch``) does not
go through psycopg's cursors but through libpq's pipeline mode on the pooled
connection's ``pgconn`` (``Pipeline``): statements prepared once per
connection, parameters and answers in text, no cursor, adapter map or column
objects per statement. psycopg costs about 0.3 ms of CPU per received
instance more, as much as the server's work on it.
"""

from __future__ import annotations

import itertools
import re
import select
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

from dicom_node.epoch import POSTGRES_TABLE as EPOCH_TABLE
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


_statement_numbers = itertools.count(1)


@cache  # the few constant statements ``Pipeline`` is given
def _prepared_name(statement: str) -> tuple[bytes, bytes]:
    """A ``?`` statement's name for libpq's prepared statements, and its text with
    ``$1``, ``$2``… (one name per statement text, the same on every connection)."""
    numbers = itertools.count(1)
    text = re.sub(r"\?", lambda _: f"${next(numbers)}", statement)
    return f"dicom_node_{next(_statement_numbers)}".encode(), text.encode()


def _text(value: Any, encoding: str) -> bytes | None:
    """A parameter in PostgreSQL's text form (the server takes its type from the
    prepared statement)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode(encoding)
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, list) and all(type(v) is int for v in value):
        return ("{" + ",".join(map(str, value)) + "}").encode()
    raise TypeError(f"no text form for a parameter of type {type(value).__name__}")


# Column types read from text answers other than as str (OIDs of bool, int8,
# int2, int4, float4, float8).
_LOADERS: dict[int, Callable[[bytes], Any]] = {
    16: lambda b: b == b"t",
    20: int,
    21: int,
    23: int,
    700: float,
    701: float,
}


class Answer:
    """The answer to one statement sent in a ``Pipeline``, read when asked for."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._rows: list[PgRow] | None = None
        self.rowcount = -1

    def fetchone(self) -> Any:
        rows = self.fetchall()
        return rows[0] if rows else None

    def fetchall(self) -> list[Any]:
        if self._rows is None:
            self._pipeline.read_to(self)
        return self._rows or []

    def take(self, result: pq.abc.PGresult, encoding: str) -> None:
        self._rows = []
        self.rowcount = result.command_tuples if result.command_tuples is not None else -1
        if result.status != pq.ExecStatus.TUPLES_OK:
            return
        names = tuple((result.fname(i) or b"").decode(encoding) for i in range(result.nfields))
        loaders = [_LOADERS.get(result.ftype(i)) for i in range(result.nfields)]
        row_type = _row_type(names)
        for n in range(result.ntuples):
            values: list[Any] = []
            for i, load in enumerate(loaders):
                data = result.get_value(n, i)
                if data is None:
                    values.append(None)
                else:
                    values.append(load(data) if load is not None else data.decode(encoding))
            self._rows.append(row_type(values))


class Pipeline:
    """One transaction on a pooled connection through libpq's pipeline mode
    (``transaction(pipeline=True)``): the statements up to the pipeline's one
    Sync are one transaction, the protocol's implicit one (no BEGIN or COMMIT
    is sent: the server commits at the Sync, and answers it when committed). A
    read sends what is queued and waits for the answers up to its own; a
    statement's error rolls everything back at the Sync. Statements take ``?``
    placeholders and are prepared on the connection the first time it runs
    them; parameters are None, str, bool, int, float or a list of int.

    psycopg's own state is not used and stays as it was (idle, not in a
    transaction); ``PostgresDatabase.transaction`` closes the connection on any
    error, which ends the transaction in the server (rows and locks gone) and
    makes the pool replace it."""

    def __init__(self, conn: psycopg.Connection[Any], prepared: set[bytes]) -> None:
        self._pg = conn.pgconn
        self._encoding = conn.info.encoding
        self._prepared = prepared  # names prepared on this connection
        self._queued: list[Answer] = []  # sent, answers not read yet, in order
        self._unflushed = False
        self._poll = select.poll()

    def begin(self) -> None:
        self._pg.enter_pipeline_mode()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Answer:
        name, text = _prepared_name(statement)
        if name not in self._prepared:
            self._pg.send_prepare(name, text)
            self._queued.append(Answer(self))
            self._prepared.add(name)  # a failed Parse closes the connection
        self._pg.send_query_prepared(name, [_text(v, self._encoding) for v in params])
        answer = Answer(self)
        self._queued.append(answer)
        self._unflushed = True
        return answer

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> None:
        for one in params:
            self.execute(statement, one)

    def flush(self) -> None:
        """Send what is queued now, the server asked to answer without a Sync."""
        if self._unflushed:
            self._pg.send_flush_request()
            self._unflushed = False
        self._send()

    def commit(self) -> None:
        self._pg.pipeline_sync()
        sync = Answer(self)
        self._queued.append(sync)
        self._unflushed = False
        self._send()
        self.read_to(sync)
        self._pg.exit_pipeline_mode()
        if self._pg.transaction_status != pq.TransactionStatus.IDLE:
            raise psycopg.InterfaceError("the transaction is still open after the Sync")

    def read_to(self, answer: Answer) -> None:
        """Read the answers of the statements sent up to ``answer``; raises the
        first statement's error (the server skips the rest until the Sync)."""
        self.flush()
        while self._queued:
            head = self._queued.pop(0)
            result = self._next_result()
            status = result.status
            if status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=self._encoding)
            if status not in _ANSWERED:
                raise psycopg.OperationalError(f"unexpected answer {pq.ExecStatus(status).name}")
            head.take(result, self._encoding)
            if head is answer:
                return

    def _next_result(self) -> pq.abc.PGresult:
        while True:
            while self._pg.is_busy():
                self._wait(select.POLLIN)
                self._pg.consume_input()
            result = self._pg.get_result()
            if result is not None:  # None: the end of one statement's answers
                return result

    def _send(self) -> None:
        while self._pg.flush():  # non-blocking: 1 while data is left to send
            if self._wait(select.POLLIN | select.POLLOUT) & select.POLLIN:
                self._pg.consume_input()  # the server may wait for us to read

    def _wait(self, events: int) -> int:
        self._poll.register(self._pg.socket, events)
        ready = 0
        for _, happened in self._poll.poll():
            ready |= happened
        return ready


# The setting lasts to the end of the transaction: the commit reads it.
_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"

_ANSWERED = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.PIPELINE_SYNC)


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
        # The statements prepared through libpq (``Pipeline``), per connection.
        self._prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._prepared_lock = threading.Lock()
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
                conn.execute(EPOCH_TABLE)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    @contextmanager
    def transaction(self, pipeline: bool = False, durable: bool = True) -> Iterator[Connection]:
        """``durable=False``: the commit does not wait for the server's disk (see
        ``pipeline``)."""
        if pipeline:
            with self.pipeline(durable) as pipe:
                yield pipe
            return
        with self._pool.connection() as raw, raw.transaction():
            if not durable:
                raw.execute(_ASYNC_COMMIT)
            yield _Conn(raw)

    @contextmanager
    def pipeline(self, durable: bool = True) -> Iterator[Pipeline]:
        """``transaction(pipeline=True)``, typed: its ``flush`` sends the statements
        queued so far. Not psycopg's pipeline: its transaction() syncs and waits
        four times, and its cursors cost more CPU than the server's work.

        ``durable=False``: this transaction commits with ``synchronous_commit``
        off (``set_config(…, true)``: for this transaction only, so the pooled
        connection's next user commits synchronously again): the server answers
        the Sync before its WAL is on disk, and a server crash in the next moments
        loses it (``epoch`` finds and repairs that). One more statement in the
        same round trip; measured at about 0.025 ms per transaction more than a
        pool of connections set to it for the session, which would hold
        connections of its own."""
        with self._pool.connection() as raw:
            with self._prepared_lock:
                prepared = self._prepared.setdefault(raw, set())
            pipe = Pipeline(raw, prepared)
            try:
                pipe.begin()
                if not durable:
                    pipe.execute(_ASYNC_COMMIT)
                yield pipe
                pipe.commit()
            except BaseException:
                raw.close()  # the server rolls back; the pool replaces the connection
                raise

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
