"""Routing: which rules apply to each series of a study, and whether each is
ready to act. Pure functions of index data, the rules and ``now``.

For every series, enabled rules are checked in config order. A rule whose
condition fails records the first failing condition as its reason. With
``routing.apply: first`` only the first matching rule applies; a matching
``discard`` rule ends the list for that series in either mode. A matched rule
is *ready* when its trigger says its series (``per: series``) or its whole
study (``per: study``) is complete (see ``readiness``), else it is *waiting*
with what for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dicom_node import facts as header
from dicom_node.conditions import (
    COUNT,
    AllCondition,
    AnyCondition,
    AttributeCondition,
    Check,
    NotCondition,
    Subject,
    resolve,
)
from dicom_node.index import SeriesSummary
from dicom_node.ruleset import Rule, Trigger

IMAGES_IN_ACQUISITION = "00201002"
ACQUISITION_NUMBER = "00200012"
TEMPORAL_POSITIONS = "00200105"
TEMPORAL_POSITION_ID = "00200100"
NUMBER_OF_FRAMES = "00280008"


@dataclass(frozen=True)
class Applied:
    """A matched rule on one series: ready now, or waiting (``waiting`` says for
    what, ``forced_at`` when it completes anyway)."""

    rule: Rule
    ready: bool
    waiting: str = ""
    forced_at: float = 0.0


@dataclass
class SeriesPlan:
    series: SeriesSummary
    applied: list[Applied] = field(default_factory=list)
    not_matched: dict[str, str] = field(default_factory=dict)  # rule → first failed condition
    not_applied: dict[str, str] = field(default_factory=dict)  # rule → why it was not checked
    discarded_by: str | None = None


# Columns the index kept before header facts: series indexed by an older
# release are routed on these.
LEGACY_COLUMNS = {
    "00080060": "modality",
    "00180015": "body_part",
    "0008103E": "description",
    "00181030": "protocol_name",
    "00080070": "manufacturer",
    "00080016": "sop_class_uid",
}


def facts_of(series: SeriesSummary) -> header.SeriesFacts:
    if series.facts:
        return series.facts
    values = {key: getattr(series, column) for key, column in LEGACY_COLUMNS.items()}
    return {key: [value] for key, value in values.items() if value}


def subject(series: SeriesSummary, study: Sequence[SeriesSummary], when: datetime) -> Subject:
    return Subject(
        facts=facts_of(series),
        instances=series.instances,
        now=when,
        study_facts=lambda: header.union(facts_of(s) for s in study),
    )


def match(series: SeriesSummary, study: Sequence[SeriesSummary], rules: Sequence[Rule],
          when: datetime, apply: str = "all") -> SeriesPlan:  # fmt: skip
    """Which rules match ``series`` (no trigger yet): ``applied`` entries are all ready."""
    plan = SeriesPlan(series)
    subj = subject(series, study, when)
    first: str | None = None
    for rule, check in zip(rules, compiled(rules), strict=True):
        if not rule.enabled:
            plan.not_matched[rule.name] = "switched off (enabled: false)"
            continue
        if plan.discarded_by is not None:
            plan.not_applied[rule.name] = f"series discarded by rule {plan.discarded_by}"
            continue
        if first is not None and apply == "first":
            plan.not_applied[rule.name] = f"rule {first} matched first (routing.apply: first)"
            continue
        reason = check(subj)
        if reason is not None:
            plan.not_matched[rule.name] = reason
            continue
        first = first or rule.name
        plan.applied.append(Applied(rule, ready=True))
        if rule.discard:
            plan.discarded_by = rule.name
    return plan


_COMPILED: dict[int, tuple[Sequence[Rule], list[Check], list[str]]] = {}
# Facts the expected-content trigger reads besides those the rules name.
COUNTS = (IMAGES_IN_ACQUISITION, ACQUISITION_NUMBER, TEMPORAL_POSITIONS, TEMPORAL_POSITION_ID,
          NUMBER_OF_FRAMES)  # fmt: skip


def referenced_keys(rules: Sequence[Rule]) -> list[str]:
    """The fact keys the rules' conditions (and triggers) test."""
    keys: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, AttributeCondition):
            keys.add(resolve(node.attribute)[0])
        elif isinstance(node, AllCondition):
            for child in node.all:
                walk(child)
        elif isinstance(node, AnyCondition):
            for child in node.any:
                walk(child)
        elif isinstance(node, NotCondition):
            walk(node.not_)

    for rule in rules:
        walk(rule.condition)
        expect = rule.trigger.expect
        for cond in expect.series if expect else []:
            walk(cond)
        if expect is not None and expect.instance_counts:
            keys.update(COUNTS)
    keys.discard(COUNT)
    return sorted(keys)


def _prepared(rules: Sequence[Rule]) -> tuple[list[Check], list[str]]:
    """Compiled once per rule list (a reload makes a new list)."""
    hit = _COMPILED.get(id(rules))
    if hit is not None and hit[0] is rules:
        return hit[1], hit[2]
    checks = [rule.condition.compile() for rule in rules]
    keys = referenced_keys(rules)
    if len(_COMPILED) >= 8:
        _COMPILED.clear()
    _COMPILED[id(rules)] = (rules, checks, keys)
    return checks, keys


def compiled(rules: Sequence[Rule]) -> list[Check]:
    """The rules' conditions as check functions."""
    return _prepared(rules)[0]


def needed_keys(rules: Sequence[Rule]) -> list[str]:
    """The facts to read from the index to evaluate ``rules``."""
    return _prepared(rules)[1]


def select(
    series: SeriesSummary, rules: Sequence[Rule], when: datetime | None = None
) -> list[Rule]:
    """The rules whose conditions hold for a series on its own (no study context)."""
    plan = match(series, [series], rules, when or datetime.now())
    return [a.rule for a in plan.applied]


def plan_study(
    study: Sequence[SeriesSummary],
    rules: Sequence[Rule],
    now: float,
    apply: str = "all",
    default_quiet: float = 30.0,
    pending_since: float | None = None,
    interrupted_hold: float = 0.0,
) -> list[SeriesPlan]:
    """Match every series of a study and decide each matched rule's readiness.
    ``pending_since``: when the study's first instance not yet routed arrived (a
    late instance restarts the forced-completion timeout from there).
    ``interrupted_hold``: how long a series whose sending association ended
    unfinished waits for the sender to send again (quiet and release triggers)."""
    when = datetime.fromtimestamp(now)
    plans = []
    for series in study:
        plan = match(series, study, rules, when, apply)
        plan.applied = [
            _with_readiness(
                a.rule, series, study, now, default_quiet, when, pending_since, interrupted_hold
            )  # fmt: skip
            for a in plan.applied
        ]
        plans.append(plan)
    return plans


def _with_readiness(rule: Rule, series: SeriesSummary, study: Sequence[SeriesSummary],
                    now: float, default_quiet: float, when: datetime,
                    pending_since: float | None, interrupted_hold: float) -> Applied:  # fmt: skip
    unit = [series] if rule.trigger.per == "series" else list(study)
    waiting, forced_at = readiness(rule.trigger, unit, study, now, default_quiet, when,
                                   pending_since, interrupted_hold)  # fmt: skip
    return Applied(rule, ready=waiting is None, waiting=waiting or "", forced_at=forced_at)


def readiness(
    trigger: Trigger,
    unit: Sequence[SeriesSummary],
    study: Sequence[SeriesSummary],
    now: float,
    default_quiet: float,
    when: datetime | None = None,
    pending_since: float | None = None,
    interrupted_hold: float = 0.0,
) -> tuple[str | None, float]:
    """(None if complete else what it waits for, forced-completion time). The
    timeout runs from the unit's first instance not yet routed. A quiet or release
    trigger also waits ``interrupted_hold`` after an association that brought
    instances of the unit ended unfinished (aborted, lost, failed stores), unless
    an association begun since was released: acting then would make a result from
    the part of a series that arrived before the sender's retry."""
    first = max(min(s.first_received for s in unit), pending_since or 0.0)
    last = max(s.last_received for s in unit)
    forced_at = first + trigger.timeout_seconds
    what = "series" if trigger.per == "series" else "study"
    if trigger.wait_for == "quiet":
        quiet = default_quiet if trigger.quiet_seconds is None else trigger.quiet_seconds
        left = last + quiet - now
        waiting = (
            None
            if left <= 0
            else f"{what} quiet for {left:.0f} s more (quiet period {quiet:.0f} s)"
        )
    elif trigger.wait_for == "release":
        open_ = [s for s in unit if s.released_at is None or s.released_at < s.last_received]
        waiting = (
            None if not open_ else (f"the association sending {len(open_)} series to be released")
        )
    else:
        waiting = _expected(trigger, unit, study, when or datetime.fromtimestamp(now))
    if waiting is None and trigger.wait_for != "expected" and interrupted_hold > 0:
        held = [
            s.interrupted_at + interrupted_hold
            for s in unit
            if s.interrupted_at is not None and s.interrupted_at + interrupted_hold > now
        ]
        if held:
            waiting = (f"the sender to send again after an association ended unfinished"
                       f" (aborted, lost or with failed stores), {max(held) - now:.0f} s more"
                       f" at most (node.interrupted_hold_seconds)")  # fmt: skip
    if waiting is not None and now >= forced_at:
        return None, forced_at
    return waiting, forced_at


def _expected(trigger: Trigger, unit: Sequence[SeriesSummary], study: Sequence[SeriesSummary],
              when: datetime) -> str | None:  # fmt: skip
    expect = trigger.expect
    assert expect is not None  # the Trigger model requires it for wait_for: expected
    missing = []
    for cond in expect.series:
        check = cond.compile()
        if not any(check(subject(s, study, when)) is None for s in study):
            missing.append(cond.describe())
    if missing:
        return "expected series missing: " + "; ".join(missing)
    if expect.instance_counts:
        counted = [(s, count_complete(s)) for s in unit]
        known = [(s, c) for s, c in counted if c is not None]
        if not known:
            return (
                "instance counts: no series carries ImagesInAcquisition, NumberOfFrames"
                " or NumberOfTemporalPositions"
            )
        short = [c for _, c in known if c]
        if short:
            return "instance counts: " + "; ".join(short)
    return None


def _max_int(counts: list[str] | None) -> int | None:
    values = []
    for value in counts or []:
        try:
            values.append(int(float(value)))
        except ValueError:
            continue
    return max(values) if values else None


def count_complete(series: SeriesSummary) -> str | None:
    """ "" when the series holds what its headers announce, a description of what
    is missing, or None when the headers announce no count."""
    facts = series.facts
    if (_max_int(facts.get(NUMBER_OF_FRAMES)) or 0) > 1:
        return ""  # a multi-frame instance carries all its frames (and ImagesInAcquisition
        # counts frames, not instances)
    expected = _max_int(facts.get(IMAGES_IN_ACQUISITION))
    if expected is not None:
        acquisitions = len(
            [v for v in facts.get(ACQUISITION_NUMBER, {"1": 1}) if v != header.OTHER]
        )
        want = expected * max(acquisitions, 1)
        if series.instances >= want:
            return ""
        return (
            f"series {series.series_uid} has {series.instances} of {want} instances"
            " (ImagesInAcquisition)"
        )
    positions = _max_int(facts.get(TEMPORAL_POSITIONS))
    if positions is not None:
        seen = len([v for v in facts.get(TEMPORAL_POSITION_ID, {}) if v != header.OTHER])
        if seen >= positions:
            return ""
        return (
            f"series {series.series_uid} has {seen} of {positions} temporal positions"
            " (NumberOfTemporalPositions)"
        )
    if _max_int(facts.get(NUMBER_OF_FRAMES)) is not None:
        return ""  # NumberOfFrames 1: the instance is all there is
    return None
