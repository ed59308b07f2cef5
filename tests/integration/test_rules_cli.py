"""``dicom-node rules test`` on the shipped config.yaml, with series written by
dcmtk's dump2dcm as scanners write them (tests/support/scanner_files.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.peers import REPO
from tests.support.scanner_files import CASES, write_cases


def rules_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "rules", "test", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip


def test_shipped_rules_route_chest_ct_and_t1_brain_mr_and_nothing_else(tmp_path):
    by_series = write_cases(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    result = rules_test("--config", str(REPO / "config.yaml"), "--json", str(tmp_path / "in"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(CASES)
    for rec in lines:
        case = by_series[rec["series_uid"]]
        if case.lungs:
            assert rec["matched"] == [
                {
                    "rule": "chest-ct-lungs",
                    "pipeline": "lung-ct",
                    "queue": "default",
                    "lane": "normal",
                    "priority": 5,
                }
            ], case
            assert "chest-ct-lungs" not in rec["not_matched"]
        else:
            assert "chest-ct-lungs" not in {m["rule"] for m in rec["matched"]}, case.name
            assert rec["not_matched"]["chest-ct-lungs"], case.name
        brain = [m for m in rec["matched"] if m["rule"] == "t1-brain-mr"]
        assert [m["pipeline"] for m in brain] == (["brain-t1"] if case.brain else []), case.name
        assert rec["study_uid"] and rec["instances"] == case.instances
    assert "1 file(s) skipped (not DICOM)" in result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr


def test_rules_from_the_docs_route_by_sender_and_say_why_not(tmp_path):
    write_cases(
        tmp_path / "in", tuple(c for c in CASES if c.name in ("chest-bodypart", "mr-brain-t1"))
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "destinations:\n  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 104}\n"
        "routing: {apply: first}\n"
        "rules:\n"
        "  - name: from-ct2\n"
        "    when: {attribute: calling_ae, equals: CT2}\n"
        "    forward: [research]\n"
        "  - name: mr-anything\n"
        "    when: {attribute: Modality, equals: MR}\n"
        "    run: [{pipeline: lung-ct, queue: gpu, lane: urgent, priority: 8}]\n"
    )
    result = rules_test("--config", str(config), "--json", "--calling-ae", "CT2",
                        str(tmp_path / "in"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    ct, mr = sorted((json.loads(x) for x in result.stdout.splitlines()),
                    key=lambda r: r["modality"])  # fmt: skip
    assert ct["forward"] == [{"rule": "from-ct2", "destinations": ["research"]}]
    assert ct["not_matched"] == {}
    assert ct["not_applied"] == {
        "mr-anything": "rule from-ct2 matched first (routing.apply: first)"
    }
    result = rules_test("--config", str(config), str(tmp_path / "in"))
    assert "from-ct2: calling_ae is absent" in result.stdout
    assert "MATCH    mr-anything → lung-ct (queue gpu, lane urgent, priority 8)" in result.stdout
    assert mr["modality"] == "MR"


def test_a_bad_rule_file_names_the_key_and_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("rules:\n  - name: r\n    pipeline: lung-ct\n    when:\n"
                      "      attribute: BodyPart\n      equals: CHEST\n")  # fmt: skip
    result = rules_test("--config", str(config), str(tmp_path))
    assert result.returncode == 2
    assert ":5: rules.0.when.AttributeCondition.attribute" in result.stderr
    assert "'BodyPart' is neither a DICOM keyword nor a tag" in result.stderr
