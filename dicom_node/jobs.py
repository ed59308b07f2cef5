"""The durable job table: the source of truth for work (the broker is transport).

States::

    queued ──(worker took it)──▶ running ──▶ done | skipped | failed
       ▲                            │
       └──(no live worker: re-enqueued, attempts + 1)

A job is keyed by (series, rule, digest of the series' SOP Instance UIDs), so
routing a study again creates no duplicate work for an unchanged series.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicom_node.state import Database

ACTIVE = ("queued", "running")
ENDED = ("done", "skipped", "failed")


def input_digest(sop_uids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    series_uid: str
    rule: str
    pipeline: str
    inputs: list[str]
    destinations: list[str]
    state: str
    reason: str
    attempts: int
    created_at: float
    updated_at: float
    enqueued_at: float | None
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float]
    summary: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> Job:
        data = dict(row)
        data.pop("input_digest", None)
        for key in ("inputs", "destinations", "timings", "summary"):
            data[key] = json.loads(data[key])
        return cls(**data)


class Jobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        study_uid: str,
        series_uid: str,
        rule: str,
        pipeline: str,
        sop_uids: Sequence[str],
        inputs: Sequence[str],
        destinations: Sequence[str],
        now: float | None = None,
    ) -> int | None:
        """Add a queued job; None when the same job (same inputs) already exists."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO jobs (study_uid, series_uid, rule, pipeline, input_digest,"
                " inputs, destinations, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    study_uid,
                    series_uid,
                    rule,
                    pipeline,
                    input_digest(sop_uids),
                    json.dumps(list(inputs)),
                    json.dumps(list(destinations)),
                    now,
                    now,
                ),
            )
            return cur.lastrowid if cur.rowcount == 1 else None

    def get(self, job_id: int) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def active(self) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
        return [Job.from_row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def _update(self, job_id: int, sql: str, params: tuple[object, ...]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET {sql}, updated_at = ? WHERE id = ?",
                (*params, time.time(), job_id),
            )

    def mark_enqueued(self, job_id: int, now: float, count_attempt: bool) -> None:
        self._update(
            job_id,
            "state = 'queued', enqueued_at = ?, attempts = attempts + ?",
            (now, 1 if count_attempt else 0),
        )

    def mark_running(self, job_id: int, started_at: float) -> None:
        self._update(job_id, "state = 'running', started_at = ?", (started_at,))

    def finish(
        self,
        job_id: int,
        state: str,
        reason: str = "",
        timings: dict[str, float] | None = None,
        summary: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        if state not in ENDED:
            raise ValueError(f"a job ends done, skipped or failed, not {state!r}")
        self._update(
            job_id,
            "state = ?, reason = ?, timings = ?, summary = ?, finished_at = ?",
            (
                state,
                reason[:2000],
                json.dumps(timings or {}),
                json.dumps(summary or {}),
                time.time() if now is None else now,
            ),
        )

    def retry(self, job_id: int) -> bool:
        """Operator retry of an ended job: back to queued with a fresh attempt count."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', reason = '', attempts = 0,"
                " enqueued_at = NULL, started_at = NULL, finished_at = NULL, updated_at = ?"
                " WHERE id = ? AND state IN ('failed', 'skipped', 'done')",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def note_purged(self, job_id: int) -> None:
        """Record on an ended job that an operator purged its source images."""
        self._update(job_id, "reason = reason || ?", (" [source images purged by operator]",))

    def busy_on(self, series_uid: str) -> bool:
        rows = self.db.query(
            "SELECT 1 FROM jobs WHERE series_uid = ? AND state IN ('queued', 'running')",
            (series_uid,),
        )
        return bool(rows)
