"""When is a study complete enough to route? A pure decision.

A study is *stable* when no instance has arrived for ``stable_after`` seconds
and it holds instances not yet routed (``revision > routed_revision``).

A late instance for a study that was already routed raises its revision, so
the study is routed again once it is quiet again. Routing then creates a job
only for series whose set of instances changed (a job is keyed by series,
rule and a digest of its SOP Instance UIDs): unchanged series are not run
twice, a series that grew is run again on all its instances and its results
get new UIDs (the earlier results stay in the archive).
"""

from __future__ import annotations

from collections.abc import Iterable

from dicom_node.index import StudyState


def is_stable(study: StudyState, now: float, stable_after: float) -> bool:
    return study.revision > study.routed_revision and now - study.last_received >= stable_after


def stable_studies(
    studies: Iterable[StudyState], now: float, stable_after: float
) -> list[StudyState]:
    """The studies to route now, oldest first."""
    ready = [s for s in studies if is_stable(s, now, stable_after)]
    return sorted(ready, key=lambda s: s.last_received)
