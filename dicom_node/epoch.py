"""The PostgreSQL server's epoch: no decision rests on an index row the server lost.

On PostgreSQL a receiver commits its index rows without waiting for the
server's disk (``synchronous_commit`` off for that one transaction, see
``postgres.Pipeline``): the instance is already sealed in the spool, and the
spool can give back what a lost commit loses. When the server crashes (killed,
an immediate shutdown, a backend crash that makes it restart, the host's power
cut), its recent such commits are gone while the node keeps running, so no
start-up reconcile files them again; a series routed then would run on part of
its instances.

Crash detection is an UNLOGGED table, ``server_epoch``, holding one row: a
token and whether the index was whole when it was set. PostgreSQL resets every
unlogged table to empty whenever it starts from anything but a clean shutdown
(its documentation: "an unlogged table is automatically truncated after a crash
or unclean shutdown", CREATE TABLE; the init fork is copied over it "when an
unlogged table must be reset to empty due to a crash", Database Physical
Storage), and never writes one to WAL, so a promoted standby or a restored base
backup starts with it empty too. A clean shutdown (smart or fast) flushes all
WAL, asynchronous commits included, and keeps the table. These are exactly the
cases in which asynchronous commits are lost ("an immediate-mode shutdown is
equivalent to a server crash, and will therefore cause loss of any unflushed
asynchronous commits", Asynchronous Commit). A logical dump (``pg_dump``) does
copy the row: after restoring one, ``TRUNCATE server_epoch`` (docs/operations.md).

The leader checks the epoch every round before it decides (``check``). Missing:
it writes a new token not yet whole, files every sealed spool file no index row
names (``scp.reconcile_spool(sweep=False)``: of any age, removing nothing; a
file a live receiver is committing at that moment is filed twice, which is
harmless: the second ``index_record`` waits on the instance's lock and finds
the row), then marks the token whole with a synchronous commit. A crash during
the filing empties the table, the mark changes no row, and the next round
starts again. A node alone at start does the same around its start-up
reconcile (``at_start``), and so does an operator's ``dicom-node purge``
before it deletes a series by its rows.

Why that is enough: the WAL is one sequence, flushed in order, so a synchronous
commit, which waits until the WAL is flushed up to its own commit record, makes
every transaction that committed before it durable too, asynchronous ones
included. Every decision the leader takes is a synchronous commit (``guarded``):
the rows it read were committed before it, so once it returns, none of them can
be lost. A row that can still be lost is one a crash takes together with the
epoch's row. (tests/integration/test_database_crash.py sees it: with the WAL
writer stopped, the asynchronous commits of a series' first half survive an
immediate shutdown because the association's release, a synchronous commit,
came after them; the second half's, with no synchronous commit after them, are
lost.)

And the window between the check and a decision: every transaction of the
deciding objects (``Guarded``) first checks, inside itself, that the token the
round began with is still there and whole; a crash since (table empty) or
another leader's re-filing (a new token) makes it raise ``ServerRestarted``,
which rolls the decision back; the next round checks again.

SQLite has nothing to do here (``NoEpoch``): its asynchronous commits are lost
only with the node's own host, and the node's start-up reconcile files them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from dicom_node.state import Connection, Database

logger = logging.getLogger(__name__)

# Created by ``postgres`` (schema version 8).
POSTGRES_TABLE = (
    "CREATE UNLOGGED TABLE IF NOT EXISTS server_epoch ("
    " token TEXT PRIMARY KEY, whole BOOLEAN NOT NULL DEFAULT FALSE)"
)


class ServerRestarted(RuntimeError):
    """The database server lost its epoch since this round began: nothing may be
    decided on what was read; the next round files the spool again first."""


class Epoch(Protocol):
    def check(self, refile: Callable[[], None]) -> bool:
        """Before a round of decisions: True when the server had lost its epoch and
        ``refile`` ran (all sealed, unindexed spool files filed)."""

    def at_start(self, refile: Callable[[], None]) -> None:
        """A node alone on its database, at start: ``refile`` (its start-up
        reconcile, which files everything) runs, and the epoch is set if missing."""

    def guard(self, conn: Connection) -> None:
        """Inside a deciding transaction: raise ``ServerRestarted`` unless the epoch
        of the last ``check`` is still the server's."""


class NoEpoch:
    """SQLite: commits are lost only with the node's host, found at the next start."""

    def check(self, refile: Callable[[], None]) -> bool:
        return False

    def at_start(self, refile: Callable[[], None]) -> None:
        refile()

    def guard(self, conn: Connection) -> None:
        return None


class ServerEpoch:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.token: str | None = None  # the whole epoch this node's decisions rest on

    def current(self) -> str | None:
        rows = self.db.query("SELECT token FROM server_epoch WHERE whole")
        return str(rows[0][0]) if rows else None

    def check(self, refile: Callable[[], None]) -> bool:
        self.token = self.current()
        if self.token is not None:
            return False
        logger.warning("the database server lost its recent commits (it crashed, or was"
                       " restored or failed over); filing the spool's received instances"
                       " the index lost before deciding anything")  # fmt: skip
        self._renew(refile)
        return True

    def at_start(self, refile: Callable[[], None]) -> None:
        token = self.current()
        if token is not None:
            refile()
            self.token = token
        else:
            self._renew(refile)

    def _renew(self, refile: Callable[[], None]) -> None:
        token = secrets.token_hex(16)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM server_epoch")
            conn.execute("INSERT INTO server_epoch (token, whole) VALUES (?, FALSE)", (token,))
        refile()
        with self.db.transaction() as conn:  # synchronous: every commit before it is durable
            moved = conn.execute(
                "UPDATE server_epoch SET whole = TRUE WHERE token = ?", (token,)
            ).rowcount
        if moved != 1:
            raise ServerRestarted("the database server restarted while the spool was filed")
        self.token = token

    def guard(self, conn: Connection) -> None:
        found = (
            self.token is not None
            and conn.execute(
                "SELECT 1 FROM server_epoch WHERE token = ? AND whole", (self.token,)
            ).fetchone()
        )
        if not found:
            raise ServerRestarted("the database server's epoch changed since this round began")


class Guarded:
    """The database as the deciding objects (the dispatcher's index, jobs and
    outbox, the purge) see it: each transaction first runs ``epoch.guard``."""

    def __init__(self, db: Database, epoch: Epoch) -> None:
        self.db = db
        self.epoch = epoch
        self.url = db.url
        self.dialect = db.dialect
        self.transient_errors = (*db.transient_errors, ServerRestarted)

    @contextmanager
    def transaction(self, pipeline: bool = False, durable: bool = True) -> Iterator[Connection]:
        with self.db.transaction(pipeline=pipeline, durable=durable) as conn:
            self.epoch.guard(conn)
            yield conn

    def pipeline(self, durable: bool = True) -> Any:
        return self.transaction(pipeline=True, durable=durable)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.db.query(sql, params)

    def lock(self, conn: Connection, key: str) -> None:
        self.db.lock(conn, key)

    def close(self) -> None:
        self.db.close()


def epoch_for(db: Database) -> Epoch:
    return ServerEpoch(db) if db.dialect == "postgresql" else NoEpoch()


def deciding(db: Database, epoch: Epoch) -> Database:
    """The database for the deciding objects: guarded on PostgreSQL."""
    return Guarded(db, epoch) if isinstance(epoch, ServerEpoch) else db
