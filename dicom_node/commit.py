"""Group commit of received instances.

Every instance answered Success costs an fsync of its file, an fsync of its
series folder after the move, and a commit of the index (an fsync of its
journal). The first is done by each association's thread on its own, in
parallel; the other two are serial (the index has one writer at a time). Here
the association threads that arrive while a commit runs wait, and the next
commit takes them all: one transaction, one fsync per folder, one index commit
for the lot. Nobody is answered before their instance's commit is durable.

The first waiting thread runs the commit itself (no extra thread): with one
association the batch is always one instance.

A thread queues its instance before it fsyncs the file, so the index work
overlaps that fsync: on PostgreSQL the batch's calls (its locks, the rows) go
to the server first, the files are synced meanwhile (each thread its own, the
committing thread waits for all of the batch), and only then are they moved
into the spool, their folders fsynced and the transaction committed. Nothing
is moved before its file is synced, nothing committed before its move is
durable: the crash windows are those of the serial order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dicom_node.index import Index, InstanceRecord
from dicom_node.spool import Spool, fsync_dir


@dataclass
class _Pending:
    record: InstanceRecord
    received: Path
    synced: bool = False  # its file's fsync ended (``sync_error`` says how)
    sync_error: OSError | None = None
    done: bool = False
    new: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Moves received files into the spool and indexes them, in batches."""

    def __init__(self, index: Index, spool: Spool) -> None:
        self.index = index
        self.spool = spool
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False

    def record(
        self, record: InstanceRecord, received: Path, sync: Callable[[Path], None] = Spool.sync
    ) -> bool:
        """Sync ``received`` (``sync``: its fsync), place it at ``record.path`` and
        index it; True for a new instance, False for a duplicate. Raises what the
        sync, the move or the index raised (the whole batch then failed, and
        nothing of it counts)."""
        item = _Pending(record, received)
        with self._cond:
            self._queue.append(item)
            lead = not self._busy
            if lead:
                self._busy = True
                batch, self._queue = self._queue, []
        if lead:
            self._commit(batch, item, sync)
        else:
            self._sync(item, sync)
            with self._cond:
                while self._busy and not item.done:
                    self._cond.wait()
                if not item.done:  # nobody took it: commit it and whoever came since
                    self._busy = True
                    batch, self._queue = self._queue, []
            if not item.done:
                self._commit(batch, item, sync)
        if item.error is not None:
            raise item.error
        return item.new

    def _sync(self, item: _Pending, sync: Callable[[Path], None]) -> None:
        try:
            sync(item.received)
        except OSError as exc:  # raised to the whole batch by the committing thread
            item.sync_error = exc
        finally:  # never leave the committing thread waiting
            with self._cond:
                item.synced = True
                self._cond.notify_all()

    def _wait_synced(
        self, batch: list[_Pending], mine: _Pending, sync: Callable[[Path], None]
    ) -> None:
        """The committing thread's ``ready``: its own file's fsync (unless done
        already), then every other file of the batch's (their threads run them)."""
        if not mine.synced:
            self._sync(mine, sync)
        with self._cond:
            while not all(item.synced for item in batch):
                self._cond.wait()
        for item in batch:
            if item.sync_error is not None:
                raise item.sync_error

    def _commit(self, batch: list[_Pending], mine: _Pending, sync: Callable[[Path], None]) -> None:
        folders: set[Path] = set()

        def place(item: _Pending) -> None:
            folders.add(self.spool.place(item.received, item.record.path, sync_folder=False))

        def sync_folders() -> None:
            for folder in sorted(folders):
                fsync_dir(folder)

        try:
            results = self.index.record_batch(
                [(item.record, partial(place, item)) for item in batch],
                remove=self.spool.remove,
                before_commit=sync_folders,
                ready=partial(self._wait_synced, batch, mine, sync),
            )
            for item, (new, _) in zip(batch, results, strict=True):
                item.new = new
        except BaseException as exc:  # handed to every waiting thread, raised there
            for item in batch:
                item.error = exc
        finally:
            with self._cond:
                for item in batch:
                    item.done = True
                self._busy = False
                self._cond.notify_all()
