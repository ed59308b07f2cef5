"""Worker lanes: which Celery queue a job goes to, and the order workers consume them.

A job names a *device class* (``queue``: the kind of worker that can run it,
e.g. ``gpu`` or ``cpu``; ``default`` when the rule names none) and a *lane*
(``urgent``, ``normal`` or ``offpeak``). Each (device, lane) pair is its own
broker queue, ``<workers.queue>.<device>.<lane>``. A worker consumes the
queues of the device classes it is given, all urgent queues first, then
normal, then off-peak, with the transport's ``priority`` queue order: it
always takes from the first non-empty queue in that list. With one message
prefetched per process (``worker_prefetch_multiplier=1``, late ack), an
urgent job queued behind a backlog is the next one any free worker starts.

A rule's ``priority`` (0-9, 9 first) orders jobs within their lane. On Redis
it becomes the message's broker priority: kombu keeps one list per priority
step and pops the lowest step of all consumed queues first, so the steps are
split into one band per lane (urgent 0-2, normal 3-6, off-peak 7-9) and a
job's step is its lane's band, higher priority first. Lanes stay strict, and
priority orders within a lane in as many levels as its band has steps. The
embedded file-system transport has no priorities: there, lanes alone order
the work (see ``docs/operations.md``).

Separate queues per lane as well as bands: ``celery inspect`` and Flower show
each lane's queue by name, and the file-system transport has lanes too.
"""

from __future__ import annotations

import re

LANES = ("urgent", "normal", "offpeak")
DEFAULT_DEVICE = "default"
DEFAULT_LANE = "normal"
_DEVICE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


# (first step, steps) of each lane's band of kombu priority steps (0 is taken first).
BANDS = {"urgent": (0, 3), "normal": (3, 4), "offpeak": (7, 3)}
PRIORITY_STEPS = list(range(10))


def broker_priority(lane: str, priority: int) -> int:
    """The kombu priority step of a job: its lane's band, higher ``priority`` first."""
    first, steps = BANDS[check_lane(lane)]
    return first + (9 - min(max(priority, 0), 9)) * steps // 10


def check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(
            "a device class (queue) is 1-32 lower-case letters, digits, '-' or '_', e.g. gpu"
        )
    return value


def check_lane(value: str) -> str:
    if value not in LANES:
        raise ValueError(f"a lane is one of {', '.join(LANES)}")
    return value


def queue_name(base: str, device: str, lane: str) -> str:
    """The broker queue of one (device class, lane)."""
    return f"{base}.{check_device(device)}.{check_lane(lane)}"


def consumed(base: str, devices: list[str], lanes: tuple[str, ...] = LANES) -> list[str]:
    """Every queue a worker for ``devices`` consumes, in the order it takes work."""
    return [queue_name(base, device, lane) for lane in LANES if lane in lanes
            for device in devices]  # fmt: skip
