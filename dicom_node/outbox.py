"""Results waiting for their destinations, and the sender that delivers them.

Each (result file, destination) pair is one row: ``pending`` until the
destination answered Success, then ``sent``; after ``send.max_attempts``
failed tries it becomes ``dead`` (kept on disk for an operator). Between tries
the wait doubles from ``send.initial_backoff_seconds`` up to
``send.max_backoff_seconds``. A file is deleted only when every destination
has stored it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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

    def add(self, job_id: int, paths: Sequence[str], destinations: Sequence[str]) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            for path in paths:
                for dest in destinations:
                    conn.execute(
                        "INSERT OR IGNORE INTO outbox (job_id, destination, path, state,"
                        " next_attempt_at) VALUES (?, ?, ?, 'pending', ?)",
                        (job_id, dest, path, now),
                    )

    def due(self, now: float) -> list[Item]:
        rows = self.db.query(
            "SELECT id, job_id, destination, path, attempts FROM outbox"
            " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id",
            (now,),
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

    def mark_failed(self, item: Item, error: str, now: float, settings: SendSettings) -> str:
        attempts = item.attempts + 1
        state = "dead" if attempts >= settings.max_attempts else "pending"
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

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        return {r["state"]: r["n"] for r in rows}


SendFn = Callable[[Destination, Sequence[Path], str, float], Sequence[object]]


class Sender:
    """Delivers due outbox items, one association per destination per round."""

    def __init__(
        self,
        outbox: Outbox,
        spool: Spool,
        destinations: dict[str, Destination],
        settings: SendSettings,
        calling_ae: str,
        send: SendFn,
    ) -> None:
        self.outbox = outbox
        self.spool = spool
        self.destinations = destinations
        self.settings = settings
        self.calling_ae = calling_ae
        self._send = send
        self.wake = threading.Event()

    def run_once(self, now: float | None = None) -> int:
        """Try every due item once; returns how many were stored."""
        now = time.time() if now is None else now
        by_dest: dict[str, list[Item]] = defaultdict(list)
        for item in self.outbox.due(now):
            by_dest[item.destination].append(item)
        stored = 0
        for name, items in by_dest.items():
            stored += self._deliver(name, items)
        return stored

    def _deliver(self, name: str, items: list[Item]) -> int:
        dest = self.destinations.get(name)
        if dest is None:
            for item in items:
                self._failed(item, f"destination {name!r} is no longer configured")
            return 0
        paths = [self.spool.resolve(i.path) for i in items]
        try:
            results = self._send(dest, paths, self.calling_ae, self.settings.timeout_seconds)
        except Exception as exc:  # transient: unreachable, rejected, timed out
            for item in items:
                self._failed(item, f"{type(exc).__name__}: {exc}")
            return 0
        stored = 0
        for item, result in zip(items, results, strict=True):
            if getattr(result, "stored", False):
                stored += 1
                if self.outbox.mark_sent(item, time.time()):
                    self.spool.remove(item.path)
                logger.info("stored result", extra={"job": item.job_id, "destination": name})
            else:
                status = getattr(result, "status", None)
                detail = getattr(result, "detail", "")
                code = f"0x{status:04X}" if status is not None else "none"
                self._failed(item, f"status {code} {detail}".strip())
        return stored

    def _failed(self, item: Item, error: str) -> None:
        state = self.outbox.mark_failed(item, error, time.time(), self.settings)
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
                self.run_once()
            except Exception:
                logger.exception("sender round failed; will try again")
            self.wake.wait(poll)
            self.wake.clear()
