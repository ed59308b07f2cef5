"""``python -m tests.support.commit_child DATABASE STORAGE``: stores one instance
through ``GroupCommit`` and stops where its file is sealed (``spool.seal``: the
instance's one fsync), which runs while the
index call is already in the database (PostgreSQL: sent, locks taken, rows not
committed), so a test can kill -9 it exactly there. ``STORAGE/syncing`` appears
once it has stopped; it waits on stdin until killed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dicom_node.commit import GroupCommit
from dicom_node.index import Index, InstanceRecord
from dicom_node.spool import Spool
from dicom_node.state import open_database

CT = "1.2.840.10008.5.1.4.1.1.2"
RECORD = InstanceRecord("1.2", "1.2.3", "1.2.3.1", CT, "spool/1.2/1.2.3/1.2.3.1.dcm", 4,
                        modality="CT", facts={"00080060": ["CT"]})  # fmt: skip


def main(database: str, storage: Path) -> None:
    spool = Spool(storage)
    spool.create()
    index = Index(open_database(database))
    received = spool.incoming(os.getpid()) / "child.dcm"
    received.write_bytes(b"data")

    def sync(path: Path) -> None:  # stops before the seal: the instance is not kept
        (storage / "syncing").touch()
        sys.stdin.read()  # until killed

    GroupCommit(index, spool).record(RECORD, received, sync=sync)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
