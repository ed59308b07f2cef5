"""The durable job table: the one owner of a job's state (the broker is transport).

States and the moves between them (``MOVES`` is the whole table)::

                 send / resend
                 ┌─────────┐
                 ▼         │
    create ──▶ queued ─────┘── observe ──▶ running ── observe ─┐
                 ▲  ▲                        │  ▲─────────────────┘
                 │  └───────── reissue ──────┘
                 │                 (worker lost, or asked to be tried again)
       operator retry      finish: queued | running ──▶ done | skipped | failed
                 └───────────────────────────────────── (ended)

A job changes state only through ``Jobs.move``: one ``UPDATE … WHERE state IN
(…)`` in one transaction, so a move from a state the job has already left
changes nothing and says so. ``attempts`` counts deliveries a worker started
(claims), however fast the worker died; the job table is the only counter.

A job is keyed by (series, rule, digest of the series' SOP Instance UIDs), so
routing a study again creates no duplicate work for an unchanged series.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dicom_node.state import Database


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)
ENDED = (JobState.DONE, JobState.SKIPPED, JobState.FAILED)


class Move(Enum):
    """A named move: the states it may leave, and the state it enters (None: the
    state named in the call, one of ``ENDED``)."""

    SEND = (ACTIVE, JobState.QUEUED)  # (re)hand the current ticket to the broker
    OBSERVE = (ACTIVE, JobState.RUNNING)  # a worker holds the ticket (new beat)
    REISSUE = (ACTIVE, JobState.QUEUED)  # a new ticket: worker lost, or retry asked
    FINISH = (ACTIVE, None)
    OPERATOR_RETRY = (ENDED, JobState.QUEUED)

    @property
    def sources(self) -> tuple[JobState, ...]:
        return self.value[0]


# Columns a move may set besides state and updated_at.
_FIELDS = frozenset(
    {"reason", "attempts", "ticket", "beat", "beat_at", "not_before", "enqueued_at",
     "started_at", "finished_at", "timings", "summary"}
)  # fmt: skip


def input_digest(sop_uids: Sequence[str], action: str = "") -> str:
    """The job key's digest: the series' instances, and the pipeline (or other
    action) when it is not the rule's only one, so one rule may run several."""
    text = "\n".join(sorted(sop_uids)) + (f"\n#{action}" if action else "")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    series_uid: str
    rule: str
    pipeline: str
    inputs: list[str]
    destinations: list[str]
    state: JobState
    reason: str
    attempts: int
    ticket: int
    beat: str
    beat_at: float | None
    not_before: float | None
    created_at: float
    updated_at: float
    enqueued_at: float | None
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float]
    summary: dict[str, Any]
    queue: str = "default"  # device class of the workers that may run it (gpu, cpu, ...)
    lane: str = "normal"  # urgent | normal | offpeak
    priority: int = 5  # 0-9, 9 first
    parameters: dict[str, Any] = field(default_factory=dict)  # the rule's, for the pipeline

    @classmethod
    def from_row(cls, row: Any) -> Job:
        data = dict(row)
        data.pop("input_digest", None)
        for key in ("inputs", "destinations", "timings", "summary", "parameters"):
            data[key] = json.loads(data[key])
        data["state"] = JobState(data["state"])
        return cls(**data)

    @property
    def ended(self) -> bool:
        return self.state in ENDED


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
        action: str = "",
        queue: str = "default",
        lane: str = "normal",
        priority: int = 5,
        parameters: dict[str, Any] | None = None,
    ) -> int | None:
        """Add a queued job; None when the same job (same inputs) already exists.
        ``action`` tells apart the jobs one rule makes for the same series."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO jobs (study_uid, series_uid, rule, pipeline, input_digest,"
                " inputs, destinations, state, created_at, updated_at, queue, lane, priority,"
                " parameters) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (series_uid, rule, input_digest) DO NOTHING RETURNING id",
                (
                    study_uid,
                    series_uid,
                    rule,
                    pipeline,
                    input_digest(sop_uids, action),
                    json.dumps(list(inputs)),
                    json.dumps(list(destinations)),
                    now,
                    now,
                    queue,
                    lane,
                    priority,
                    json.dumps(parameters or {}),
                ),
            ).fetchone()
            return int(row[0]) if row is not None else None

    def move(
        self,
        job_id: int,
        move: Move,
        now: float,
        to: JobState | None = None,
        **fields: object,
    ) -> bool:
        """Apply ``move`` if the job is in one of the states it may leave; True when
        it moved. ``to`` names the ended state for ``Move.FINISH``."""
        target = move.value[1]
        if target is None:
            if to not in ENDED:
                raise ValueError(f"{move.name} ends a job done, skipped or failed, not {to}")
            target = to
        unknown = set(fields) - _FIELDS
        if unknown:
            raise ValueError(f"a move cannot set {sorted(unknown)}")
        values = {k: json.dumps(v) if k in ("timings", "summary") else v
                  for k, v in fields.items()}  # fmt: skip
        if "reason" in values:
            values["reason"] = str(values["reason"])[:2000]
        sets = "".join(f", {k} = ?" for k in values)
        sources = ",".join("?" * len(move.sources))
        with self.db.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET state = ?{sets}, updated_at = ?"
                f" WHERE id = ? AND state IN ({sources})",
                (target.value, *values.values(), now, job_id, *(s.value for s in move.sources)),
            )
            return cur.rowcount == 1

    def get(self, job_id: int) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def active(self) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")
        return [Job.from_row(r) for r in rows]

    def of_study(self, study_uid: str) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [Job.from_row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[Job]:
        rows = self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def retry(self, job_id: int, now: float | None = None) -> bool:
        """Operator retry of an ended job: queued again, on a new ticket, with a fresh
        attempt count. False when the job does not exist or has not ended."""
        job = self.get(job_id)
        if job is None:
            return False
        return self.move(
            job_id,
            Move.OPERATOR_RETRY,
            time.time() if now is None else now,
            reason="",
            attempts=0,
            ticket=job.ticket + 1,
            beat="",
            beat_at=None,
            not_before=None,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
        )

    def note_purged(self, job_id: int, now: float | None = None) -> None:
        """Record on an ended job that an operator purged its source images."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET reason = reason || ?, updated_at = ?"
                " WHERE id = ? AND state IN ('failed', 'skipped', 'done')",
                (" [source images purged by operator]", time.time() if now is None else now,
                 job_id),
            )  # fmt: skip

    def ran(
        self,
        rule: str,
        *,
        series_uid: str | None = None,
        study_uid: str | None = None,
        pipeline: str | None = None,
    ) -> bool:
        """Whether ``rule`` ever made a job on the series, or on the study (any inputs;
        only ``pipeline`` jobs when given)."""
        sql, args = "SELECT 1 FROM jobs WHERE rule = ?", [rule]
        for column, value in (("series_uid", series_uid), ("study_uid", study_uid),
                              ("pipeline", pipeline)):  # fmt: skip
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return bool(self.db.query(sql + " LIMIT 1", tuple(args)))

    def busy_on(self, series_uid: str) -> bool:
        rows = self.db.query(
            "SELECT 1 FROM jobs WHERE series_uid = ? AND state IN ('queued', 'running')",
            (series_uid,),
        )
        return bool(rows)
