"""Manifests: a bad one is refused naming the key and its line; the rest load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.base import PipelineFailed
from pipelines.manifest import ChecksumMismatch, ManifestError, model_checksum, read_manifest
from pipelines.registry import BUILTIN, builtin_folder, discover

BRAIN = builtin_folder(BUILTIN["brain-t1"])


def copy_brain(tmp_path: Path, name: str = "brain") -> Path:
    folder = tmp_path / name
    shutil.copytree(BRAIN, folder)
    return folder


def edit(folder: Path, old: str, new: str) -> None:
    path = folder / "model.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def line_of(folder: Path, text: str) -> int:
    lines = (folder / "model.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if text in line)


def test_builtin_manifests_load_and_their_checksums_hold() -> None:
    catalog = discover()
    assert set(catalog.manifests) == {"lung-ct", "brain-t1"}
    assert catalog.refused == {}
    brain = catalog.manifests["brain-t1"]
    assert brain.model.format == "frozen-graph"
    assert model_checksum(brain.model_path) == brain.model.sha256


def test_a_misspelt_key_is_named_with_its_line(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    edit(folder, "    largest_component: true", "    largest_componnet: true")
    line = line_of(folder, "largest_componnet")
    with pytest.raises(ManifestError) as error:
        read_manifest(folder)
    assert f"model.yaml:{line}: outputs.postprocessing.largest_componnet" in str(error.value)
    assert "Extra inputs are not permitted" in str(error.value)


def test_a_wrong_value_is_named_with_its_line(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    edit(folder, "  orientation: RAS", "  orientation: RAX")
    line = line_of(folder, "orientation: RAX")
    with pytest.raises(ManifestError, match=rf"model.yaml:{line}: preprocessing.orientation: "
                       "expected three letters"):  # fmt: skip
        read_manifest(folder)


def test_a_missing_section_is_named(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    text = (folder / "model.yaml").read_text()
    start = text.index("accepts:")
    end = text.index("preprocessing:")
    (folder / "model.yaml").write_text(text[:start] + text[end:])
    with pytest.raises(ManifestError, match=r"model.yaml:\d+: accepts: Field required"):
        read_manifest(folder)


def test_a_model_file_that_changed_is_refused(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    with open(folder / "graph.pb", "ab") as fh:
        fh.write(b"\0")
    line = line_of(folder, "  sha256:")
    with pytest.raises(ChecksumMismatch, match=rf"model.yaml:{line}: model.sha256: the model "
                       "file's SHA-256 is [0-9a-f]{64}, the manifest says 6be5"):  # fmt: skip
        read_manifest(folder)


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    (folder / "graph.pb").unlink()
    line = line_of(folder, "  path: graph.pb")
    with pytest.raises(ManifestError, match=rf"model.yaml:{line}: model.path: graph.pb does not"):
        read_manifest(folder)


def test_a_missing_model_file_names_the_path_line_whatever_the_key_order(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    (folder / "graph.pb").unlink()
    lines = (folder / "model.yaml").read_text().splitlines(keepends=True)
    at_path = next(i for i, text in enumerate(lines) if text.startswith("  path: graph.pb"))
    at_sha = next(i for i, text in enumerate(lines) if text.startswith("  sha256:"))
    lines[at_path], lines[at_sha] = lines[at_sha], lines[at_path]  # sha256 before path
    (folder / "model.yaml").write_text("".join(lines))
    line = line_of(folder, "  path: graph.pb")
    with pytest.raises(ManifestError, match=rf"model.yaml:{line}: model.path: graph.pb does not"):
        read_manifest(folder)


def test_yaml_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    (folder / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        read_manifest(folder)


def test_a_refused_folder_leaves_the_other_pipelines_available(tmp_path: Path) -> None:
    good = copy_brain(tmp_path, "good")
    edit(good, "name: brain-t1", "name: brain-t1-site")
    bad = copy_brain(tmp_path, "bad")
    edit(bad, "name: brain-t1", "name: brain-t1-broken")
    edit(bad, "  mode: volume", "  mode: voxels")
    catalog = discover([good, bad])
    assert {"lung-ct", "brain-t1", "brain-t1-site"} <= set(catalog.manifests)
    assert set(catalog.refused) == {"brain-t1-broken"}
    assert "preprocessing.mode" in catalog.refused["brain-t1-broken"]
    with pytest.raises(ManifestError, match="preprocessing.mode"):
        catalog.get("brain-t1-broken")
    assert catalog.get("brain-t1-site").spec.name == "brain-t1-site"


def test_an_unknown_hook_is_refused(tmp_path: Path) -> None:
    folder = copy_brain(tmp_path)
    edit(folder, "name: brain-t1", "name: brain-hooked")
    (folder / "model.yaml").write_text(
        (folder / "model.yaml").read_text() + "hooks:\n  prepare: os.system\n"
    )
    catalog = discover([folder])
    assert "unknown hook(s) os.system" in catalog.refused["brain-hooked"]


def test_run_parameters_set_a_manifest_pipelines_post_processing() -> None:
    catalog = discover()
    brain = catalog.get("brain-t1")
    tuned = brain.with_parameters({"threshold": 0.8, "largest_component": True})  # type: ignore[attr-defined]
    post = tuned.manifest.outputs.postprocessing
    assert (post.threshold, post.largest_component) == (0.8, True)
    assert brain.manifest.outputs.postprocessing.threshold == 0.5, "the catalog's stays"  # type: ignore[attr-defined]
    with pytest.raises(PipelineFailed, match="'thresh' is not a setting of pipeline brain-t1"):
        brain.with_parameters({"thresh": 0.8})  # type: ignore[attr-defined]
    with pytest.raises(PipelineFailed, match="run parameter threshold of pipeline brain-t1"):
        brain.with_parameters({"threshold": 7})  # type: ignore[attr-defined]
    with pytest.raises(PipelineFailed, match="lung-ct takes no run parameters"):
        catalog.get("lung-ct").with_parameters({"threshold": 0.8})  # type: ignore[attr-defined]
