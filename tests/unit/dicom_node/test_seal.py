"""A received instance is kept by one fsync: its file, made empty beforehand, is
sealed (length, checksum, sender) and synced; whatever a crash undoes after that
(the move into the spool, the index commit), the next start files it again from
the seal. A file whose seal is missing or does not match is never filed."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_node.facts import instance_facts
from dicom_node.header import read_header
from dicom_node.index import Index, InstanceRecord
from dicom_node.scp import Origin, instance_record, reconcile_spool
from dicom_node.spool import Checksum, Spool, seal, sealed
from tests.support.ct_series import write_ct_series

GONE = 4_194_304 + 77  # above Linux's largest pid: no process has it
ORIGIN = Origin("MODALITY_AE", "DICOM_NODE", "10.1.2.3")


@pytest.fixture
def ct(tmp_path):
    hu = np.full((3, 8, 8), 40, dtype=np.int16)
    return write_ct_series(tmp_path / "src", hu)


def dicom_file(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes())
    return path


def test_a_sealed_file_gives_back_its_sender_and_any_change_breaks_the_seal(tmp_path, ct):
    path = dicom_file(tmp_path / "a.dcm", ct.paths[0])
    assert sealed(path) is None, "a file never sealed"
    seal(path, ORIGIN.sealed())
    assert Origin.from_seal(sealed(path) or "") == ORIGIN
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the pixels, as if that block never reached the disk
    path.write_bytes(bytes(data))
    assert sealed(path) is None
    data[-1] ^= 0x01
    path.write_bytes(bytes(data[:-2]))  # cut off
    assert sealed(path) is None
    not_dicom = tmp_path / "b.dcm"
    not_dicom.write_bytes(b"x" * 300)
    with pytest.raises(OSError):
        seal(not_dicom)


def test_blanks_are_empty_files_named_ahead_in_this_process_folder(tmp_path):
    spool = Spool(tmp_path / "var")
    spool.create()
    taken = [spool.blank() for _ in range(40)]  # more than one batch
    assert len(set(taken)) == 40
    folder = spool.incoming(os.getpid())
    assert all(p.parent == folder and p.stat().st_size == 0 for p in taken)
    assert all(spool.from_blank(p) for p in taken)
    assert not spool.from_blank(folder / "tmp1234.dcm"), "pynetdicom's files are not blanks"


def test_reconcile_files_what_a_crash_left_sealed_and_removes_the_rest(tmp_path, ct, open_db):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    gone = spool.incoming(GONE)  # a receiving process that died
    # 1: sealed, then the crash undid its move into the spool: filed from incoming
    seal(dicom_file(gone / "a.b0.dcm", ct.paths[0]), ORIGIN.sealed(), named=True)
    # 2: sealed and moved, but the index commit was lost: indexed where it lies
    rel = spool.instance_relpath(ct.study_uid, ct.series_uid, ct.sop_uids[1])
    (tmp_path / "var" / rel).parent.mkdir(parents=True)
    seal(dicom_file(tmp_path / "var" / rel, ct.paths[1]), ORIGIN.sealed())
    # 3: never sealed (cut off, or the crash came before the seal): removed
    dicom_file(gone / "a.b1.dcm", ct.paths[2])
    # 4: sealed but not all of it reached the disk: removed
    broken = dicom_file(gone / "a.b2.dcm", ct.paths[2])
    seal(broken, ORIGIN.sealed())
    broken.write_bytes(broken.read_bytes()[:-100] + bytes(100))
    # 5: an unused blank
    (gone / "a.b3.dcm").touch()

    reconcile_spool(spool, index, min_age=0)

    assert index.counts() == {"studies": 1, "series": 1, "instances": 2}
    files = sorted(path for _, path in index.files_of(ct.series_uid))
    assert files == sorted(
        spool.instance_relpath(ct.study_uid, ct.series_uid, sop) for sop in ct.sop_uids[:2]
    )
    assert all((tmp_path / "var" / p).exists() for p in files)
    assert not gone.exists(), "the dead process's folder is swept"
    (series,) = index.series_of(ct.study_uid)
    assert series.facts["calling_ae"] == ["MODALITY_AE"], "routing still sees the sender"
    assert series.facts["peer_address"] == ["10.1.2.3"]


def test_reconcile_never_files_an_older_copy_over_a_newer_one(tmp_path, ct, open_db):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    rel = spool.instance_relpath(ct.study_uid, ct.series_uid, ct.sop_uids[0])
    old = dicom_file(spool.incoming(GONE) / "a.b0.dcm", ct.paths[0])
    seal(old, ORIGIN.sealed(), named=True)
    newer = tmp_path / "newer.dcm"
    newer.write_bytes(ct.paths[0].read_bytes())
    seal(newer, Origin("OTHER_AE", "DICOM_NODE", "10.9.9.9").sealed())
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # sealed long before the other
    index.record(
        _record_of(spool, newer),
        place=lambda: spool.place(newer, rel),
    )
    reconcile_spool(spool, index, min_age=0)
    assert Origin.from_seal(sealed(tmp_path / "var" / rel) or "").calling_ae == "OTHER_AE"
    assert index.counts()["instances"] == 1


def test_a_purged_series_leaves_no_file_to_be_filed_again(tmp_path, ct, open_db):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    for k, sop in enumerate(ct.sop_uids):
        path = dicom_file(spool.blank(), ct.paths[k])
        seal(path, ORIGIN.sealed(), named=True)
        rel = spool.instance_relpath(ct.study_uid, ct.series_uid, sop)
        index.record(_record_of(spool, path), place=lambda p=path, r=rel: spool.place(p, r))
    assert index.forget_series(ct.series_uid, spool.remove_all) == 3
    assert list(spool.instance_files()) == []
    reconcile_spool(spool, index, min_age=0)
    assert index.counts()["instances"] == 0


def _record_of(spool: Spool, path: Path) -> InstanceRecord:
    header, ds = read_header(path, "1.2.840.10008.1.2.1", 2**30)
    return instance_record(spool, header, instance_facts(ds, ORIGIN.context()), 0)


def test_a_folder_of_an_earlier_boot_is_left_behind_even_if_its_pid_lives_again(
    tmp_path, ct, open_db
):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    mine = spool.incoming(os.getpid())  # <host>.<boot>.<pid>
    host, _, pid = mine.name.split(".")
    before_reboot = mine.parent / f"{host}.000000000000.{pid}"
    before_reboot.mkdir()
    mine.rmdir()
    seal(dicom_file(before_reboot / "a.b0.dcm", ct.paths[0]), ORIGIN.sealed(), named=True)
    reconcile_spool(spool, index, min_age=0)
    assert index.counts()["instances"] == 1
    assert not before_reboot.exists()


@given(data=st.binary(min_size=4, max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_the_sum_made_while_writing_equals_the_sum_read_back_however_the_bytes_are_sliced(
    tmp_path_factory, data, cuts
):
    folder = tmp_path_factory.mktemp("sum")
    body = b"DICM" + data
    made, written = Checksum(), folder / "made.dcm"
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    for start, end in itertools.pairwise(edges):
        made.feed(memoryview(body)[start:end])
    written.write_bytes(bytes(128) + body)
    read_back = folder / "read.dcm"
    read_back.write_bytes(bytes(128) + body)
    seal(written, "A", checksum=made)
    seal(read_back, "A")
    assert written.read_bytes() == read_back.read_bytes()
    assert sealed(written) == "A"


def test_a_file_that_is_not_what_was_summed_is_not_sealed(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(bytes(128) + b"DICM" + b"x" * 100)
    made = Checksum()
    made.feed(b"DICM" + b"x" * 99)  # one byte fewer than the file holds
    with pytest.raises(OSError):
        seal(path, "A", checksum=made)
    assert sealed(path) is None
