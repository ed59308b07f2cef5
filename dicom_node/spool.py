"""The disk layout under ``storage.dir``; the only module that knows it.

    <storage.dir>/
      node.sqlite                      index, job table, outbox (see ``state``)
      spool/<study>/<series>/<sop>.dcm received instances
      work/<job id>/                   a job's scratch: markers, outputs, outcome
      outbox/<job id>/<name>.dcm       results waiting for their destinations
      broker/                          the embedded broker's message folders

Paths are built only from validated UIDs (digits and dots, at most 64
characters), never from a raw attribute value, so nothing is written outside
the spool whatever a peer sends. Every write is atomic (temporary file, fsync,
rename, fsync of the folder): a file either is complete on disk or is not
there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class UnsafeUid(ValueError):
    """A UID that is missing, too long or holds characters other than digits and dots."""


def check_uid(value: object, keyword: str, tag: str) -> str:
    """Return ``value`` as a UID string, or raise ``UnsafeUid`` naming the attribute."""
    if value is None or str(value).strip("\0 ") == "":
        raise UnsafeUid(f"{tag} {keyword} is missing")
    text = str(value).strip("\0 ")
    if len(text) > 64 or not _UID.match(text):
        raise UnsafeUid(f"{tag} {keyword} is not a valid UID (digits and dots, ≤ 64 characters)")
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Spool:
    """Folders and file names below ``storage.dir``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self) -> None:
        for sub in ("spool", "work", "outbox", "broker"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "node.sqlite"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- received instances ------------------------------------------------
    def instance_relpath(self, study: str, series: str, sop: str) -> str:
        for value, kw, tag in (
            (study, "StudyInstanceUID", "(0020,000D)"),
            (series, "SeriesInstanceUID", "(0020,000E)"),
            (sop, "SOPInstanceUID", "(0008,0018)"),
        ):
            check_uid(value, kw, tag)
        return f"spool/{study}/{series}/{sop}.dcm"

    def store_instance(self, study: str, series: str, sop: str, data: bytes) -> str:
        """Write one received instance durably; returns its path relative to the root."""
        rel = self.instance_relpath(study, series, sop)
        write_atomic(self.root / rel, data)
        return rel

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a relative path this spool handed out."""
        path = (self.root / relpath).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UnsafeUid(f"path {relpath!r} leaves the storage folder")
        return path

    def remove(self, relpath: str) -> None:
        path = self.resolve(relpath)
        path.unlink(missing_ok=True)
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break

    # -- jobs and results --------------------------------------------------
    def work_relpath(self, job_id: int) -> str:
        return f"work/{int(job_id)}"

    def outbox_relpath(self, job_id: int, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name.startswith("."):
            raise ValueError(f"result file name {name!r} is not a safe file name")
        return f"outbox/{int(job_id)}/{name}"

    def move_to_outbox(self, source: Path, job_id: int) -> str:
        rel = self.outbox_relpath(job_id, source.name)
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        fsync_dir(target.parent)
        return rel

    def remove_work(self, job_id: int) -> None:
        shutil.rmtree(self.root / self.work_relpath(job_id), ignore_errors=True)
