"""Routing actions and triggers on a running node, with series written by dcmtk's
dump2dcm and sent by storescu: forward unchanged, discard, a release trigger, an
expected-content trigger explained by ``status --study``, and reload on file change
with its audit log."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import yaml
from pydicom import dcmread

from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import REPO, NodeProcess, Storescp, storescu
from tests.support.scanner_files import CASES, ROOT, write_cases
from tests.support.wait import wait_for

PICK = ("chest-bodypart", "head", "dose-report")  # studies ROOT.1, ROOT.2, ROOT.3


def test_forward_discard_release_trigger_and_why_waiting(tmp_path):
    copy = Storescp(tmp_path / "copy").start()
    write_cases(tmp_path / "in", tuple(c for c in CASES if c.name in PICK))
    chest, head, dose = (sorted((tmp_path / "in" / name).glob("*.dcm")) for name in PICK)
    config = {
        "node": {"stable_after_seconds": 3600},  # only the rules' own triggers act
        "storage": {"dir": "var"},
        "destinations": {"copy": {"ae_title": copy.aet, "host": "127.0.0.1", "port": copy.port}},
        "rules": [
            {"name": "drop-dose", "discard": True, "trigger": {"per": "series", "quiet_seconds": 0},
             "when": {"attribute": "SOPClassUID", "equals": "1.2.840.10008.5.1.4.1.1.88.67"}},
            {"name": "copy-chest", "forward": ["copy"],
             "when": {"attribute": "BodyPartExamined", "equals": "chest", "ignore_case": True},
             "trigger": {"per": "series", "wait_for": "release"}},
            {"name": "head-pair", "forward": ["copy"],
             "when": {"attribute": "BodyPartExamined", "equals": "HEAD"},
             "trigger": {"wait_for": "expected", "timeout_seconds": 7200, "expect": {
                 "series": [{"attribute": "SeriesDescription", "regex": "(?i).*bone.*"}]}}},
        ],
    }  # fmt: skip
    node = NodeProcess(tmp_path / "node", config).start()
    try:
        assert storescu(node.port, [*chest, *dose, *head], calling="CT2").returncode == 0
        wait_for(lambda: len(copy.files()) == len(chest), 60, "the chest series forwarded")
        sent = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in chest}
        for path in copy.files():
            got = dcmread(path)
            assert got == sent[str(got.SOPInstanceUID)], "forwarded unchanged"
        spool = tmp_path / "node" / "var" / "spool"
        wait_for(lambda: not (spool / f"{ROOT}.3").exists(), 30, "the dose report discarded")
        jobs = node.status()["recent_jobs"]
        assert [(j["rule"], j["pipeline"], j["state"]) for j in jobs] == [
            ("copy-chest", "forward", "done")]  # fmt: skip

        head_study = f"{ROOT}.2"
        result = node.cli("status", "--study", head_study)
        assert result.returncode == 0, result.stderr
        assert "head-pair: waiting for expected series missing: (0008,103E) SeriesDescription" \
            in result.stdout  # fmt: skip
        assert "completes anyway at" in result.stdout
        assert "drop-dose: does not apply: (0008,0016) SOPClassUID: no value equals" \
            in result.stdout  # fmt: skip
        report = json.loads(node.cli("status", "--study", head_study, "--json").stdout)
        [series] = report["series"]
        assert series["rules"][0]["state"] == "not applied"
        assert [r for r in series["rules"] if r["rule"] == "head-pair"][0]["state"] == "waiting"
        assert "SENTINEL" not in result.stdout + node.log()

        recent = node.cli("rules", "test", "--recent", "5", "--json")
        lines = [json.loads(x) for x in recent.stdout.splitlines()]
        assert {r["series_uid"] for r in lines} == {f"{ROOT}.1.1", f"{ROOT}.2.1"}
        chest_line = next(r for r in lines if r["series_uid"] == f"{ROOT}.1.1")
        assert chest_line["forward"] == [{"rule": "copy-chest", "destinations": ["copy"]}]
    finally:
        code = node.stop()
        copy.stop()
    assert code == 0


def test_saving_the_config_file_reloads_it_and_the_change_is_audited(tmp_path):
    config = {"node": {"stable_after_seconds": 1}, "storage": {"dir": "var"}, "rules": []}
    node = NodeProcess(tmp_path / "node", config).start()
    audit = tmp_path / "node" / "var" / "config-audit.log"

    def entries() -> list[dict]:
        text = audit.read_text() if audit.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    try:
        wait_for(lambda: [e["event"] for e in entries()] == ["start"], 30, "the start entry")
        node.config_path.write_text("rules:\n  - name: x\n    pipelin: lung-ct\n")
        wait_for(lambda: "NOT reloaded" in node.log(), 30, "the refusal")
        assert "rules.0.pipelin" in node.log() and len(entries()) == 1

        config["rules"] = [{"name": "lungs", "when": {"attribute": "Modality", "equals": "CT"},
                            "pipeline": "lung-ct"}]  # fmt: skip
        config["routing"] = {"apply": "first"}
        node.config_path.write_text(yaml.safe_dump(config))
        wait_for(lambda: len(entries()) == 2, 30, "the reload entry")
        entry = entries()[1]
        assert entry["event"] == "reload"
        assert entry["changed"] == ["routing.apply", "rules.lungs (added)"]
        assert len(entry["sha256"]) == 64 and entry["rules"] == 1
    finally:
        code = node.stop()
    assert code == 0


def test_a_series_cut_off_mid_push_waits_for_the_senders_retry_and_runs_once_on_all(tmp_path):
    """An association lost mid-push leaves half a series; a quiet trigger must not
    act on that half before the sender has had time to send again."""
    copy = Storescp(tmp_path / "copy").start()
    series = write_ct_series(tmp_path / "ct", np.zeros((10, 64, 64), np.int16), SeriesOptions())
    config = {
        "node": {"interrupted_hold_seconds": 3600},
        "storage": {"dir": "var"},
        "destinations": {"copy": {"ae_title": copy.aet, "host": "127.0.0.1", "port": copy.port}},
        "rules": [{"name": "copy-ct", "forward": ["copy"], "trigger": {"per": "series",
                   "quiet_seconds": 5}, "when": {"attribute": "Modality", "equals": "CT"}}],
    }  # fmt: skip
    node = NodeProcess(tmp_path / "node", config).start()
    try:
        size = series.paths[0].stat().st_size
        cut = subprocess.run(
            [sys.executable, "-m", "tests.support.raw_scu", str(node.port),
             *map(str, series.paths), "--cut-after", str(5 * size)],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert cut.returncode == 3, cut.stdout + cut.stderr  # the connection was cut
        wait_for(lambda: "association lost" in node.log(), 30, "the lost association")
        held = "copy-ct: waiting for the sender to send again after an association ended"

        def why() -> str:
            return node.cli("status", "--study", series.study_uid).stdout

        # Quiet for 5 s first; then, instead of acting, it waits for the retry.
        # Each look is a command (a Python start-up, ~1 s of CPU): not every 0.1 s.
        wait_for(lambda: held in why(), 60, "the series held for the sender's retry", poll=1.0)
        assert not copy.files() and not node.status()["recent_jobs"]
        assert storescu(node.port, series.paths).returncode == 0  # the sender's retry
        wait_for(lambda: len(copy.files()) == 10, 60, "the whole series forwarded")
        jobs = node.status()["recent_jobs"]
        assert [(j["rule"], j["state"]) for j in jobs] == [("copy-ct", "done")], jobs
        assert "job 1: forward 10 instances to copy" in node.log()
    finally:
        code = node.stop()
        copy.stop()
    assert code == 0
