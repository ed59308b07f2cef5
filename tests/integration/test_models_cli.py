"""``dicom-node models list / check`` as an operator meets them: a malformed manifest
is refused with its key and line, and the other pipelines stay available."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.registry import BUILTIN, builtin_folder

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
    checked = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "refused" in checked.stderr  # logged with its error; the rest serve
