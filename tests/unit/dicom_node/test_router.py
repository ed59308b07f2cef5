"""Rules acting through the dispatcher: several pipelines per rule with their queue,
lane, priority and parameters on the job row and in the enqueue call; late-instance
policies; discard; first match only. The broker is a recording callable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node import facts as header
from dicom_node.dispatch import Dispatcher
from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs
from dicom_node.outbox import Outbox
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import Database, open_database
from tests.support import postgres

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2"


class Broker:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.keywords: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any], **keywords: Any) -> None:
        self.messages.append(message)
        self.keywords.append(keywords)


_opened: list[Database] = []


@pytest.fixture(autouse=True)
def _close_databases() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def node(tmp_path: Path, rules: list[dict[str, Any]], apply: str = "all"):
    settings = Settings.model_validate({
        "node": {"stable_after_seconds": 10},
        "storage": {"dir": str(tmp_path)},
        "routing": {"apply": apply},
        "destinations": {"archive": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 104}},
        "rules": rules,
    })  # fmt: skip
    db = open_database(postgres.suite_database(tmp_path))  # PostgreSQL in the suite's PG run
    _opened.append(db)
    broker = Broker()
    spool = Spool(tmp_path)
    spool.create()
    return Dispatcher(settings, spool, Index(db), Jobs(db), Outbox(db), broker), broker


def receive(d: Dispatcher, series: str, numbers: range, now: float, **attrs: str) -> None:
    for i in numbers:
        sop = f"{series}.{i}"
        rel = d.spool.store_instance(STUDY, series, sop, b"DICM")
        facts = {"00080060": ["CT"], "00080016": [CT]}
        facts.update({k: [v] for k, v in attrs.items()})
        d.index.record(InstanceRecord(STUDY, series, sop, CT, rel, 4, facts=facts), now=now)


CT_RULE = {"attribute": "Modality", "equals": "CT"}


def test_a_rule_runs_each_pipeline_with_its_queue_lane_priority_and_parameters(tmp_path):
    d, broker = node(tmp_path, [{
        "name": "chest", "when": CT_RULE, "destinations": ["archive"],
        "run": [{"pipeline": "lung-ct", "queue": "gpu", "lane": "urgent", "priority": 8,
                 "parameters": {"threshold": 0.4}},
                {"pipeline": "nodule-ct", "lane": "offpeak"}]}])  # fmt: skip
    receive(d, "1.2.3", range(3), now=0.0)
    d.tick(now=11.0)
    jobs = sorted(d.jobs.active(), key=lambda j: j.pipeline)
    assert [(j.pipeline, j.queue, j.lane, j.priority, j.parameters) for j in jobs] == [
        ("lung-ct", "gpu", "urgent", 8, {"threshold": 0.4}),
        ("nodule-ct", "default", "offpeak", 5, {}),
    ]
    assert sorted(broker.keywords, key=lambda k: k["lane"]) == [
        {"queue": "default", "lane": "offpeak", "priority": 5},
        {"queue": "gpu", "lane": "urgent", "priority": 8},
    ]
    lung = next(m for m in broker.messages if m["pipeline"] == "lung-ct")
    assert lung["parameters"] == {"threshold": 0.4} and lung["queue"] == "gpu"


def late_run(tmp_path: Path, policy: str, per: str) -> list[tuple[str, int]]:
    """A study routed once, then a late instance for its series and a new series."""
    tmp_path.mkdir()
    d, _ = node(tmp_path, [{"name": "r", "when": CT_RULE, "pipeline": "lung-ct",
                            "trigger": {"per": per, "late_instances": policy}}])  # fmt: skip
    receive(d, "1.2.3", range(3), now=0.0)
    d.tick(now=11.0)
    receive(d, "1.2.3", range(3, 4), now=20.0)
    receive(d, "1.2.4", range(2), now=20.0)
    d.tick(now=31.0)
    return sorted((j.series_uid, len(j.inputs)) for j in d.jobs.active())


def test_late_instances_rerun_ignore_or_new_series_only(tmp_path):
    assert late_run(tmp_path / "a", "rerun", "study") == [
        ("1.2.3", 3), ("1.2.3", 4), ("1.2.4", 2)]  # fmt: skip
    assert late_run(tmp_path / "b", "ignore", "study") == [("1.2.3", 3)]
    assert late_run(tmp_path / "c", "new_series", "study") == [("1.2.3", 3), ("1.2.4", 2)]
    assert late_run(tmp_path / "d", "ignore", "series") == [("1.2.3", 3), ("1.2.4", 2)]


def test_discard_deletes_the_series_and_stops_later_rules(tmp_path):
    d, broker = node(tmp_path, [
        {"name": "drop-scouts", "discard": True,
         "when": {"attribute": "ImageType", "contains": "LOCALIZER"}},
        {"name": "lungs", "when": CT_RULE, "pipeline": "lung-ct"}])  # fmt: skip
    receive(d, "1.2.3", range(2), now=0.0, **{"00080008": "ORIGINAL\\PRIMARY\\LOCALIZER"})
    receive(d, "1.2.4", range(3), now=0.0)
    d.tick(now=11.0)
    assert [j.series_uid for j in d.jobs.active()] == ["1.2.4"]
    assert not (tmp_path / "spool" / STUDY / "1.2.3").exists()
    assert [s.series_uid for s in d.index.series_of(STUDY)] == ["1.2.4"]


def test_first_match_only(tmp_path):
    d, _ = node(tmp_path, [{"name": "a", "when": CT_RULE, "pipeline": "lung-ct"},
                           {"name": "b", "when": CT_RULE, "pipeline": "other"}],
                apply="first")  # fmt: skip
    receive(d, "1.2.3", range(2), now=0.0)
    d.tick(now=11.0)
    assert [j.rule for j in d.jobs.active()] == ["a"]


def test_facts_merged_at_receive_mark_gaps(tmp_path):
    d, _ = node(tmp_path, [])
    receive(d, "1.2.3", range(2), now=0.0, **{"00180010": "IOMEPROL"})
    receive(d, "1.2.3", range(2, 3), now=1.0)
    [series] = d.index.series_of(STUDY)
    assert series.facts["00180010"] == ["IOMEPROL"]
    assert series.facts[header.PARTIAL] == ["00180010"]


def test_a_late_instance_waits_for_a_new_quiet_period_not_the_old_timeout(tmp_path):
    d, _ = node(tmp_path, [{"name": "r", "when": CT_RULE, "pipeline": "lung-ct",
                            "trigger": {"quiet_seconds": 10, "timeout_seconds": 100}}])  # fmt: skip
    receive(d, "1.2.3", range(3), now=0.0)
    d.tick(now=11.0)
    receive(d, "1.2.3", range(3, 4), now=500.0)
    d.tick(now=501.0)
    assert len(d.jobs.active()) == 1, "waits: the timeout runs from the late instance"
    d.tick(now=511.0)
    assert sorted(len(j.inputs) for j in d.jobs.active()) == [3, 4]


def test_a_study_that_never_goes_quiet_is_forced_at_its_timeout(tmp_path):
    d, _ = node(tmp_path, [{"name": "r", "when": CT_RULE, "pipeline": "lung-ct",
                            "trigger": {"quiet_seconds": 10, "timeout_seconds": 30}}])  # fmt: skip
    for t in range(0, 40, 5):
        receive(d, "1.2.3", range(t, t + 1), now=float(t))
        d.tick(now=float(t) + 1)
    assert [len(j.inputs) for j in d.jobs.active()] == [7], "forced at 30 s, 7 instances"


def test_a_per_series_rule_acts_while_the_study_still_arrives(tmp_path):
    d, _ = node(tmp_path, [{"name": "r", "when": CT_RULE, "pipeline": "lung-ct",
                            "trigger": {"per": "series", "quiet_seconds": 5}}])  # fmt: skip
    receive(d, "1.2.3", range(3), now=0.0)
    for t in range(0, 12, 2):
        receive(d, "1.2.4", range(t, t + 1), now=float(t))
    d.tick(now=11.0)
    assert [j.series_uid for j in d.jobs.active()] == ["1.2.3"]
