"""Models through the whole node, with Orthanc as the PACS.

One node on the shipped config.yaml plus what docs/models.md tells a site to add
(a Keras model trained by the doc's own script, its manifest, a rule): a T1 brain
MR pushed by Orthanc comes back as a brain SEG and SR (its T2 twin is not
processed), and a CT series comes back segmented by the site's Keras model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from tests.support import brain_mr
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import REPO, NodeProcess, Orthanc
from tests.support.validators import errors_in_seg, errors_in_sr
from tests.support.wait import wait_for

DOC = REPO / "docs" / "models.md"


def doc_files() -> dict[str, str]:
    """The files docs/models.md shows, by the name in their ``<!-- file: -->`` mark."""
    text = DOC.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```", text, flags=re.S)
    return {name: body for name, body in blocks}


@dataclass
class Site:
    archive: Orthanc
    node: NodeProcess
    folder: Path


def _follow_the_doc(folder: Path) -> None:
    """Steps 1-4 of "Add your model in ten minutes", as written."""
    files = doc_files()
    (folder / "bright-lesion").mkdir(parents=True)
    (folder / "train.py").write_text(files["train.py"])
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    digest = hashlib.sha256((folder / "bright-lesion" / "model.keras").read_bytes()).hexdigest()
    manifest = files["bright-lesion/model.yaml"].replace(
        "PASTE-THE-SHA256-OF-model.keras-HERE", digest
    )
    (folder / "bright-lesion" / "model.yaml").write_text(manifest)
    check = subprocess.run(
        [sys.executable, "-m", "workers", "models", "check", "bright-lesion"],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "model.keras matches model.sha256" in check.stdout
    assert "ran on a synthetic input" in check.stdout


@pytest.fixture(scope="session")
def doc_model(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The folder the doc's steps made, once per session: the module's SQLite and
    PostgreSQL runs (often two processes at once) share it, the first to take the
    lock training the model, the other waiting for it."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the session's folder, shared by its xdist processes
    folder = root / "models-doc"
    with open(root / "models-doc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            _follow_the_doc(folder)
            (folder / "done").touch()
    return folder


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, doc_model: Path, node_database: str
) -> Iterator[Site]:
    if not brain_mr.available():
        pytest.fail(f"{brain_mr.T1} missing: scripts/install.sh test installs it")
    root = tmp_path_factory.mktemp("models-e2e")
    shutil.copytree(doc_model, root / "node", ignore=shutil.ignore_patterns("done"))
    addition = dict(yaml.safe_load(doc_files()["config-addition.yaml"]))
    archive = Orthanc(root / "orthanc")
    node = NodeProcess(root / "node", {})
    archive.start(modalities={"node": ["DICOM-NODE", "127.0.0.1", node.port]})
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["node"]["stable_after_seconds"] = 2
    config["storage"]["dir"] = "var"
    config["destinations"]["archive"].update(
        {"ae_title": archive.aet, "host": "127.0.0.1", "port": archive.dicom_port}
    )
    config["models"] = addition["models"]
    config["rules"] += addition["rules"]
    node.config = config
    try:
        node.start()
        listed = node.cli("models", "list")
        assert "bright-lesion 1.0.0: Bright lesion finder" in listed.stdout, listed.stderr
        for about in ("    description:  Bright round lesions on CT, outlined slice by slice",
                      "    authors:      Hospital data science team",
                      "    licence:      Apache-2.0",
                      "    intended use: Demonstration only. Not for diagnosis.",
                      "    manufacturer: Example Hospital"):  # fmt: skip
            assert about in listed.stdout.splitlines(), listed.stdout
        assert "brain-t1 1.0.0: deepbrain brain extractor" in listed.stdout
        yield Site(archive, node, root)
    finally:
        code = node.stop()
        archive.stop()
    assert code == 0, node.log()


def results_in(archive: Orthanc, study_uid: str, series_description: str) -> dict[str, str]:
    """Orthanc ids of the SEG and SR in the study once both are there, by modality."""
    body = json.dumps(
        {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
    ).encode()
    found: dict[str, str] = {}
    for series in archive.request("POST", "/tools/find", body):
        tags = series["MainDicomTags"]
        if tags.get("Modality") in ("SEG", "SR") and series_description in tags.get(
            "SeriesDescription", ""
        ):
            found[tags["Modality"]] = series["Instances"][0]
    return found if len(found) == 2 else {}


def fetch(site: Site, ids: dict[str, str], name: str) -> dict[str, Path]:
    paths = {}
    for modality, instance_id in ids.items():
        paths[modality] = site.folder / f"{name}-{modality}.dcm"
        paths[modality].write_bytes(site.archive.file(instance_id))
    return paths


def push(site: Site, paths: list[Path]) -> None:
    uploaded = [site.archive.upload(p) for p in paths]
    site.archive.push("node", uploaded[0]["ParentStudy"])


def test_orthanc_gets_the_brain_back_from_a_t1_series_and_nothing_for_t2(site: Site) -> None:
    folder = site.folder / "mr"
    t1 = brain_mr.write_brain_series(
        folder / "t1", series_description="COR T1 SE HEAD", body_part=""
    )
    t2 = brain_mr.write_brain_series(
        folder / "t2", series_description="COR T2 TSE HEAD", body_part="", study_uid=t1.study_uid
    )
    for path in t2.paths:
        ds = pydicom.dcmread(path)
        ds.EchoTime, ds.RepetitionTime = 100, 4000
        ds.save_as(path)
    push(site, [*t1.paths, *t2.paths])

    ids = wait_for(
        lambda: results_in(site.archive, t1.study_uid, "Brain"), 300, "brain SEG and SR", poll=1
    )
    paths = fetch(site, ids, "brain")
    seg = pydicom.dcmread(paths["SEG"])
    assert brain_mr.dice_against(t1, seg) >= 0.90
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    assert referenced == {t1.series_uid}, "the T2 series must not be processed"
    sr = pydicom.dcmread(paths["SR"])
    volume = _numeric(sr, "118565006")
    assert volume == pytest.approx(t1.volume_ml, rel=0.10)
    assert errors_in_seg(paths["SEG"]) == []
    assert errors_in_sr(paths["SR"]) == []
    jobs = site.node.status()["recent_jobs"]
    brain_jobs = [j for j in jobs if j["pipeline"] == "brain-t1"]
    assert len(brain_jobs) == 1 and brain_jobs[0]["state"] == "done"


def _numeric(sr: pydicom.Dataset, code: str) -> float:
    def walk(items: Any) -> Iterator[Any]:
        for item in items:
            yield item
            yield from walk(getattr(item, "ContentSequence", []))

    for item in walk(sr.ContentSequence):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == code:
            return float(item.MeasuredValueSequence[0].NumericValue)
    raise AssertionError(f"no NUM {code} in the SR")


def test_the_documented_keras_model_segments_a_ct_series_into_orthanc(site: Site) -> None:
    rng = np.random.default_rng(5)
    hu = rng.normal(40, 20, (24, 96, 96))
    z, y, x = np.mgrid[:24, :96, :96]
    spacing = (2.5, 0.8, 0.8)
    lesion = ((z - 12) * spacing[0]) ** 2 + ((y - 40) * 0.8) ** 2 + ((x - 52) * 0.8) ** 2 <= 100
    hu[lesion] += 250
    series = write_ct_series(
        site.folder / "ct",
        hu.astype(np.int16),
        SeriesOptions(spacing=spacing, series_description="LESION PHANTOM"),
    )
    for path in series.paths:  # not a chest: only the site's rule applies
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "ABDOMEN"
        ds.save_as(path)
    push(site, series.paths)

    ids = wait_for(
        lambda: results_in(site.archive, series.study_uid, "bright-lesion"), 300,
        "lesion SEG and SR", poll=1,
    )  # fmt: skip
    paths = fetch(site, ids, "lesion")
    seg = pydicom.dcmread(paths["SEG"])
    assert seg.SegmentSequence[0].SegmentLabel == "Lesion"
    found = brain_mr.seg_masks(seg)
    empty = np.zeros(hu.shape[1:], bool)
    got = np.stack([found.get(uid, empty) for uid in series.sop_uids])
    assert brain_mr.dice(got, lesion) >= 0.85
    sr = pydicom.dcmread(paths["SR"])
    assert _numeric(sr, "118565006") == pytest.approx(lesion.sum() * 2.5 * 0.64 / 1000, rel=0.2)
    (equipment,) = sr.ContributingEquipmentSequence
    assert equipment.Manufacturer == "Example Hospital"
    assert equipment.ManufacturerModelName == "Bright lesion finder"
    assert errors_in_seg(paths["SEG"]) == []
    assert errors_in_sr(paths["SR"]) == []
    status = site.node.cli("status")
    assert status.returncode == 0, status.stderr
    (line,) = [x for x in status.stdout.splitlines() if f"bright-lesion {series.series_uid}" in x]
    assert re.search(r"  Lesion \d+\.\d ml \(mean \d+\.\d, max diameter \d+\.\d mm\)$", line), line
