"""The node's error tree: what may pass, and what waits for an operator.

    NodeError
    ├── TransientError            may pass by itself: tried again with backoff
    │   └── DestinationUnavailable   connection refused or timed out, association
    │                                aborted or rejected-transient, 0xA7xx answers
    └── PermanentError            will not pass by trying again: parked at once
        ├── DestinationRefused       association rejected-permanent, SOP class or
        │                            transfer syntax not accepted, 0x0122, 0xA9xx,
        │                            0xCxxx answers
        ├── UnreadableResult         a result file in the outbox cannot be read
        └── BadReport                a worker's report is malformed or names a
                                     file outside its work folder

Messages name the stage and, for data, the attribute by keyword and tag; they
never carry a patient value. Code that catches these decides by class, never
by message text.
"""

from __future__ import annotations

from typing import Literal


class NodeError(Exception):
    """Base of the node's own errors."""


class TransientError(NodeError):
    """Something that may pass if tried again later."""


class PermanentError(NodeError):
    """Something that will not pass by trying again; an operator must act."""


class DestinationUnavailable(TransientError):
    """The destination could not be reached, or asked us to come back later."""


class DestinationRefused(PermanentError):
    """The destination refuses this association or this object for good."""


class UnreadableResult(PermanentError):
    """A result file waiting in the outbox is missing or not readable DICOM."""


class BadReport(PermanentError):
    """A worker's report (outcome, output names) cannot be trusted or parsed."""


StoreOutcome = Literal["stored", "transient", "permanent"]


def classify_store_status(status: int | None) -> StoreOutcome:
    """What a C-STORE response status means for the sender (PS3.4 B.2.3).

    Success and warnings (0xB000, 0xB006, 0xB007) mean stored. Out of resources
    (0xA7xx) and no answer at all (association lost, timed out) may pass.
    Refused (0x0122 SOP class not supported, 0x0124 not authorized), data set
    does not match SOP class (0xA9xx) and cannot understand (0xCxxx) will not.
    Anything else (0x0110 processing failure, ...) is tried again.
    """
    if status is None:
        return "transient"
    if status == 0x0000 or status & 0xF000 == 0xB000:
        return "stored"
    if status in (0x0122, 0x0124) or status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000:
        return "permanent"
    return "transient"
