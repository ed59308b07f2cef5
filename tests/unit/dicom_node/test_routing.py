"""The rule language: conditions on header facts, rule order, triggers.

Series are built from real pydicom data sets through the same fact extraction
the SCP uses, so what is tested is what a received series would look like.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node import facts as header
from dicom_node.index import SeriesSummary
from dicom_node.routing import count_complete, match, plan_study, select, subject
from dicom_node.settings import ConfigError, Rule, load_settings

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
NOON = datetime(2026, 12, 2, 12, 0)  # a Wednesday
# Hospital data has lower-case CS values; pydicom warns when a test writes one.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def ds(**attrs: object) -> Dataset:
    d = Dataset()
    d.SOPClassUID = CT
    d.Modality = "CT"
    for key, value in attrs.items():
        setattr(d, key, value)
    return d


def series(
    *instances: Dataset,
    uid: str = "1.2.3",
    n: int | None = None,
    context: dict[str, str] | None = None,
    first: float = 0.0,
    last: float = 0.0,
    released: float | None = None,
    interrupted: float | None = None,
) -> SeriesSummary:
    """A series of the given instances (the first one repeated ``n`` times)."""
    facts: header.SeriesFacts = {}
    items = list(instances) * (n or 1) if n else list(instances)
    for i, d in enumerate(items):
        header.merge(facts, header.instance_facts(d, context), i == 0)
    return SeriesSummary("1.2", uid, "", "", "", "", "", "", len(items), facts, first, last,
                         released, interrupted)  # fmt: skip


def rule(when: object = None, **kw: object) -> Rule:
    return Rule.model_validate({"name": kw.pop("name", "r"), "when": when, "pipeline": "p", **kw})


def check(when: object, s: SeriesSummary, now: datetime = NOON) -> str | None:
    return rule(when).condition.compile()(subject(s, [s], now))


def test_equals_is_case_sensitive_unless_asked():
    s = series(ds(BodyPartExamined="chest"))
    assert check({"attribute": "BodyPartExamined", "equals": "CHEST"}, s) is not None
    assert (
        check({"attribute": "BodyPartExamined", "equals": "CHEST", "ignore_case": True}, s) is None
    )


def test_attribute_by_tag_in_any_spelling():
    s = series(ds(BodyPartExamined="CHEST"))
    for name in ("(0018,0015)", "00180015", "0018,0015"):
        assert check({"attribute": name, "one_of": ["LUNG", "CHEST"]}, s) is None


def test_contains_looks_at_each_value_of_a_multi_valued_attribute():
    s = series(ds(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert check({"attribute": "ImageType", "contains": "LOCALIZER"}, s) is None
    assert check({"attribute": "ImageType", "contains": "LOCAL"}, s) is not None
    assert check({"attribute": "ImageType", "equals": "ORIGINAL\\PRIMARY\\LOCALIZER"}, s) is None


def test_sequence_path_matches_in_any_item():
    d = ds()
    item1, item2 = Dataset(), Dataset()
    item1.CodeValue, item2.CodeValue = "RPID16", "ZZ999"
    d.ProcedureCodeSequence = Sequence([item1, item2])
    s = series(d)
    assert check({"attribute": "ProcedureCodeSequence.CodeValue", "equals": "ZZ999"}, s) is None
    assert check({"attribute": "(0008,1032).(0008,0100)", "regex": "RPID.*"}, s) is None
    assert check({"attribute": "ProcedureCodeSequence.CodeValue", "equals": "X"}, s) is not None


def test_numeric_and_date_ranges():
    s = series(ds(SliceThickness="1.25", StudyDate="20261130", StudyTime="223015"))
    assert check({"attribute": "SliceThickness", "range": {"max": 2.5}}, s) is None
    assert check({"attribute": "SliceThickness", "range": {"min": 3}}, s) is not None
    assert check({"attribute": "StudyDate", "date_range": {"from": "2026-11-01"}}, s) is None
    assert check({"attribute": "StudyDate", "date_range": {"to": "2026-11-29"}}, s) is not None
    assert (
        check({"attribute": "StudyTime", "time_range": {"from": "22:00", "to": "06:00"}}, s) is None
    )


def test_empty_values_count_as_absent():
    s = series(ds(BodyPartExamined=""))
    assert check({"attribute": "BodyPartExamined", "absent": True}, s) is None
    assert check({"attribute": "BodyPartExamined", "exists": True}, s) == (
        "(0018,0015) BodyPartExamined is absent"
    )


def test_levels_series_means_any_instance_and_instance_means_every_instance():
    scout = ds(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    axial = ds(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    s = series(scout, axial, axial)
    localizer = {"attribute": "ImageType", "contains": "LOCALIZER"}
    assert check(localizer, s) is None
    assert check({**localizer, "level": "instance"}, s) is not None
    assert check({"attribute": "ImageType", "contains": "ORIGINAL", "level": "instance"}, s) is None
    assert check({"not": localizer}, s) == ("excluded: (0008,0008) ImageType contains LOCALIZER")


def test_study_level_sees_the_other_series():
    ct = series(ds(), uid="1.1")
    pet = series(ds(Modality="PT", SOPClassUID="1.2.840.10008.5.1.4.1.1.128"), uid="1.2")
    r = rule({"attribute": "Modality", "equals": "PT", "level": "study"})
    assert match(ct, [ct, pet], [r], NOON).applied
    assert not match(ct, [ct], [r], NOON).applied


def test_nested_all_any_not():
    when = {"all": [
        {"attribute": "Modality", "equals": "CT"},
        {"any": [{"attribute": "BodyPartExamined", "equals": "CHEST"},
                 {"attribute": "SeriesDescription", "regex": "(?i).*thorax.*"}]},
        {"not": {"attribute": "ImageType", "contains": "LOCALIZER"}},
    ]}  # fmt: skip
    assert check(when, series(ds(SeriesDescription="Thorax 1.0"))) is None
    reason = check(when, series(ds(SeriesDescription="Abdomen")))
    assert reason is not None and reason.startswith(
        "none of: (0018,0015) BodyPartExamined is absent"
    )


def test_sender_conditions_on_ae_titles_and_address():
    s = series(ds(), context={"calling_ae": "CT_ROOM2", "called_ae": "AI_NODE",
                              "peer_address": "10.20.1.7"})  # fmt: skip
    assert check({"attribute": "calling_ae", "one_of": ["CT_ROOM1", "CT_ROOM2"]}, s) is None
    assert check({"attribute": "called_ae", "equals": "AI_NODE"}, s) is None
    assert check({"attribute": "peer_address", "in_network": "10.20.0.0/16"}, s) is None
    assert check({"attribute": "peer_address", "in_network": ["192.168.0.0/16"]}, s) is not None


def test_time_of_day_wraps_midnight_and_day_of_week():
    s = series(ds())
    night = {"time_of_day": {"from": "19:00", "to": "07:00"}}
    assert check(night, s, datetime(2026, 12, 2, 23, 30)) is None
    assert check(night, s, datetime(2026, 12, 2, 6, 59)) is None
    assert (
        check(night, s, NOON) == "routing time 12:00 is outside the time of day from 19:00 to 07:00"
    )
    assert check({"day_of_week": ["sat", "Sunday"]}, s, datetime(2026, 12, 6, 9)) is None
    assert check({"day_of_week": ["sat", "sun"]}, s, NOON) is not None


def test_reasons_never_quote_the_found_value():
    s = series(ds(PatientName="SENTINEL^PATIENT", BodyPartExamined="SENTINELPART"))
    for when in (
        {"attribute": "PatientName", "equals": "X"},
        {"attribute": "BodyPartExamined", "regex": "CHEST"},
        {"attribute": "PatientName", "absent": True},
        {"attribute": "PatientName", "range": {"min": 1}, "level": "instance"},
    ):
        reason = check(when, s)
        assert reason is not None and "SENTINEL" not in reason


def test_legacy_match_keeps_its_meaning():
    legacy = Rule.model_validate({"name": "r", "pipeline": "p", "match": [
        {"Modality": "CT", "BodyPartExamined": "", "min_instances": 3}]})  # fmt: skip
    assert select(series(ds(), n=3), [legacy]) == [legacy]
    assert select(series(ds(), n=2), [legacy]) == []
    assert select(series(ds(BodyPartExamined="HEAD"), n=3), [legacy]) == []
    assert select(series(ds(Modality="CTX"), n=3), [legacy]) == [], "regex matches the whole value"


def test_first_match_only_and_discard_stop_later_rules():
    a = rule({"attribute": "Modality", "equals": "CT"}, name="a")
    b = rule({"attribute": "Modality", "equals": "CT"}, name="b")
    drop = Rule.model_validate({"name": "drop", "discard": True,
                                "when": {"attribute": "Modality", "equals": "CT"}})  # fmt: skip
    off = rule({"attribute": "Modality", "equals": "CT"}, name="off", enabled=False)
    s = series(ds())
    assert [x.rule.name for x in match(s, [s], [a, b], NOON, "all").applied] == ["a", "b"]
    plan = match(s, [s], [off, a, b], NOON, "first")
    assert [x.rule.name for x in plan.applied] == ["a"]
    assert plan.not_applied == {"b": "rule a matched first (routing.apply: first)"}
    assert plan.not_matched == {"off": "switched off (enabled: false)"}
    plan = match(s, [s], [drop, a], NOON, "all")
    assert plan.discarded_by == "drop" and "a" in plan.not_applied


def test_per_rule_quiet_period_and_forced_timeout():
    s = series(ds(), first=0.0, last=100.0)
    quick = rule(
        {"attribute": "Modality", "equals": "CT"},
        name="quick",
        trigger={"per": "series", "quiet_seconds": 5, "timeout_seconds": 1000},
    )
    slow = rule({"attribute": "Modality", "equals": "CT"}, name="slow",
                trigger={"quiet_seconds": 60, "timeout_seconds": 130})  # fmt: skip
    [plan] = plan_study([s], [quick, slow], now=110.0)
    assert [(a.rule.name, a.ready) for a in plan.applied] == [("quick", True), ("slow", False)]
    assert plan.applied[1].waiting == "study quiet for 50 s more (quiet period 60 s)"
    assert plan.applied[1].forced_at == 130.0
    [plan] = plan_study([s], [slow], now=130.0)
    assert plan.applied[0].ready, "forced completion"


def test_release_trigger_waits_for_the_association_to_end():
    r = rule({"attribute": "Modality", "equals": "CT"}, trigger={"wait_for": "release"})
    open_ = series(ds(), last=10.0, released=None)
    [plan] = plan_study([open_], [r], now=11.0)
    assert plan.applied[0].waiting == "the association sending 1 series to be released"
    [plan] = plan_study([series(ds(), last=10.0, released=10.5)], [r], now=11.0)
    assert plan.applied[0].ready


@pytest.mark.parametrize("wait_for", ["quiet", "release"])
def test_a_series_whose_association_ended_unfinished_waits_for_the_retry(wait_for):
    trigger = {"wait_for": wait_for, "quiet_seconds": 5, "timeout_seconds": 3600}
    r = rule({"attribute": "Modality", "equals": "CT"}, trigger=trigger)
    cut = series(ds(), first=0.0, last=10.0, released=10.0, interrupted=10.0)
    [plan] = plan_study([cut], [r], now=100.0, interrupted_hold=300.0)
    assert plan.applied[0].waiting.startswith("the sender to send again after an association")
    assert "210 s more at most" in plan.applied[0].waiting
    [plan] = plan_study([cut], [r], now=310.0, interrupted_hold=300.0)
    assert plan.applied[0].ready, "no retry came: it acts on what it has"
    [plan] = plan_study([cut], [r], now=100.0, interrupted_hold=0.0)
    assert plan.applied[0].ready, "node.interrupted_hold_seconds: 0 turns the wait off"
    [plan] = plan_study([series(ds(), last=10.0, released=10.0)], [r], now=100.0,
                        interrupted_hold=300.0)  # fmt: skip
    assert plan.applied[0].ready, "a retry's released association cleared the interruption"


def test_the_forced_timeout_ends_the_wait_for_a_retry():
    r = rule({"attribute": "Modality", "equals": "CT"}, trigger={"timeout_seconds": 60})
    cut = series(ds(), first=0.0, last=10.0, interrupted=10.0)
    [plan] = plan_study([cut], [r], now=61.0, default_quiet=5, interrupted_hold=300.0)
    assert plan.applied[0].ready


def test_expected_series_and_instance_counts():
    r = rule(
        {"attribute": "Modality", "equals": "CT"},
        trigger={"per": "study", "wait_for": "expected", "expect": {
            "series": [{"attribute": "SeriesDescription", "regex": "(?i).*lung.*"}],
            "instance_counts": True}},
    )  # fmt: skip
    soft = series(ds(SeriesDescription="Soft tissue", ImagesInAcquisition=4), n=4, uid="1.1")
    [plan] = plan_study([soft], [r], now=10.0)
    assert plan.applied[0].waiting.startswith("expected series missing: (0008,103E)")
    lung = series(ds(SeriesDescription="Lung", ImagesInAcquisition=4), n=3, uid="1.2")
    plans = plan_study([soft, lung], [r], now=10.0)
    assert (
        plans[0].applied[0].waiting
        == "instance counts: series 1.2 has 3 of 4 instances (ImagesInAcquisition)"
    )
    lung = series(ds(SeriesDescription="Lung", ImagesInAcquisition=4), n=4, uid="1.2")
    assert all(p.applied[0].ready for p in plan_study([soft, lung], [r], now=10.0))


def test_counts_from_temporal_positions_and_frames():
    d = [ds(NumberOfTemporalPositions=3, TemporalPositionIdentifier=i) for i in (1, 2)]
    assert (
        count_complete(series(*d))
        == "series 1.2.3 has 2 of 3 temporal positions (NumberOfTemporalPositions)"
    )
    assert count_complete(series(ds(NumberOfFrames=40))) == ""
    assert count_complete(series(ds())) is None


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            {"attribute": "BodyPartExamind", "equals": "CHEST"},
            r":5: rules.0.when.AttributeCondition.attribute: .*'BodyPartExamind' is neither",
        ),
        (
            {"attribute": "Modality", "equals": "CT", "regex": "CT"},
            r"exactly one operator .* found equals, regex",
        ),
        ({"attribute": "Modality", "regex": "(CT"}, r"not a valid regular expression"),
        ({"al": []}, r"a condition is a mapping with one of"),
    ],
)
def test_a_bad_condition_names_the_key_and_line(tmp_path: Path, when: object, message: str):
    import yaml

    text = yaml.safe_dump({"rules": [{"name": "r", "pipeline": "p", "when": when}]},
                          sort_keys=False)  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_queue_lane_priority_and_parameters_are_validated(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("rules:\n  - name: r\n    run:\n      - pipeline: p\n        lane: fast\n")
    with pytest.raises(ConfigError, match=r":5: rules.0.run.0.lane: Input should be 'urgent'"):
        load_settings(path)
    run = {"pipeline": "p", "queue": "gpu", "lane": "urgent", "priority": 9, "parameters": {"t": 1}}
    ok = Rule.model_validate({"name": "r", "run": [run]})
    assert (ok.runs[0].queue, ok.runs[0].lane, ok.runs[0].priority) == ("gpu", "urgent", 9)
    with pytest.raises(ValueError, match="a rule needs an action"):
        Rule.model_validate({"name": "r"})


def test_every_instance_is_exact_with_gaps_and_many_values():
    contrast = {"attribute": "ContrastBolusAgent", "exists": True, "level": "instance"}
    with_agent = ds(ContrastBolusAgent="IOMEPROL")
    assert check(contrast, series(with_agent, with_agent)) is None
    assert check(contrast, series(with_agent, ds())) == (
        "(0018,0010) ContrastBolusAgent: not every instance has it"
    )
    assert check(contrast, series(ds(), with_agent)) is not None, "a gap before the first value"
    thick = {"attribute": "SliceThickness", "range": {"max": 5}, "level": "instance"}
    many = [ds(SliceThickness=str(1 + i / 10)) for i in range(header.MAX_DISTINCT + 2)]
    assert check(thick, series(*many[: header.MAX_DISTINCT])) is None
    assert check(thick, series(*many)) is not None, "values not kept: cannot say every"
    assert check({"attribute": "SliceThickness", "range": {"max": 5}}, series(*many)) is None


def test_facts_read_from_raw_bytes_equal_facts_from_decoded_values():
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    raw = dcmread(BytesIO(Path(str(path)).read_bytes()))
    decoded = dcmread(BytesIO(Path(str(path)).read_bytes()))
    for tag in list(decoded.keys()):
        decoded[tag]  # every element converted by pydicom
    fast = header.instance_facts(raw)
    assert fast == header.instance_facts(decoded)
    assert fast["00080060"] == ["CT"] and fast["00280010"] == ["128"]


def test_attributes_an_archive_sent_as_un_are_read_with_their_dictionary_vr():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    found = header.instance_facts(dcmread(get_testdata_file("explicit_VR-UN.dcm")))
    assert found["00080060"] == ["CT"] and found["00180015"] == ["PANCREAS"]
