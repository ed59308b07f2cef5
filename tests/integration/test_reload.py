"""SIGHUP reloads rules and destinations; a bad file leaves the running config in force."""

from __future__ import annotations

import signal

import yaml

from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import NodeProcess, Storescp, storescu
from tests.support.phantom import small_chest
from tests.support.wait import wait_for


def test_sighup_applies_new_rules_and_ignores_a_broken_file(tmp_path):
    archive = Storescp(tmp_path / "archive").start()
    config = {
        "node": {"stable_after_seconds": 1},
        "storage": {"dir": "var"},
        "destinations": {"archive": {"ae_title": archive.aet, "host": "127.0.0.1",
                                     "port": archive.port}},
        "rules": [],
    }  # fmt: skip
    node = NodeProcess(tmp_path / "node", config).start()
    phantom = small_chest(seed=9)
    options = SeriesOptions(spacing=phantom.spacing)
    try:
        first = write_ct_series(tmp_path / "first", phantom.hu, options)
        assert storescu(node.port, first.paths).returncode == 0
        wait_for(lambda: "study stable: 0 job(s)" in node.log(), 30, "the unrouted study")

        node.config_path.write_text("rules:\n  - name: x\n    pipelin: lung-ct\n")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "NOT reloaded" in node.log(), 30, "the refusal")
        assert "rules.0.pipelin" in node.log()

        config["rules"] = [{"name": "lungs", "match": {"Modality": "CT"}, "pipeline": "lung-ct",
                            "destinations": ["archive"]}]  # fmt: skip
        node.config_path.write_text(yaml.safe_dump(config))
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded: 1 rule(s)" in node.log(), 30, "the reload")

        second = write_ct_series(tmp_path / "second", phantom.hu, options)
        assert storescu(node.port, second.paths).returncode == 0
        wait_for(lambda: len(archive.files()) == 2, 180, "SEG and SR from the new rule")
        assert node.status()["jobs"] == {"done": 1}, "the first study stays unrouted"
    finally:
        code = node.stop()
        archive.stop()
    assert code == 0


def test_a_rule_for_a_model_folder_added_while_running_says_to_restart(tmp_path):
    import shutil

    from pipelines.registry import BUILTIN, builtin_folder

    folder = tmp_path / "models" / "bone-finder"
    shutil.copytree(builtin_folder(BUILTIN["brain-t1"]), folder)
    manifest = folder / "model.yaml"
    manifest.write_text(manifest.read_text().replace("name: brain-t1", "name: bone-finder"))
    config = {"storage": {"dir": "var"}, "routing": {"watch_config": False}, "rules": []}
    node = NodeProcess(tmp_path / "node", config).start()
    try:
        config["models"] = [str(folder)]
        config["rules"] = [{"name": "bones", "match": {"Modality": "CT"},
                            "pipeline": "bone-finder"}]  # fmt: skip
        node.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        line = node.config_path.read_text().splitlines().index("  pipeline: bone-finder") + 1
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "NOT reloaded" in node.log(), 30, "the refusal")
        assert (f"{node.config_path.resolve()}:{line}: rules.0.pipeline: rule 'bones' names"
                " pipeline 'bone-finder', which comes from a models: folder the running node"
                " has not loaded; a change to models: takes effect when the node and its"
                " workers restart") in node.log()  # fmt: skip

        config["rules"] = [{"name": "bones", "match": {"Modality": "CT"},
                            "pipeline": "bone-fidner"}]  # fmt: skip
        node.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: node.log().count("NOT reloaded") == 2, 30, "the second refusal")
        assert (f"{node.config_path.resolve()}:{line}: rules.0.pipeline: rule 'bones' names"
                " unknown pipeline 'bone-fidner' (known: brain-t1, lung-ct)"
                ) in node.log()  # fmt: skip
    finally:
        code = node.stop()
    assert code == 0
    restarted = NodeProcess(tmp_path / "node", {**config, "rules": [
        {"name": "bones", "match": {"Modality": "CT"}, "pipeline": "bone-finder"}]})  # fmt: skip
    try:
        restarted.start()  # after a restart the rule may name it
    finally:
        assert restarted.stop() == 0
