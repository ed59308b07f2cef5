"""What travels between the node and its workers: job requests, outcomes, reports.

This is the part of ``dicom_node`` that ``workers`` imports. A request is a
small message of ids and paths (relative to ``storage.dir``, so node and
workers may mount shared storage at different places), never pixel data.

The node issues a job in *tickets*. Ticket 1 is its first delivery; the node
issues a new ticket when the worker holding the current one stopped answering
or asked to be tried again. A worker runs a ticket only while that ticket's
folder exists (``spool.JobFolder``), so a message for an ended job or an older
ticket is a no-op that leaves nothing behind.

A worker reports through files (``spool.JobFolder`` owns where they are): a
claim per delivery it started, a heartbeat token it rewrites, result files,
and last the outcome. The node reads them into a ``WorkReport`` and decides
(``lifecycle.decide``); the worker never writes the job table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["done", "skipped", "failed", "retry"]
STATUSES = ("done", "skipped", "failed", "retry")


class MessageError(ValueError):
    """A job message that is not of the expected shape (names the field, not values)."""


@dataclass(frozen=True)
class JobRequest:
    job_id: int
    ticket: int
    pipeline: str
    inputs: list[str]
    uid_root: str
    max_attempts: int
    study_uid: str = ""
    series_uid: str = ""
    # From the routing rule that made the job (docs/rules.md): the worker class and
    # lane it goes to, its priority (9 first), and parameters for the pipeline.
    queue: str = "default"
    lane: str = "normal"
    priority: int = 5
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: object) -> JobRequest:
        if not isinstance(message, dict):
            raise MessageError("a job message is a mapping")
        try:
            inputs = message["inputs"]
            if not isinstance(inputs, list):
                raise MessageError("job message field 'inputs' is not a list")
            return cls(
                job_id=int(message["job_id"]),
                ticket=int(message["ticket"]),
                pipeline=str(message["pipeline"]),
                inputs=[str(p) for p in inputs],
                uid_root=str(message["uid_root"]),
                max_attempts=int(message["max_attempts"]),
                study_uid=str(message.get("study_uid", "")),
                series_uid=str(message.get("series_uid", "")),
                queue=str(message.get("queue", "default")),
                lane=str(message.get("lane", "normal")),
                priority=int(message.get("priority", 5)),
                parameters=_parameters(message.get("parameters", {})),
            )
        except KeyError as exc:
            raise MessageError(f"job message has no field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, MessageError):
                raise
            raise MessageError("job message has a field of the wrong type") from None


def _parameters(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        raise MessageError("job message field 'parameters' is not a mapping of plain values")
    return {str(k): v for k, v in value.items()}


@dataclass(frozen=True)
class JobOutcome:
    """What a worker concluded. ``retry``: a transient error; the node decides
    whether to issue another ticket (it counts attempts, the worker does not)."""

    status: Status
    reason: str = ""
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    finished_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobOutcome:
        """Parse an outcome file; ``ValueError`` (no value quoted) when malformed."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("outcome.json is not valid JSON") from None
        if not isinstance(raw, dict) or raw.get("status") not in STATUSES:
            raise ValueError("outcome.json has no valid 'status'")
        outputs = raw.get("outputs", [])
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise ValueError("outcome.json 'outputs' is not a list of file names")
        timings, summary = raw.get("timings", {}), raw.get("summary", {})
        if not isinstance(timings, dict) or not isinstance(summary, dict):
            raise ValueError("outcome.json 'timings' or 'summary' is not a mapping")
        try:
            return cls(
                status=raw["status"],
                reason=str(raw.get("reason", ""))[:2000],
                outputs=outputs,
                timings={str(k): float(v) for k, v in timings.items()},
                summary=summary,
                worker=str(raw.get("worker", ""))[:200],
                finished_at=float(raw.get("finished_at", 0.0)),
            )
        except (TypeError, ValueError):
            raise ValueError("outcome.json has a field of the wrong type") from None


@dataclass(frozen=True)
class WorkReport:
    """What the node can see of a job's current ticket, read from its work folder.

    ``exists``: the job folder and the ticket's folder are there.
    ``claims``: deliveries any worker started for this job, over all tickets.
    ``beat``: a token that changes while a worker holds the ticket (None: no
    worker has taken it). The node compares tokens on its own clock, never a
    worker's timestamps, so leases hold across hosts with different clocks.
    ``outcome``: the worker's conclusion, if it wrote one.
    """

    exists: bool
    claims: int = 0
    beat: str | None = None
    outcome: JobOutcome | None = None
