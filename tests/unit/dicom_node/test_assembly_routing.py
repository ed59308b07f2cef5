from dicom_node.assembly import is_stable, stable_studies
from dicom_node.index import SeriesSummary, StudyState
from dicom_node.routing import select
from dicom_node.settings import Rule

CT = "1.2.840.10008.5.1.4.1.1.2"


def study(rev: int, routed: int, last: float) -> StudyState:
    return StudyState("1.2.3", rev, routed, last)


def test_study_is_not_stable_while_instances_keep_arriving():
    assert not is_stable(study(5, 0, last=100.0), now=120.0, stable_after=30)
    assert is_stable(study(5, 0, last=100.0), now=130.0, stable_after=30)


def test_routed_study_is_not_routed_again_until_a_late_instance_arrives():
    assert not is_stable(study(5, 5, last=0.0), now=1000.0, stable_after=30)
    assert is_stable(study(6, 5, last=900.0), now=1000.0, stable_after=30)


def test_stable_studies_come_oldest_first():
    a, b = StudyState("1.1", 1, 0, 50.0), StudyState("1.2", 1, 0, 10.0)
    assert [s.study_uid for s in stable_studies([a, b, study(1, 0, 99.0)], 100.0, 30)] == [
        "1.2",
        "1.1",
    ]


def series(**kw: object) -> SeriesSummary:
    base = dict(
        study_uid="1.2",
        series_uid="1.2.3",
        modality="CT",
        body_part="CHEST",
        description="Thorax 1mm",
        protocol_name="",
        manufacturer="",
        sop_class_uid=CT,
        instances=120,
    )
    base.update(kw)
    return SeriesSummary(**base)  # type: ignore[arg-type]


def rule(name: str = "lungs", **match: object) -> Rule:
    return Rule.model_validate({"name": name, "match": match, "pipeline": "lung-ct"})


def test_rule_matches_chest_ct_by_modality_body_part_and_sop_class():
    r = rule(Modality="CT", BodyPartExamined="(?i)chest|thorax", SOPClassUID=CT.replace(".", r"\."))
    assert select(series(), [r]) == [r]
    assert select(series(body_part="ABDOMEN"), [r]) == []
    assert select(series(modality="MR"), [r]) == []


def test_regular_expressions_must_match_the_whole_value():
    assert select(series(modality="CTX"), [rule(Modality="CT")]) == []


def test_series_description_regex_and_instance_count_bounds():
    r = rule(SeriesDescription="(?i).*thorax.*", min_instances=50, max_instances=200)
    assert select(series(), [r]) == [r]
    assert select(series(instances=10), [r]) == []
    assert select(series(instances=500), [r]) == []


def test_missing_attribute_matches_only_an_empty_pattern():
    assert select(series(body_part=""), [rule(BodyPartExamined="")])
    assert not select(series(body_part=""), [rule(BodyPartExamined="CHEST")])


def test_any_of_several_match_entries_selects_the_rule():
    either = [
        {"BodyPartExamined": "CHEST"},
        {"BodyPartExamined": "", "SeriesDescription": ".*Lung.*"},
    ]
    r = Rule.model_validate({"name": "r", "pipeline": "p", "match": either})
    assert select(series(body_part="", description="Lung 1mm"), [r]) == [r]
    assert select(series(body_part="", description="Abdomen"), [r]) == []


def test_every_matching_rule_applies_in_config_order():
    a, b = rule("a", Modality="CT"), rule("b", Modality="CT|MR")
    assert select(series(), [a, b]) == [a, b]


def test_shipped_rule_takes_chest_ct_and_leaves_other_regions_alone():
    from pathlib import Path

    from dicom_node.settings import load_settings

    rules = load_settings(Path(__file__).resolve().parents[3] / "config.yaml").rules
    assert select(series(body_part="CHEST"), rules)
    assert select(series(body_part="", description="Thorax 1.0 B70f"), rules)
    assert select(series(body_part="", description=""), rules)
    assert not select(series(body_part="ABDOMEN", description="chest"), rules)
    assert not select(series(body_part="", description="Abdomen 5mm"), rules)
    assert not select(series(body_part="CHEST", instances=3), rules), "scouts have few images"
    assert not select(series(body_part="CHEST", modality="MR"), rules)
