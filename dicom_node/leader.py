"""Which node makes decisions: one leader among the nodes sharing a database.

Every node receives and indexes what is sent to it. Only the leader routes
studies, moves jobs, sends results and purges: those decisions read and write
many jobs at once and are made by one process at a time, which is what makes
"processed once" hold when a study's series arrive at two nodes.

- PostgreSQL: a session-level advisory lock held on a connection of its own.
  The server releases it when that connection ends, so when the leader dies
  (process killed, host gone: TCP keepalives end the session) another node
  takes the lock at its next look, within ``LOOK_SECONDS`` plus the keepalive
  time. The leader checks its connection every round and stops deciding the
  moment it cannot.
- SQLite (one host): an exclusive ``flock`` on a file beside the database; a
  second node on the same file is a standby until the first exits.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from dicom_node.state import Database, lock_number

logger = logging.getLogger(__name__)

LEADER_LOCK = lock_number("dicom-node leader")
LOOK_SECONDS = 1.0  # how often a standby node tries to take the lead


class Lease(Protocol):
    # True while the last ``hold`` could not reach the database: nobody may lead
    # then, and "another node leads" would be the wrong thing to tell the operator.
    unreachable: bool

    def hold(self) -> bool:
        """Take or keep the lead; True while this node holds it."""

    def release(self) -> None: ...


class FileLease:
    unreachable = False  # a local file lock is always there to ask

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def hold(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class PostgresLease:
    # The server notices a vanished leader host after idle + interval * count seconds.
    KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                 "keepalives_count": 3}  # fmt: skip

    def __init__(self, db: Any) -> None:
        self.db = db
        self._conn: Any = None
        self._held = False
        self.unreachable = False

    def hold(self) -> bool:
        import psycopg

        self.unreachable = False
        try:
            if self._conn is None:
                self._conn = self.db.connect(**self.KEEPALIVE)
                self._conn.execute("SET tcp_keepalives_idle = 5")
                self._conn.execute("SET tcp_keepalives_interval = 2")
                self._conn.execute("SET tcp_keepalives_count = 3")
            if self._held:
                self._conn.execute("SELECT 1")  # still connected: still the holder
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
                self._held = bool(row.fetchone()[0])
        except psycopg.Error as exc:
            self.unreachable = True
            if self._held:
                logger.error("lost the database connection that holds the lead (%s)",
                             type(exc).__name__)  # fmt: skip
            self._drop()
        return self._held

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass
            self._conn = None

    def release(self) -> None:
        self._drop()  # ending the session releases the advisory lock


def lease_for(db: Database, sqlite_path: Path | None) -> Lease:
    if sqlite_path is None:
        return PostgresLease(db)
    return FileLease(sqlite_path.with_name(sqlite_path.name + ".leader"))
