"""Whether another node receives into the same tables right now.

At start a node files (or, unsealed, removes) the spool files that no index
row names: a crash left them between "moved into the spool" and "committed"
(``scp.reconcile_spool``). A file another node is moving and committing at this
very moment looks the same, so a node may treat every unindexed file as left by
a crash only while no other node receives.

Every receiving node, and each of its extra receiving processes
(``receive.processes``), holds a shared lock for as long as it runs. A starting
node first tries the exclusive lock: if it gets it, no other node receives, and
it cleans the spool before it takes the shared lock and opens its port. If it
does not, it takes the shared lock and leaves young files to the periodic
clean-up, which spares files younger than ``scp.ORPHAN_AGE``.

- SQLite: ``flock`` on a file beside the database (nodes on one host).
- PostgreSQL: a session-level advisory lock on a connection of its own; a node
  whose connection ends has left, and takes the shared lock again when the
  connection is back (``keep``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from dicom_node.leader import PostgresLease
from dicom_node.state import Database, lock_number

logger = logging.getLogger(__name__)

RECEIVING_LOCK = lock_number("dicom-node receiving")


class Presence(Protocol):
    def alone(self) -> bool:
        """Try the exclusive lock: True (and held) when no other node receives."""

    def arrive(self) -> None:
        """Hold the shared lock (waiting while a starting node cleans up), and give
        up the exclusive one if held."""

    def keep(self) -> None:
        """Take the shared lock again if it was lost (a dropped connection)."""

    def leave(self) -> None: ...


class FilePresence:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def alone(self) -> bool:
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def arrive(self) -> None:
        # Converting exclusive to shared is not atomic for flock; a node that takes
        # the exclusive lock in between finds this node not yet receiving.
        fcntl.flock(self._open(), fcntl.LOCK_SH)

    def keep(self) -> None:
        return None  # a file lock lasts as long as the descriptor

    def leave(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PostgresPresence:
    def __init__(self, db: Any) -> None:
        self.db = db
        self._conn: Any = None
        self._exclusive = False
        self._shared = False

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.connect(**PostgresLease.KEEPALIVE)
        return self._conn

    def alone(self) -> bool:
        row = self._connection().execute("SELECT pg_try_advisory_lock(%s)", (RECEIVING_LOCK,))
        self._exclusive = bool(row.fetchone()[0])
        return self._exclusive

    def arrive(self) -> None:
        conn = self._connection()
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (RECEIVING_LOCK,))
        self._shared = True
        if self._exclusive:  # the session holds both; drop the exclusive one
            conn.execute("SELECT pg_advisory_unlock(%s)", (RECEIVING_LOCK,))
            self._exclusive = False

    def keep(self) -> None:
        import psycopg

        try:
            if self._shared:
                self._connection().execute("SELECT 1")
            else:
                self.arrive()
                logger.info("receiving lock taken again after the database connection was lost")
        except psycopg.Error as exc:
            if self._shared:
                logger.error("lost the database connection that marks this node as receiving"
                             " (%s)", type(exc).__name__)  # fmt: skip
            self.leave()

    def leave(self) -> None:
        self._shared = self._exclusive = False
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session releases its advisory locks
            except Exception:  # closing a broken connection: nothing more to do
                pass
            self._conn = None


def presence_for(db: Database, sqlite_path: Path | None) -> Presence:
    if sqlite_path is None:
        return PostgresPresence(db)
    return FilePresence(sqlite_path.with_name(sqlite_path.name + ".receiving"))
