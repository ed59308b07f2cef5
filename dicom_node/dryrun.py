"""``dicom-node rules test``: what the rules would do, without doing it.

Series come from DICOM files and folders (headers only, read with the same
fact extraction the SCP uses at receive time) or from the last N studies in
the index. For every series: which rules match and what they run, and for
every rule that does not, the first condition that failed. Nothing is written
and nothing is sent.

JSON lines (``--json``), one object per series::

    {"study_uid": …, "series_uid": …, "modality": …, "sop_class_uid": …,
     "instances": N, "matched": [{"rule": …, "pipeline": …, "queue": …,
     "lane": …, "priority": …}], "forward": [{"rule": …, "destinations": […]}],
     "discarded_by": rule | null, "not_matched": {rule: reason},
     "not_applied": {rule: reason}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_node import facts as header
from dicom_node.index import SeriesSummary
from dicom_node.routing import SeriesPlan, match
from dicom_node.settings import Rule, Settings

logger = logging.getLogger(__name__)

SERIES_UID = 0x0020000E
STUDY_UID = 0x0020000D


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_series(
    paths: Iterable[Path], context: dict[str, str] | None = None
) -> tuple[list[list[SeriesSummary]], int]:
    """Series grouped by study, from files' headers; and how many files were not
    DICOM (or had no Study/Series Instance UID)."""
    facts: dict[tuple[str, str], header.SeriesFacts] = {}
    counts: dict[tuple[str, str], int] = {}
    skipped = 0
    for path in _files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = (str(ds[STUDY_UID].value).strip(), str(ds[SERIES_UID].value).strip())
            found = header.instance_facts(ds, context)
        except (InvalidDicomError, KeyError, OSError, ValueError, TypeError, EOFError) as exc:
            logger.debug("not routed: a file that is not DICOM with UIDs (%s)", type(exc).__name__)
            skipped += 1
            continue
        header.merge(facts.setdefault(key, {}), found, key not in counts)
        counts[key] = counts.get(key, 0) + 1
    studies: dict[str, list[SeriesSummary]] = {}
    for (study, series), f in sorted(facts.items()):
        summary = SeriesSummary(study, series, "", "", "", "", "", "", counts[(study, series)], f)
        studies.setdefault(study, []).append(summary)
    return list(studies.values()), skipped


def _first(facts: header.SeriesFacts, key: str) -> str:
    values = [v for v in facts.get(key, {}) if v != header.OTHER]
    return values[0] if values else ""


def _entries(rule: Rule) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs = [{"rule": rule.name, "pipeline": run.pipeline, "queue": run.queue, "lane": run.lane,
             "priority": run.priority} for run in rule.runs]  # fmt: skip
    forward = [{"rule": rule.name, "destinations": list(rule.forward)}] if rule.forward else []
    return runs, forward


def record(plan: SeriesPlan, cache: dict[int, tuple[Rule, Any]] | None = None) -> dict[str, Any]:
    """One series' result; ``cache`` keeps each rule's entries across series."""
    s = plan.series
    cache = {} if cache is None else cache
    matched: list[dict[str, Any]] = []
    forward: list[dict[str, Any]] = []
    for applied in plan.applied:
        rule = applied.rule
        hit = cache.get(id(rule))
        if hit is None or hit[0] is not rule:
            hit = cache[id(rule)] = (rule, _entries(rule))
        matched += hit[1][0]
        forward += hit[1][1]
    return {
        "study_uid": s.study_uid,
        "series_uid": s.series_uid,
        "modality": _first(s.facts, "00080060") or s.modality,
        "sop_class_uid": _first(s.facts, "00080016") or s.sop_class_uid,
        "instances": s.instances,
        "matched": matched,
        "forward": forward,
        "discarded_by": plan.discarded_by,
        "not_matched": plan.not_matched,
        "not_applied": plan.not_applied,
    }


def plans(
    studies: Sequence[Sequence[SeriesSummary]], settings: Settings, when: datetime
) -> Iterator[SeriesPlan]:
    for study in studies:
        for series in study:
            yield match(series, study, settings.rules, when, settings.routing.apply)


def write_text(rec: dict[str, Any], out: TextIO) -> None:
    out.write(f"study {rec['study_uid']}  series {rec['series_uid']}"
              f"  ({rec['modality'] or '?'}, {rec['instances']} instance(s))\n")  # fmt: skip
    for m in rec["matched"]:
        out.write(f"  MATCH    {m['rule']} → {m['pipeline']} (queue {m['queue']}, lane"
                  f" {m['lane']}, priority {m['priority']})\n")  # fmt: skip
    for f in rec["forward"]:
        out.write(f"  MATCH    {f['rule']} → forward to {', '.join(f['destinations'])}\n")
    if rec["discarded_by"]:
        out.write(f"  MATCH    {rec['discarded_by']} → discard\n")
    for name, reason in rec["not_matched"].items():
        out.write(f"  no       {name}: {reason}\n")
    for name, reason in rec["not_applied"].items():
        out.write(f"  skipped  {name}: {reason}\n")
    if not (rec["matched"] or rec["forward"] or rec["discarded_by"]):
        out.write("  → no rule applies: stored, nothing runs\n")


def report(
    studies: Sequence[Sequence[SeriesSummary]],
    settings: Settings,
    out: TextIO,
    as_json: bool,
    when: datetime | None = None,
) -> int:
    """Write one result per series; returns the number of series."""
    n = 0
    cache: dict[int, tuple[Rule, Any]] = {}
    for plan in plans(studies, settings, when or datetime.now()):
        rec = record(plan, cache)
        if as_json:
            out.write(json.dumps(rec) + "\n")
        else:
            write_text(rec, out)
        n += 1
    return n
