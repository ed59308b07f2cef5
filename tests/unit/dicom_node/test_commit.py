"""Group commit: instances arriving together share one index transaction, each
caller learns its own result, and a failed batch fails every instance in it."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from dicom_node.commit import GroupCommit
from dicom_node.index import Index, InstanceRecord
from dicom_node.spool import Spool

CT = "1.2.840.10008.5.1.4.1.1.2"


def rec(sop: str, series: str = "1.2.3", study: str = "1.2") -> InstanceRecord:
    return InstanceRecord(study, series, sop, CT, f"spool/{study}/{series}/{sop}.dcm", 4,
                          modality="CT")  # fmt: skip


def received(spool: Spool, name: str, data: bytes = b"data") -> Path:
    """A received file as the engines write it: preamble, ``DICM``, then ``data``."""
    path = spool.incoming(1) / name
    path.write_bytes(bytes(128) + b"DICM" + data)
    return path


def test_many_threads_store_at_once_and_each_gets_its_answer(tmp_path, open_db):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    commits = GroupCommit(index, spool)
    answers: dict[str, bool] = {}

    def store(n: int) -> None:
        sop = f"1.2.3.{n % 12}"  # every instance stored twice: 12 new, 12 duplicates
        answers[f"{n}"] = commits.record(rec(sop), received(spool, f"{n}.dcm", bytes([n])))

    threads = [threading.Thread(target=store, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(answers.values()) == 12, "each instance is new exactly once"
    assert index.counts() == {"studies": 1, "series": 1, "instances": 12}
    for n in range(12):
        kept = (tmp_path / "var" / rec(f"1.2.3.{n}").path).read_bytes()[132:]
        assert kept in (bytes([n]), bytes([n + 12])), "one of the two copies, whole"
    assert not list(spool.incoming(1).iterdir())


def test_a_failed_batch_fails_each_of_its_instances_and_indexes_none(tmp_path, open_db):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    commits = GroupCommit(index, spool)
    with pytest.raises(FileNotFoundError):
        commits.record(rec("1.2.3.1"), spool.incoming(1) / "gone.dcm")
    assert index.counts()["instances"] == 0
    assert commits.record(rec("1.2.3.2"), received(spool, "ok.dcm")) is True


def test_a_failed_fsync_fails_the_instance_and_nothing_of_it_is_placed_or_indexed(
    tmp_path, open_db
):
    spool = Spool(tmp_path / "var")
    spool.create()
    index = Index(open_db())
    commits = GroupCommit(index, spool)

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        commits.record(rec("1.2.3.1"), received(spool, "bad.dcm"), sync=failing)
    assert index.counts()["instances"] == 0
    assert not (tmp_path / "var" / rec("1.2.3.1").path).exists()
    assert commits.record(rec("1.2.3.1"), received(spool, "good.dcm")) is True
