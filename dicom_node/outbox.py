"""Results waiting for their destinations, and the sender that delivers them.

Each (result file, destination) pair is one row: ``pending`` until the
destination answered Success, then ``sent``. A transient failure (see
``dicom_node.errors``) is tried again, the wait doubling from
``send.initial_backoff_seconds`` up to ``send.max_backoff_seconds``; after
``send.max_attempts`` tries, or at once for a permanent failure, the row
becomes ``dead``: kept on disk for an operator (``dicom-node retry
--dead-letters``). A file is deleted only when every destination has stored it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import (
    PermanentError,
    TransientError,
    UnreadableResult,
    classify_store_status,
)
from dicom_node.scu import Connection, sop_class_of
from dicom_node.settings import Destination, SendSettings
from dicom_node.spool import Spool
from dicom_node.state import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    id: int
    job_id: int
    destination: str
    path: str
    attempts: int


def backoff(attempts: int, settings: SendSettings) -> float:
    """Seconds to wait after ``attempts`` failed tries (attempts ≥ 1)."""
    return min(settings.initial_backoff_seconds * 2 ** (attempts - 1), settings.max_backoff_seconds)


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, job_id: int, paths: Sequence[str], destinations: Sequence[str], now: float
    ) -> None:
        """Queue each file for each destination; a file queued before (a job run
        again by an operator) is queued afresh."""
        with self.db.transaction() as conn:
            for path in paths:
                for dest in destinations:
                    conn.execute(
                        "INSERT INTO outbox (job_id, destination, path, state, next_attempt_at)"
                        " VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (job_id, destination, path)"
                        " DO UPDATE SET state = 'pending', attempts = 0, last_error = '',"
                        " next_attempt_at = excluded.next_attempt_at, sent_at = NULL",
                        (job_id, dest, path, now),
                    )

    def due(self, now: float, limit: int = 100) -> list[Item]:
        rows = self.db.query(
            "SELECT id, job_id, destination, path, attempts FROM outbox"
            " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [Item(**dict(r)) for r in rows]

    def mark_sent(self, item: Item, now: float) -> bool:
        """Record success; True when no destination still needs the file."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = '' WHERE id = ?",
                (now, item.id),
            )
            left = conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE path = ? AND state != 'sent'", (item.path,)
            ).fetchone()[0]
        return left == 0

    def mark_failed(
        self, item: Item, error: str, now: float, settings: SendSettings, permanent: bool = False
    ) -> str:
        attempts = item.attempts + 1
        state = "dead" if permanent or attempts >= settings.max_attempts else "pending"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (state, attempts, now + backoff(attempts, settings), error[:500], item.id),
            )
        return state

    def retry_dead(self) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?"
                " WHERE state = 'dead'",
                (time.time(),),
            )
            return cur.rowcount

    def waiting(self, limit: int = 20) -> list[dict[str, object]]:
        """Items not yet stored (pending or dead), with their last error, oldest first."""
        rows = self.db.query(
            "SELECT job_id, destination, path, state, attempts, next_attempt_at, last_error"
            " FROM outbox WHERE state != 'sent' ORDER BY id LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        return {r["state"]: r["n"] for r in rows}


Connect = Callable[[Destination, str, Iterable[str], float], Connection]


class Sender:
    """Delivers due outbox items: per destination one association per round, files
    read one at a time. A failure is handled by its class: a permanent one parks
    the item at once, a transient one waits for the next try."""

    def __init__(
        self,
        outbox: Outbox,
        spool: Spool,
        destinations: dict[str, Destination],
        settings: SendSettings,
        calling_ae: str,
        connect: Connect,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.spool = spool
        self.destinations = destinations
        self.settings = settings
        self.calling_ae = calling_ae
        self._connect = connect
        self.clock = clock
        self.wake = threading.Event()
        self.active: Callable[[], bool] = lambda: True  # False: another node sends

    def run_once(self, now: float | None = None) -> int:
        """Try every due item once; returns how many were stored."""
        now = self.clock() if now is None else now
        by_dest: dict[str, list[Item]] = defaultdict(list)
        for item in self.outbox.due(now):
            by_dest[item.destination].append(item)
        return sum(self._deliver(name, items) for name, items in by_dest.items())

    def _deliver(self, name: str, items: list[Item]) -> int:
        dest = self.destinations.get(name)
        if dest is None:
            for item in items:
                self._failed(item, f"destination {name!r} is no longer configured", True)
            return 0
        ready: list[tuple[Item, Path]] = []
        classes: set[str] = set()
        for item in items:
            try:
                path = self.spool.outbox_entry_at(item.path).path
                classes.add(sop_class_of(path))
            except (UnreadableResult, ValueError) as exc:
                self._failed(item, str(exc), True)
                continue
            ready.append((item, path))
        if not ready:
            return 0
        try:
            connection = self._connect(dest, self.calling_ae, classes,
                                       self.settings.timeout_seconds)  # fmt: skip
        except (TransientError, PermanentError) as exc:
            for item, _ in ready:
                self._failed(item, str(exc), isinstance(exc, PermanentError))
            return 0
        try:
            return sum(self._store(connection, item, path, name) for item, path in ready)
        finally:
            connection.close()

    def _store(self, connection: Connection, item: Item, path: Path, name: str) -> int:
        try:
            result = connection.store(path)
        except (TransientError, PermanentError) as exc:
            self._failed(item, str(exc), isinstance(exc, PermanentError))
            return 0
        verdict = classify_store_status(result.status)
        if verdict == "stored":
            if self.outbox.mark_sent(item, self.clock()):
                self.spool.outbox_entry_at(item.path).remove()
            logger.info("stored result", extra={"job": item.job_id, "destination": name})
            return 1
        code = f"0x{result.status:04X}" if result.status is not None else "none"
        self._failed(item, f"status {code} {result.detail}".strip(), verdict == "permanent")
        return 0

    def _failed(self, item: Item, error: str, permanent: bool = False) -> None:
        state = self.outbox.mark_failed(item, error, self.clock(), self.settings, permanent)
        level = logging.ERROR if state == "dead" else logging.WARNING
        logger.log(
            level,
            "send to %s failed (%s), attempt %d: %s",
            item.destination,
            "dead-lettered" if state == "dead" else "will retry",
            item.attempts + 1,
            error,
            extra={"job": item.job_id},
        )

    def run_forever(self, stop: threading.Event, poll: float = 1.0) -> None:
        while not stop.is_set():
            try:
                if self.active():
                    self.run_once()
            except Exception as exc:  # boundary: the sender thread must not die
                logger.error("sender round failed (%s); will try again", type(exc).__name__)
            self.wake.wait(poll)
            self.wake.clear()
