"""Hostile, broken and concurrent input against a running node: each answered with
the right status, nothing partial kept, the node serving throughout."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import AE

from dicom_node.header import meta_end
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.hostile import (
    DEFLATED,
    JPEG_LS_LOSSLESS,
    ct_dataset,
    deflate_bomb,
    element,
    encode,
    nested_sequences,
    write_raw,
)
from tests.support.peers import (
    DCMTK_ENV,
    REPO,
    NodeProcess,
    die_with_the_tests,
    echoscu,
    free_port,
    received_files,
    storescu,
)
from tests.support.wait import wait_for

STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture(scope="module")
def node(tmp_path_factory, node_database):
    proc = NodeProcess(
        tmp_path_factory.mktemp("hostile"),
        {
            "node": {"stable_after_seconds": 1},
            "receive": {"max_instance_mb": 3, "max_inflated_mb": 4, "max_associations_per_peer": 2},
            "storage": {"dir": "var"},
            "rules": [],
        },
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def raw_store(port: int, path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.raw_scu", str(port), str(path), *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def leftovers(node: NodeProcess) -> list[Path]:
    """Files being received, or kept from a refused data set."""
    return received_files(node.folder / "var" / "incoming")


def spool_files(node: NodeProcess) -> set[Path]:
    return {p for p in (node.folder / "var" / "spool").rglob("*") if p.is_file()}


def indexed(node: NodeProcess, sop_uid: str) -> int:
    return int(node.query("SELECT COUNT(*) FROM instances WHERE sop_uid = ?", (sop_uid,))[0][0])


def _with(data: bytes, before: bytes, extra: bytes) -> bytes:
    cut = data.index(before)
    return data[:cut] + extra + data[cut:]


def _cases() -> dict[str, tuple[bytes, str, str]]:
    big = encode(ct_dataset("1.2.3.9.1", rows=64))
    base = encode(ct_dataset("1.2.3.9.1"))
    no_pixels = ct_dataset("1.2.3.9.1")
    del no_pixels.PixelData
    sop_class_tag = b"\x08\x00\x16\x00"
    return {
        "truncated": (big[:-1000], "", "0xC210"),
        "2GB-length": (_with(base, sop_class_tag,
                             element(0x0008, 0x0070, b"UT", b"x" * 8, 0x7FFFFFF0)), "", "0xC210"),
        "10000-nested-sequences": (
            _with(base, b"\x20\x00\x0d\x00", nested_sequences(10_000)), "", "0xC210"),
        "file-meta-inside": (
            element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2\0") + base, "", "0xC210"),
        "meta-disagrees-with-context": (base, JPEG_LS_LOSSLESS, "0xC210"),
        "deflate-bomb": (deflate_bomb(encode(no_pixels), 64), DEFLATED, "0xA700"),
        "over-max-instance-size": (encode(ct_dataset("1.2.3.9.1", rows=1400)), "", "0xA700"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_cases()))
def test_hostile_data_sets_are_refused_with_a_status_and_nothing_is_kept(node, tmp_path, case):
    data, syntax, status = _cases()[case]
    before = spool_files(node)
    path = write_raw(tmp_path / "bad.dcm", data, "1.2.3.9.1", syntax or "1.2.840.10008.1.2.1")
    result = raw_store(node.port, path)
    assert f"status {status}" in result.stdout, result.stdout + result.stderr
    assert spool_files(node) == before
    wait_for(lambda: not leftovers(node), 10, "no partial file in incoming")
    assert indexed(node, "1.2.3.9.1") == 0
    assert echoscu(node.port).returncode == 0, "the node keeps serving"


def test_an_association_cut_mid_data_set_leaves_no_partial_file(node, tmp_path):
    path = write_raw(tmp_path / "big.dcm", encode(ct_dataset("1.2.3.9.2", rows=1000)), "1.2.3.9.2")
    before = spool_files(node)
    result = raw_store(node.port, path, "--cut-after", "200000")
    assert result.returncode == 3, result.stdout + result.stderr
    wait_for(lambda: not leftovers(node), 30, "the partial data set to be removed")
    assert spool_files(node) == before and indexed(node, "1.2.3.9.2") == 0
    assert echoscu(node.port).returncode == 0


def test_the_same_instance_stored_at_once_over_four_associations(node, tmp_path):
    """A retry storm: every copy is answered Success and the file is one of them, whole."""
    versions = []
    for n in range(4):
        ds = ct_dataset("1.2.3.9.3", rows=200, study=STUDY, value=n + 1)
        versions.append(write_raw(tmp_path / f"v{n}.dcm", encode(ds), "1.2.3.9.3"))
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.support.raw_scu", str(node.port), str(v),
                          "--repeat", "15", "--calling", f"STORM{n}"],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
        for n, v in enumerate(versions)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outputs:
        assert out.split("\n").count("status 0x0000") == 15, out
    stored = node.folder / "var" / "spool" / STUDY / f"{STUDY}.1" / "1.2.3.9.3.dcm"
    with open(stored, "rb") as fp:
        body = stored.read_bytes()[meta_end(fp) :]
    assert body in [v.read_bytes()[meta_end(open(v, "rb")) :] for v in versions]
    assert indexed(node, "1.2.3.9.3") == 1
    wait_for(lambda: not leftovers(node), 10, "no temporary file left")


def test_a_resent_instance_with_new_content_replaces_the_old_and_counts_once(node, tmp_path):
    first = write_raw(tmp_path / "a.dcm", encode(ct_dataset("1.2.3.9.4", value=1)), "1.2.3.9.4")
    second = write_raw(tmp_path / "b.dcm", encode(ct_dataset("1.2.3.9.4", value=2)), "1.2.3.9.4")
    assert "status 0x0000" in raw_store(node.port, first).stdout
    assert "status 0x0000" in raw_store(node.port, second).stdout
    stored = next((node.folder / "var" / "spool").rglob("1.2.3.9.4.dcm"))
    assert pydicom.dcmread(stored).pixel_array.max() == 2
    assert indexed(node, "1.2.3.9.4") == 1


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    ],
    ids=["SR", "PR", "KO"],
)
def test_sr_pr_and_ko_in_an_image_study_are_stored(node, tmp_path, sop_class):
    ds = ct_dataset(f"1.2.3.9.5.{len(sop_class)}", study=STUDY)
    ds.SOPClassUID = sop_class
    del ds.PixelData
    path = write_raw(tmp_path / "x.dcm", encode(ds), ds.SOPInstanceUID, sop_class=sop_class)
    assert "status 0x0000" in raw_store(node.port, path).stdout
    assert indexed(node, ds.SOPInstanceUID) == 1


def test_one_peer_cannot_take_every_association(node):
    hog = AE(ae_title="HOG")
    hog.add_requested_context("1.2.840.10008.1.1")
    held = [hog.associate("127.0.0.1", node.port, ae_title="DICOM-NODE") for _ in range(3)]
    try:
        assert [a.is_established for a in held] == [True, True, False]
        assert held[2].is_rejected, (held[2].is_aborted, node.log()[-3000:])
        assert echoscu(node.port, calling="REALPACS").returncode == 0
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    wait_for(lambda: "association limit reached" in node.log(), 10, "the rejection logged")


def test_kill_9_mid_push_loses_nothing_answered_and_a_resend_completes_it(tmp_path):

    series = write_ct_series(tmp_path / "ct", np.zeros((300, 16, 16), np.int16), SeriesOptions())
    proc = NodeProcess(tmp_path / "n", {"storage": {"dir": "var"}, "rules": []}).start()
    push = subprocess.Popen(
        ["storescu", "-v", "-aet", "STORESCU", "-aec", "DICOM-NODE", "127.0.0.1", str(proc.port),
         *map(str, series.paths)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=DCMTK_ENV,
    )  # fmt: skip
    try:
        wait_for(lambda: _count(proc) >= 60, 60, "part of the push to arrive")
    except BaseException:  # leave no node and no push running behind
        push.kill()
        proc.stop()
        raise
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait()
    out = push.communicate(timeout=60)[0]
    acked = out.count("Received Store Response (Success)")
    assert 0 < acked < 300
    proc.start()
    try:
        folder = proc.folder / "var" / "spool" / series.study_uid / series.series_uid
        for path, sop in list(zip(series.paths, series.sop_uids, strict=True))[:acked]:
            assert (folder / f"{sop}.dcm").read_bytes()[-512:] == path.read_bytes()[-512:]
        assert _count(proc) >= acked
        on_disk = set((proc.folder / "var" / "spool").rglob("*.dcm"))
        assert len(on_disk) == _count(proc), "no file without its index row after the restart"
        assert storescu(proc.port, series.paths).returncode == 0
        assert _count(proc) == 300
        status = proc.status()
        assert status["index"]["instances"] == 300
    finally:
        assert proc.stop() == 0, proc.log()


def test_a_receiving_process_still_running_keeps_a_restarted_node_off_its_files(tmp_path):
    """A node killed with ``receive.processes`` > 1 may leave a receiving process
    finishing for a moment; a node started meanwhile must not remove a file that
    process has moved into the spool and not yet committed."""
    proc = NodeProcess(tmp_path / "n", {"storage": {"dir": "var"}, "rules": []}).start()
    assert proc.stop() == 0, proc.log()  # its storage and tables exist, as after a kill
    log = tmp_path / "receiver.log"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.receivers", "--port", str(free_port()),
         "--config", str(proc.config_path)],
        cwd=proc.folder, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        preexec_fn=die_with_the_tests,
    )  # fmt: skip
    try:
        wait_for(lambda: "receiving (pid" in log.read_text(), 60, "the receiving process")
        moved_in = proc.folder / "var" / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
        moved_in.parent.mkdir(parents=True)
        moved_in.write_bytes(b"moved in, its commit still to come")
        proc.start()
        assert moved_in.exists(), "removed from under a receiving process"
        assert proc.stop() == 0, proc.log()
    finally:
        receiver.terminate()
        receiver.wait(60)
    proc.start()  # alone now: a file no index row names was never answered Success
    try:
        assert not moved_in.exists()
    finally:
        assert proc.stop() == 0, proc.log()


def _count(node: NodeProcess) -> int:
    return int(node.query("SELECT COUNT(*) FROM instances")[0][0])


def test_several_receiving_processes_share_the_port_and_one_index(tmp_path):
    series = write_ct_series(tmp_path / "ct", np.zeros((40, 16, 16), np.int16), SeriesOptions())
    proc = NodeProcess(
        tmp_path / "n", {"receive": {"processes": 2}, "storage": {"dir": "var"}, "rules": []}
    ).start()
    try:
        incoming = proc.folder / "var" / "incoming"
        wait_for(lambda: len(list(incoming.glob("*.[0-9]*"))) == 2, 30, "both receiving processes")
        pushes = [
            subprocess.Popen(
                ["storescu", "-aet", f"PACS{i}", "-aec", "DICOM-NODE", "127.0.0.1",
                 str(proc.port), *map(str, series.paths[i::4])],
                env=DCMTK_ENV, stderr=subprocess.PIPE, text=True,
            )
            for i in range(4)
        ]  # fmt: skip
        for push in pushes:
            assert push.wait(120) == 0, push.stderr.read() if push.stderr else ""
        assert _count(proc) == 40
        assert proc.status()["index"]["instances"] == 40
        # The four senders were spread over both processes (they share one listening
        # socket; the process that has waited longest takes the next connection).
        ended = re.findall(r"dicom_node\.scp\[(\d+)\]: association ended", proc.log())
        assert len(ended) == 4 and len(set(ended)) == 2, ended
    finally:
        assert proc.stop() == 0, proc.log()
    assert not received_files(incoming)


def test_a_pdu_far_over_the_advertised_size_closes_the_connection_unread(node, tmp_path):
    path = write_raw(tmp_path / "x.dcm", encode(ct_dataset("1.2.3.9.6")), "1.2.3.9.6")
    result = raw_store(node.port, path, "--huge-pdu")
    assert result.stdout.strip().endswith("closed"), result.stdout + result.stderr
    assert echoscu(node.port).returncode == 0


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    mutations=st.lists(
        st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
                 min_size=1, max_size=3),
        min_size=25, max_size=25,
    )
)  # fmt: skip
def test_fuzzed_data_sets_over_the_network_get_a_status_and_never_a_partial_file(
    node, tmp_path_factory, mutations
):
    """Property: whatever the bytes, every C-STORE is answered with Success or a
    failure status, an instance answered Success is indexed and on disk, nothing is
    left half-written, and the node keeps serving."""
    folder = tmp_path_factory.mktemp("fuzz")
    files, uids = [], []
    for n, changes in enumerate(mutations):
        uid = f"1.2.3.9.7.{n}.{abs(hash(str(changes))) % 10**9}"
        data = bytearray(encode(ct_dataset(uid, rows=32)))
        for at, junk in changes:
            at = at % len(data)
            data[at : at + len(junk)] = junk
        files.append(write_raw(folder / f"{n}.dcm", bytes(data), uid))
        uids.append(uid)
    result = raw_store(node.port, *files)
    statuses = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("status")]
    assert len(statuses) == len(files), result.stdout + result.stderr
    allowed = {"0x0000", "0xA700", "0xA900", "0xC210", "0xC211", "0x0122"}
    assert set(statuses) <= allowed, statuses
    for uid, status in zip(uids, statuses, strict=True):
        if status == "0x0000":
            assert indexed(node, uid) == 1
    wait_for(lambda: not leftovers(node), 10, "no partial file")
    assert echoscu(node.port).returncode == 0
