"""What travels between the node and its workers: job requests and outcomes.

This is the one part of ``dicom_node`` that ``workers`` imports. A request is
a small message of ids and paths (relative to ``storage.dir``, so node and
workers may mount shared storage at different places), never pixel data.

A worker reports through files in the job's work folder, which survive a
flushed broker and a restarted node:

    work/<job id>/started.json   written when a worker takes the job; its
                                 mtime is the worker's heartbeat
    work/<job id>/out/*.dcm      result files, written before the outcome
    work/<job id>/outcome.json   the last thing written: done, skipped or failed
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dicom_node.spool import write_atomic

STARTED = "started.json"
OUTCOME = "outcome.json"
OUTPUTS = "out"

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class JobRequest:
    job_id: int
    pipeline: str
    inputs: list[str]
    work_dir: str
    uid_root: str
    study_uid: str = ""
    series_uid: str = ""

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobRequest:
        return cls(
            job_id=int(message["job_id"]),
            pipeline=str(message["pipeline"]),
            inputs=[str(p) for p in message["inputs"]],
            work_dir=str(message["work_dir"]),
            uid_root=str(message["uid_root"]),
            study_uid=str(message.get("study_uid", "")),
            series_uid=str(message.get("series_uid", "")),
        )


@dataclass(frozen=True)
class JobOutcome:
    status: Status
    reason: str = ""
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    finished_at: float = 0.0

    def write(self, work_dir: Path) -> None:
        """Write atomically: a reader sees no outcome or a whole one."""
        write_atomic(work_dir / OUTCOME, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def read(cls, work_dir: Path) -> JobOutcome | None:
        try:
            raw = json.loads((work_dir / OUTCOME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return cls(**raw)


def heartbeat_age(work_dir: Path, now: float | None = None) -> float | None:
    """Seconds since a worker last touched the job, or None if none took it."""
    try:
        mtime = (work_dir / STARTED).stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime
