"""The SCP against dcmtk's echoscu/storescu: durable storage, statuses, peers, no PHI in logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.support.ct_series import SENTINEL_PATIENT, SeriesOptions, write_ct_series
from tests.support.peers import NodeProcess, echoscu, storescu
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory, node_database):
    folder = tmp_path_factory.mktemp("node")
    proc = NodeProcess(
        folder,
        {
            "node": {"stable_after_seconds": 1, "allowed_calling_aets": ["STORESCU", "ECHOSCU"]},
            "storage": {"dir": "var"},
            "rules": [],
        },
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    hu = np.full((6, 32, 32), -1000, np.int16)
    hu[:, 4:28, 4:28] = 40
    return write_ct_series(tmp_path_factory.mktemp("series"), hu, SeriesOptions())


def count_instances(node: NodeProcess) -> int:
    return int(node.status()["index"]["instances"])


def test_what_the_node_stores_is_readable_by_its_user_only(node, series):
    assert storescu(node.port, series.paths[:1]).returncode == 0
    var = node.folder / "var"
    instance = var / "spool" / series.study_uid / series.series_uid / f"{series.sop_uids[0]}.dcm"
    database = node.database_file  # None: the tables are in PostgreSQL
    for path in (instance, *([database] if database else [])):
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (var / "spool", instance.parent, var / "work", var / "outbox"):
        assert path.stat().st_mode & 0o777 == 0o700, path


def test_echo_answers_success(node):
    assert echoscu(node.port).returncode == 0


def test_stored_instances_are_on_disk_and_indexed_when_storescu_returns(node, series):
    result = storescu(node.port, series.paths)
    assert result.returncode == 0, result.stderr
    spool = node.folder / "var" / "spool" / series.study_uid / series.series_uid
    stored = sorted(p.stem for p in spool.glob("*.dcm"))
    assert stored == sorted(series.sop_uids)
    assert pydicom.dcmread(spool / f"{series.sop_uids[0]}.dcm").SOPInstanceUID == series.sop_uids[0]
    [row] = node.query("SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series.series_uid,))
    assert row[0] == 6


def test_sending_the_same_instances_again_counts_them_once(node, series):
    storescu(node.port, series.paths)
    before = count_instances(node)
    assert storescu(node.port, series.paths).returncode == 0
    assert count_instances(node) == before


def _variant(src: Path, dst: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = value
    ds.save_as(dst)
    return dst


def _kept(node: NodeProcess) -> list[Path]:
    """The node's files that hold something: not association slot files (they come
    and go with associations; one may still be closing), not the empty blanks
    made ahead in ``incoming`` to receive into."""
    return sorted(p for p in (node.folder / "var").rglob("*")
                  if p.is_file() and "slots" not in p.parts
                  and not ("incoming" in p.parts and p.stat().st_size == 0))  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"SOPInstanceUID": "1.2.3/../../../evil"}, "CannotUnderstand"),
        ({"StudyInstanceUID": None}, "CannotUnderstand"),
        ({"SeriesInstanceUID": "1.2." + "3" * 70}, "CannotUnderstand"),
    ],
)
def test_missing_or_unsafe_uids_get_a_failure_status_and_nothing_is_written(
    node, series, tmp_path, changes, status
):
    path = _variant(series.paths[0], tmp_path / "bad.dcm", **changes)
    before = _kept(node)
    result = storescu(node.port, [path], extra=["-v"])
    assert result.returncode != 0
    assert status in result.stderr + result.stdout
    files = [p for p in _kept(node) if "broker" not in p.parts
             and not p.name.startswith("node.sqlite")]  # fmt: skip
    assert sorted(files) == sorted(f for f in before if f in files)
    assert not list(node.folder.parent.rglob("evil*"))
    assert echoscu(node.port).returncode == 0, "the node keeps serving"


def test_unknown_sop_class_is_refused_at_negotiation_and_the_node_keeps_serving(
    node, series, tmp_path
):
    private = "1.2.3.4.5.6.7.8.9"
    path = tmp_path / "private.dcm"
    ds = pydicom.dcmread(series.paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private
    ds.save_as(path)
    profile = tmp_path / "storescu.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n"
        "[[PresentationContexts]]\n[Private]\n"
        f"PresentationContext1 = {private}\\Uncompressed\n"
        "[[Profiles]]\n[Private]\nPresentationContexts = Private\n"
    )
    result = storescu(node.port, [path], extra=["-xf", str(profile), "Private"])
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stderr
    assert echoscu(node.port).returncode == 0


def test_unknown_calling_ae_is_rejected_and_logged(node):
    result = echoscu(node.port, calling="INTRUDER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr
    wait_for(lambda: "association rejected" in node.log(), 10, "the rejection in the log")


def test_wrong_called_ae_is_rejected(node):
    assert echoscu(node.port, called="SOMEONE-ELSE").returncode != 0


def test_no_patient_value_appears_in_any_log_line(node, series):
    storescu(node.port, series.paths)
    wait_for(lambda: "study stable" in node.log(), 30, "the study to be routed")
    log = node.log()
    for value in SENTINEL_PATIENT.values():
        assert value not in log
    assert "SENTINEL" not in log


def test_full_disk_answers_out_of_resources(tmp_path, series):
    proc = NodeProcess(
        tmp_path / "full",
        {
            "storage": {"dir": "var", "min_free_mb": 10**9},
            "rules": [],
        },
    ).start()
    try:
        result = storescu(proc.port, series.paths[:1], extra=["-v"])
        assert result.returncode != 0
        assert "OutOfResources" in result.stderr + result.stdout or "A700" in result.stderr
        assert count_instances(proc) == 0
    finally:
        assert proc.stop() == 0
