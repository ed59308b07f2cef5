"""``dicom-node status --study UID``: why is this study waiting?

For each series of the study: every rule, and for each either what it waits
for (quiet time left, the association's release, expected series or instances
missing) with the time it completes anyway, or that it is ready or has acted
(with its jobs), or why it does not apply. Evaluated with the rules in force
in the config file, against the index only. No patient value is printed.
"""

from __future__ import annotations

import time
from typing import Any

from dicom_node.dryrun import record
from dicom_node.index import Index
from dicom_node.jobs import Jobs
from dicom_node.routing import needed_keys, plan_study
from dicom_node.settings import Settings


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def explain(
    study_uid: str, settings: Settings, index: Index, jobs: Jobs, now: float
) -> dict[str, Any] | None:
    study = index.study(study_uid)
    series = index.series_of(study_uid, needed_keys(settings.rules))
    if study is None or not series:
        return None
    routed = study.routed_revision >= study.revision
    by_series: dict[str, list[dict[str, Any]]] = {}
    for job in jobs.of_study(study_uid):
        by_series.setdefault(job.series_uid, []).append(
            {
                "id": job.id,
                "rule": job.rule,
                "pipeline": job.pipeline,
                "state": job.state.value,
                "reason": job.reason,
            }  # fmt: skip
        )
    out = []
    order = {rule.name: i for i, rule in enumerate(settings.rules)}
    plans = plan_study(series, settings.rules, now, settings.routing.apply,
                       settings.node.stable_after_seconds, study.pending_since,
                       settings.node.interrupted_hold_seconds)  # fmt: skip
    for plan in plans:
        rec = record(plan)
        rules: list[dict[str, Any]] = []
        for applied in plan.applied:
            entry: dict[str, Any] = {"rule": applied.rule.name}
            if applied.ready:
                entry["state"] = "acted" if routed else "ready (acts at the next routing round)"
            else:
                entry["state"] = "waiting"
                entry["waiting_for"] = applied.waiting
                entry["forced_at"] = _clock(applied.forced_at)
            rules.append(entry)
        for name, reason in {**plan.not_matched, **plan.not_applied}.items():
            rules.append({"rule": name, "state": "not applied", "reason": reason})
        rules.sort(key=lambda r: order.get(r["rule"], 0))  # config order
        out.append({
            "series_uid": rec["series_uid"],
            "modality": rec["modality"],
            "instances": rec["instances"],
            "rules": rules,
            "no_rule_applies": not plan.applied,
            "jobs": by_series.get(plan.series.series_uid, []),
        })  # fmt: skip
    return {
        "study_uid": study_uid,
        "routed": routed,
        "last_received": _clock(study.last_received),
        "quiet_for_seconds": round(now - study.last_received, 1),
        "series": out,
    }


def as_text(report: dict[str, Any]) -> str:
    lines = [
        f"study {report['study_uid']}: {len(report['series'])} series, last instance"
        f" {report['last_received']} ({report['quiet_for_seconds']:.0f} s ago),"
        f" {'routed' if report['routed'] else 'not routed yet'}"
    ]
    for s in report["series"]:
        lines.append(f"  series {s['series_uid']} ({s['modality'] or '?'},"
                     f" {s['instances']} instance(s))")  # fmt: skip
        for r in s["rules"]:
            if r["state"] == "waiting":
                lines.append(f"    {r['rule']}: waiting for {r['waiting_for']};"
                             f" completes anyway at {r['forced_at']}")  # fmt: skip
            elif r["state"] == "not applied":
                lines.append(f"    {r['rule']}: does not apply: {r['reason']}")
            else:
                lines.append(f"    {r['rule']}: {r['state']}")
        if s["no_rule_applies"]:
            lines.append("    → no rule applies: stored, nothing runs")
        for j in s["jobs"]:
            reason = f": {j['reason']}" if j["reason"] else ""
            lines.append(f"    job {j['id']} {j['rule']} → {j['pipeline']}: {j['state']}{reason}")
    return "\n".join(lines) + "\n"
