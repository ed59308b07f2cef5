"""The disk layout under ``storage.dir``; the only module that knows it.

    <storage.dir>/
      node.sqlite                      index, job table, outbox (see ``state``)
      spool/<study>/<series>/<sop>.dcm received instances
      incoming/<host>.<pid>/           data sets arriving, one folder per receiving
                                       process (see ``Spool.incoming``, ``Blanks``)
      work/<job id>/                   a job's mailbox with its worker (``JobFolder``)
      outbox/<job id>/<name>.dcm       results waiting for their destinations (``OutboxEntry``)
      broker/                          the embedded broker's message folders

Paths are built only from validated UIDs (digits and dots, at most 64
characters), never from a raw attribute value, so nothing is written outside
the spool whatever a peer sends. Results and job files are written atomically
(temporary file, fsync, rename, fsync of the folder): a file either is complete
on disk or is not there.

A received instance costs one fsync before it is answered Success: it arrives
in a file made empty beforehand (``Blanks``: names made durable 32 at a time),
and ``seal`` writes into its preamble the file's length, a checksum of its
bytes and who sent it, then fsyncs it. From then on the instance is kept
whatever happens: it is renamed into the spool and indexed without further
fsyncs, and after a crash (even a power cut that undoes the rename or the
index commit) ``reconcile_spool`` finds it, whole by its seal, in ``incoming``
or unindexed in ``spool``, and files it. A file whose seal is missing or does
not match its bytes was never answered Success and is removed. Removals of
received instances are durable (the folder is fsynced), so that a purged file
never comes back to be filed again.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import shutil
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dicom_node.errors import BadReport
from dicom_node.jobspec import JobOutcome, WorkReport

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class UnsafeUid(ValueError):
    """A UID that is missing, too long or holds characters other than digits and dots."""


def check_uid(value: object, keyword: str, tag: str) -> str:
    """Return ``value`` as a UID string, or raise ``UnsafeUid`` naming the attribute."""
    if value is None or str(value).strip("\0 ") == "":
        raise UnsafeUid(f"{tag} {keyword} is missing")
    text = str(value).strip("\0 ")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise UnsafeUid(f"{tag} {keyword} is not a valid UID (digits and dots, ≤ 64 characters)")
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    ``make_parents=False``: the folder must exist already (``FileNotFoundError``
    otherwise), so a writer never re-creates a folder someone else removed.
    """
    write_atomic_batch([(path, data)], make_parents)


def write_atomic_batch(
    files: Sequence[tuple[Path, bytes | memoryview]], make_parents: bool = True
) -> None:
    """``write_atomic`` for several files, with one fsync per folder after the last
    rename instead of one per file. Each file is the old one or the new one after a
    crash; all are durable when this returns. ``make_parents`` as ``write_atomic``."""
    folders: dict[Path, None] = {}
    for path, data in files:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        # A name no other thread or process uses: writers of the same file never share
        # a temporary file, and a failed write leaves none behind.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        folders[path.parent] = None
    for folder in folders:
        fsync_dir(folder)


class Spool:
    """Folders and file names below ``storage.dir``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blanks: Blanks | None = None

    def create(self) -> None:
        for sub in ("spool", "work", "outbox", "broker", "incoming"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def input_path(self, relpath: str) -> Path:
        """A received instance named in a job message, checked to stay in the spool."""
        path = (self.root / relpath).resolve()
        if not path.is_relative_to((self.root / "spool").resolve()) or Path(relpath).is_absolute():
            raise UnsafeUid("a job input is not a received instance inside storage.dir/spool")
        return path

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

    def incoming(self, pid: int) -> Path:
        """The folder where process ``pid`` of this host receives data sets before they
        are placed (``incoming/<host>.<boot>.<pid>``: node hosts may share
        ``storage.dir``, and after a reboot a live process may have the pid of one
        that died before it, with sealed files still in its folder)."""
        path = self.root / "incoming" / f"{_host()}.{_boot()}.{int(pid)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sweep_incoming(self, alive: Callable[[int], bool]) -> int:
        """Remove the incoming folders of this host's receiving processes that are
        gone (what ``left_incoming`` listed and was not filed); returns how many
        non-empty files went with them. Other hosts' folders are theirs."""
        removed = 0
        for folder in self._dead_incoming(alive):
            removed += sum(1 for p in folder.iterdir() if p.is_file() and p.stat().st_size)
            shutil.rmtree(folder, ignore_errors=True)
        return removed

    def _dead_incoming(self, alive: Callable[[int], bool]) -> list[Path]:
        folders = []
        host = _host()
        for folder in (self.root / "incoming").glob(f"{host}.*"):
            boot, _, pid = folder.name[len(host) + 1 :].rpartition(".")
            if not pid.isdigit() or not folder.is_dir():
                continue
            if boot != _boot() or not alive(int(pid)):  # an earlier boot's, or gone
                folders.append(folder)
        return folders

    def blank(self) -> Path:
        """An empty file in this process's incoming folder whose name is already
        durable (``Blanks``), to receive a data set into."""
        return self._pool().take()

    def prepare_blanks(self) -> None:
        """Make this process's first blanks now (at its server's start), not while
        its first data set arrives."""
        self._pool().fill()

    def _pool(self) -> Blanks:
        pid = os.getpid()
        with _blanks_lock:
            blanks = self._blanks
            if blanks is None or blanks.pid != pid:  # none yet, or a forked process
                blanks = self._blanks = Blanks(self.incoming(pid))
            return blanks

    def from_blank(self, path: Path) -> bool:
        """Whether ``path`` was handed out by ``blank`` in this process (its name
        needs no folder fsync)."""
        blanks = self._blanks
        return blanks is not None and blanks.made(path)

    def left_incoming(self, alive: Callable[[int], bool]) -> list[Path]:
        """The files receiving processes of this host that are gone left in their
        incoming folders (sealed instances, data sets cut off, blanks), oldest first."""
        files: list[Path] = []
        for folder in self._dead_incoming(alive):
            files.extend(p for p in folder.iterdir() if p.is_file())
        return sorted(files, key=lambda p: p.stat().st_mtime_ns)

    def place(self, received: Path, relpath: str) -> Path:
        """Move a received, ``seal``ed file (in ``incoming``) to ``relpath``: rename
        it over any older copy; returns its folder. Not fsynced: until the rename
        is on disk, a crash leaves the sealed file in ``incoming``, where
        ``reconcile_spool`` finds it. Another process renaming the same instance at
        the same time leaves one whole file."""
        if not relpath.startswith("spool/"):
            raise UnsafeUid(f"path {relpath!r} is not a received instance")
        target = self.root / relpath
        try:
            os.replace(received, target)
        except FileNotFoundError:
            if not received.exists():
                raise
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(received, target)
        return target.parent

    def instance_files(self, older_than: float | None = None) -> Iterator[str]:
        """Relative paths of the files in the spool (for reconciling with the index);
        with ``older_than``, only those last written before that time."""
        spool = self.root / "spool"
        for study in os.scandir(spool):
            if not study.is_dir():
                continue
            for series in os.scandir(study.path):
                if not series.is_dir():
                    continue
                for entry in os.scandir(series.path):
                    if older_than is None or entry.stat().st_mtime < older_than:
                        yield f"spool/{study.name}/{series.name}/{entry.name}"

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
        """Remove a received instance durably (see ``remove_all``)."""
        self.remove_all([relpath])

    def remove_all(self, relpaths: list[str]) -> None:
        """Remove received instances, fsync each folder they were in (so none comes
        back after a power cut, to be filed again by ``reconcile_spool``), then
        remove their series and study folders once empty."""
        folders: set[Path] = set()
        for relpath in relpaths:
            if not relpath.startswith("spool/"):
                raise UnsafeUid(f"path {relpath!r} is not a received instance")
            path = self.resolve(relpath)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in sorted(folders):
            try:
                fsync_dir(folder)
            except FileNotFoundError:
                continue
            for parent in (folder, folder.parent):
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break

    # -- jobs and results --------------------------------------------------
    def job_folder(self, job_id: int) -> JobFolder:
        return JobFolder(self.root / "work", int(job_id))

    def job_folders(self) -> list[int]:
        """Ids of the jobs that have a work folder (for sweeping)."""
        return sorted(int(p.name) for p in (self.root / "work").glob("[0-9]*") if p.name.isdigit())

    def sweep_trash(self) -> None:
        """Finish removals a crash interrupted (see ``JobFolder.remove``)."""
        for trash in (self.root / "work").glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)

    def outbox_entry(self, job_id: int, name: str) -> OutboxEntry:
        return OutboxEntry(self.root, int(job_id), check_name(name))

    def outbox_entry_at(self, relpath: str) -> OutboxEntry:
        """The entry an outbox row names; refuses any other path."""
        match = re.fullmatch(r"outbox/([0-9]{1,18})/([^/]+)", relpath)
        if match is None:
            raise UnsafeUid(f"outbox path {relpath!r} is not outbox/<job>/<file>")
        return self.outbox_entry(int(match.group(1)), match.group(2))


_blanks_lock = threading.Lock()


class Blanks:
    """Empty files made ahead in one process's incoming folder, ``BATCH`` at a time
    with one fsync of the folder for all of them: a data set received into one
    is kept by its own fsync alone (``seal``), its name being durable already."""

    BATCH = 32

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid = os.getpid()
        self._token = f"{uuid.uuid4().hex[:8]}.b"  # this process run's names
        self._names = itertools.count()
        self._free: list[Path] = []
        self._refilling = False
        self._lock = threading.Lock()

    def take(self) -> Path:
        """A blank; when fewer than half a batch are left, the next batch is made in
        a thread of its own (creating files waits on the file system's journal,
        which the instances' fsyncs keep busy), so an association rarely waits."""
        with self._lock:
            if not self._free:
                self._make()
            path = self._free.pop()
            if len(self._free) < self.BATCH // 2 and not self._refilling:
                self._refilling = True
                threading.Thread(target=self._refill, name="blanks", daemon=True).start()
            return path

    def fill(self) -> None:
        with self._lock:
            if not self._free:
                self._make()

    def _refill(self) -> None:
        try:
            made = self._new_batch()
        except OSError:  # the disk is full: take() makes them, or says why
            made = []
        finally:
            with self._lock:
                self._refilling = False
        with self._lock:
            self._free[:0] = made  # taken last: the older blanks go first

    def _make(self) -> None:
        self._free = self._new_batch()

    def _new_batch(self) -> list[Path]:
        made = []
        for _ in range(self.BATCH):
            path = self.folder / f"{self._token}{next(self._names)}.dcm"
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            made.append(path)
        fsync_dir(self.folder)
        made.reverse()
        return made

    def made(self, path: Path) -> bool:
        return path.parent == self.folder and path.name.startswith(self._token)


# The seal, in the 128-byte preamble of a received file (PS3.10 leaves the
# preamble to the application): magic, the file's length, the wrapping sum of
# its bytes after the preamble as little-endian 64-bit words (the last one
# padded with zeros), and who sent it (ASCII, NUL-padded).
SEAL_MAGIC = b"DICOM-NODE-SEAL1"
_SEAL = struct.Struct("<16sQQ96s")
PREAMBLE = 128


class Checksum:
    """The seal's sum computed while a file is written, so sealing it need not read
    it back: ``feed`` every byte after the preamble, in order (any slicing)."""

    __slots__ = ("_carry", "_total", "length")

    def __init__(self) -> None:
        self._total = 0
        self._carry = b""  # the bytes of a word not yet whole
        self.length = 0  # bytes fed

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.length += len(view)
        if self._carry:
            need = 8 - len(self._carry)
            self._carry += bytes(view[:need])
            view = view[need:]
            if len(self._carry) < 8:
                return
            self._total += int.from_bytes(self._carry, "little")
            self._carry = b""
        whole = len(view) - len(view) % 8
        if whole:
            self._total += int(np.frombuffer(view[:whole], "<u8").sum(dtype=np.uint64))
        if whole < len(view):
            self._carry = bytes(view[whole:])

    def value(self) -> int:
        return (self._total + int.from_bytes(self._carry.ljust(8, b"\0"), "little")) & _WORD


_WORD = (1 << 64) - 1


def _checksum(fd: int, size: int) -> int:
    length = size - PREAMBLE
    buffer = bytearray(-(-length // 8) * 8)
    view = memoryview(buffer)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[done:length]], PREAMBLE + done)
        if n == 0:
            raise OSError(errno.EIO, "a received file shrank while it was sealed")
        done += n
    return int(np.frombuffer(buffer, "<u8").sum(dtype=np.uint64))


def seal(
    path: Path,
    origin: str = "",
    named: bool = False,
    checksum: Checksum | None = None,
    fd: int | None = None,
) -> None:
    """Make a received file (preamble, ``DICM``, File Meta, data set) durable and
    whole by its seal: write the seal into its preamble, fsync the file, and its
    folder too unless its name is durable already (``named``: from ``Blanks``).
    ``origin``: who sent it, for ``sealed`` to give back (at most 96 ASCII bytes).
    ``checksum``: what was written after the preamble, summed as it was written;
    without it the file is read back to sum it. ``fd``: the file, open for
    reading and writing (left open); without it ``path`` is opened."""
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < PREAMBLE + 4 or os.pread(fd, 4, PREAMBLE) != b"DICM":
            raise OSError(errno.EINVAL, "a received file has no DICOM preamble to seal")
        if checksum is None:
            total = _checksum(fd, size)
        elif checksum.length + PREAMBLE == size:
            total = checksum.value()
        else:
            raise OSError(errno.EIO, "a received file is not the size of what was written")
        who = origin.encode("ascii", "replace")[:96]
        os.pwrite(fd, _SEAL.pack(SEAL_MAGIC, size, total, who), 0)
        os.fsync(fd)
    finally:
        if own:
            os.close(fd)
    if not named:
        fsync_dir(path.parent)


def sealed(path: Path) -> str | None:
    """The origin a whole, sealed file was sealed with; None when the file has no
    seal or its bytes do not match it (cut off, or not all of it reached the disk)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, _SEAL.size, 0)
        if size < PREAMBLE + 4 or len(head) < _SEAL.size:
            return None
        magic, length, total, who = _SEAL.unpack(head)
        if magic != SEAL_MAGIC or length != size or _checksum(fd, size) != total:
            return None
        return who.rstrip(b"\0").decode("ascii", "replace")
    finally:
        os.close(fd)


@functools.cache
def _boot() -> str:
    """This boot of the host (Linux's boot id), so a pid is not mistaken for the
    same pid before a reboot."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii")
    except OSError:
        return "0"
    return re.sub(r"[^0-9a-f]", "", text)[:12] or "0"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A result file name: letters, digits, ``_.-``, not hidden, at most 64 characters."""
    if not _NAME.fullmatch(name):
        raise UnsafeUid("a result file name is not a plain file name")
    return name


class JobFolder:
    """``work/<job id>/``: the mailbox between the node and the worker running a job.

        claims/t<ticket>.<worker>    one file per delivery a worker started
        t<ticket>/lock               flock held by the worker running the ticket
        t<ticket>/beat               heartbeat token, rewritten every few seconds
        t<ticket>/out/<name>         results
        t<ticket>/outcome.json       written last

    Who may do what: the node creates the job folder and its current ticket's
    folder (``open_ticket``), reads reports, takes results and removes the folder.
    A worker works only inside an existing ticket folder and never creates the job
    folder or a ticket folder (``TicketFolder``), so a message for an ended job
    or a superseded ticket finds nothing and leaves nothing behind.
    """

    def __init__(self, work_root: Path, job_id: int) -> None:
        self.job_id = job_id
        self.path = work_root / str(job_id)

    def exists(self) -> bool:
        return self.path.is_dir()

    def ticket(self, number: int) -> TicketFolder:
        return TicketFolder(self, int(number))

    # -- the node's side -------------------------------------------------------
    def open_ticket(self, number: int) -> TicketFolder:
        """Make ``number`` the current ticket: older tickets' folders go away, so a
        worker still running one (frozen, or cut off) fails on its next write."""
        (self.path / "claims").mkdir(parents=True, exist_ok=True)
        for old in self.path.glob("t*"):
            if old.name != f"t{number}" and old.is_dir():
                _remove_tree(old, self.path.parent)
        ticket = self.ticket(number)
        ticket.path.mkdir(exist_ok=True)
        return ticket

    def report(self, number: int) -> WorkReport:
        """What the worker holding ticket ``number`` has said. ``BadReport`` when
        its outcome cannot be parsed."""
        ticket = self.ticket(number)
        if not ticket.path.is_dir():
            return WorkReport(exists=False, claims=self.claims())
        claims = self._claim_names()
        mine = [c for c in claims if c.startswith(f"t{number}.")]
        beat = None
        if mine:
            try:
                token = (ticket.path / "beat").read_text(encoding="ascii", errors="replace")
            except FileNotFoundError:
                token = ""
            beat = f"{len(mine)}:{token[:100]}"
        try:
            data = (ticket.path / "outcome.json").read_bytes()
        except FileNotFoundError:
            return WorkReport(exists=True, claims=len(claims), beat=beat)
        try:
            outcome = JobOutcome.from_json(data)
        except ValueError as exc:
            raise BadReport(f"worker report unreadable: {exc}") from None
        return WorkReport(exists=True, claims=len(claims), beat=beat, outcome=outcome)

    def result(self, number: int, name: str) -> Path:
        """A result file the worker reported; ``BadReport`` unless it is a plain file
        inside the ticket's ``out`` folder."""
        try:
            path = self.ticket(number).out / check_name(name)
        except UnsafeUid:
            raise BadReport("the worker reported a result file name that is not safe") from None
        if path.is_symlink() or not path.is_file():
            raise BadReport("the worker reported a result file that is not in its work folder")
        return path

    def claims(self) -> int:
        return len(self._claim_names())

    def _claim_names(self) -> list[str]:
        try:
            return [p.name for p in (self.path / "claims").iterdir()]
        except FileNotFoundError:
            return []

    def remove(self) -> None:
        """Remove the folder: renamed away first, so a worker still writing fails
        at once instead of re-creating files inside a half-deleted tree."""
        if self.path.is_dir():
            _remove_tree(self.path, self.path.parent)


class TicketFolder:
    """``work/<job>/t<ticket>/``: what a worker may touch while it runs a ticket."""

    def __init__(self, job: JobFolder, number: int) -> None:
        self.job = job
        self.number = number
        self.path = job.path / f"t{number}"

    @property
    def out(self) -> Path:
        return self.path / "out"

    def exists(self) -> bool:
        return self.path.is_dir()

    def has_outcome(self) -> bool:
        return (self.path / "outcome.json").exists()

    def claim(self, worker: str) -> str:
        """Record that a delivery started (the node counts these as attempts).
        ``FileNotFoundError`` when the ticket's job has ended or been re-issued."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker)[:80]
        for n in range(1000):
            name = f"t{self.number}.{safe}.{n}"
            try:
                fd = os.open(self.job.path / "claims" / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
            if not self.path.is_dir():  # withdrawn meanwhile: this delivery does not count
                (self.job.path / "claims" / name).unlink(missing_ok=True)
                raise FileNotFoundError(self.path)
            return name
        raise FileExistsError("too many claims by one worker")

    def beat(self, token: str) -> None:
        write_atomic(self.path / "beat", token.encode("ascii", "replace"), make_parents=False)

    def write_output(self, name: str, data: bytes | memoryview) -> None:
        self.out.mkdir(exist_ok=True)  # never parents: the ticket folder must exist
        write_atomic(self.out / check_name(name), data, make_parents=False)

    def write_outputs(self, files: Sequence[tuple[str, bytes | memoryview]]) -> None:
        """``write_output`` for each (name, data), with one fsync of the folder."""
        self.out.mkdir(exist_ok=True)  # never parents: the ticket folder must exist
        write_atomic_batch([(self.out / check_name(n), d) for n, d in files], make_parents=False)

    def write_outcome(self, outcome: JobOutcome) -> None:
        write_atomic(self.path / "outcome.json", outcome.to_json(), make_parents=False)


class OutboxEntry:
    """``outbox/<job>/<name>``: one result file waiting for its destinations."""

    def __init__(self, root: Path, job_id: int, name: str) -> None:
        self.job_id = job_id
        self.name = name
        self.relpath = f"outbox/{job_id}/{name}"
        self.path = root / self.relpath

    def exists(self) -> bool:
        return self.path.is_file()

    def take(self, source: Path) -> None:
        """Move ``source`` here durably (copy and fsync across file systems)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, self.path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = self.path.with_name(f".{self.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            source.unlink()
        fsync_dir(self.path.parent)

    def link(self, source: Path) -> None:
        """Put a received instance here unchanged, keeping ``source`` (a hard link on
        the same file system, else a durable copy). Idempotent."""
        if self.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Delete the file, and the job's outbox folder once empty (never ``outbox/``)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass


def _remove_tree(path: Path, within: Path) -> None:
    trash = within / f".trash-{path.parent.name}-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
