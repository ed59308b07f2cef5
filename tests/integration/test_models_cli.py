"""``dicom-node models list / check`` as an operator meets them: a malformed manifest
is refused with its key and line, and the other pipelines stay available."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.registry import BUILTIN, builtin_folder
from tests.support.peers import NodeProcess
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


def dicom_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


def broken_model(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "broken"
    shutil.copytree(builtin_folder(BUILTIN["brain-t1"]), folder)
    path = folder / "model.yaml"
    path.write_text(
        path.read_text()
        .replace("name: brain-t1", "name: brain-site")
        .replace("    threshold: 0.5", "    threshold: 5")
    )
    return folder


def test_check_names_the_key_and_line_of_a_bad_manifest(tmp_path: Path) -> None:
    folder = broken_model(tmp_path)
    lines = (folder / "model.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if "threshold: 5" in text)
    result = dicom_node("models", "check", str(folder), cwd=tmp_path)
    assert result.returncode == 2
    assert f"model.yaml:{line}: outputs.postprocessing.threshold: Input should be less than or " \
           "equal to 1" in result.stderr  # fmt: skip


def test_a_refused_folder_is_listed_and_the_node_config_still_checks(tmp_path: Path) -> None:
    broken_model(tmp_path)
    (tmp_path / "config.yaml").write_text(
        "models: [models/broken]\n"
        "rules:\n"
        "  - {name: brain, when: {attribute: Modality, equals: MR}, pipeline: brain-t1}\n"
        "  - {name: site, when: {attribute: Modality, equals: MR}, pipeline: brain-site}\n"
    )
    listed = dicom_node("models", "list", "--config", "config.yaml", cwd=tmp_path)
    assert listed.returncode == 1
    assert "brain-t1 1.0.0: deepbrain brain extractor" in listed.stdout
    assert "lung-ct 1.0.0:" in listed.stdout
    assert "REFUSED brain-site:" in listed.stdout
    assert "outputs.postprocessing.threshold" in listed.stdout
    assert listed.stdout.count("outputs.postprocessing.threshold") == 1
    assert "outputs.postprocessing.threshold" not in listed.stderr, "printed, not logged too"
    checked = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.count(" refused: ") == 1  # logged once with its error; the rest serve


def test_list_shows_what_each_manifest_says_about_its_model(tmp_path: Path) -> None:
    listed = dicom_node("models", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    brain = lines.index(next(line for line in lines if line.startswith("brain-t1 1.0.0:")))
    about = lines[brain + 1 : brain + 6]
    assert about[0] == "    description:  Brain extraction (skull stripping) of T1-weighted" \
                       " brain MR; brain volume in ml"  # fmt: skip
    assert about[1] == "    authors:      Ivan Itzcovich"
    assert about[2] == "    licence:      MIT"
    assert about[3].startswith("    intended use: ")
    assert about[4] == "    manufacturer: dicom-node"


def site_model(tmp_path: Path, name: str) -> Path:
    """A valid copy of brain-t1 under another name."""
    folder = tmp_path / "models" / name
    shutil.copytree(builtin_folder(BUILTIN["brain-t1"]), folder)
    path = folder / "model.yaml"
    path.write_text(path.read_text().replace("name: brain-t1", f"name: {name}"))
    return folder


def line_of(folder: Path, start: str) -> int:
    lines = (folder / "model.yaml").read_text().splitlines()
    return next(i for i, text in enumerate(lines, start=1) if text.startswith(start))


def test_a_wrong_checksum_and_a_missing_file_are_logged_once_at_start(tmp_path: Path) -> None:
    changed = site_model(tmp_path, "changed")
    with open(changed / "graph.pb", "ab") as fh:
        fh.write(b"\0")
    missing = site_model(tmp_path, "missing")
    (missing / "graph.pb").unlink()
    (tmp_path / "config.yaml").write_text("models: [models/changed, models/missing]\nrules: []\n")
    expected = [
        f"{changed}/model.yaml:{line_of(changed, '  sha256:')}: model.sha256: the model file's",
        f"{missing}/model.yaml:{line_of(missing, '  path:')}: model.path: graph.pb does not exist",
    ]
    checked = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    for text in expected:
        assert checked.stderr.count(text) == 1, checked.stderr
    for folder in (changed, missing):
        assert dicom_node("models", "check", str(folder), cwd=tmp_path).returncode == 2

    node = NodeProcess(tmp_path / "node", {"storage": {"dir": "var"}, "rules": [],
                                           "models": [str(changed), str(missing)]})  # fmt: skip
    try:
        node.start()
        wait_for(lambda: "embedded worker started" in node.log(), 60, "the embedded worker")
    finally:
        assert node.stop() == 0
    for text in expected:
        assert node.log().count(text) == 1, node.log()
