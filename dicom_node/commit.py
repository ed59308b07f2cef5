"""Group commit of received instances.

Every instance answered Success costs one fsync: its file's, with its seal
(``spool.seal``), run by each association's thread on its own, in parallel.
Its move into the spool and its index row follow without further fsyncs (the
commit does not wait for the disk: SQLite's ``synchronous=NORMAL``,
PostgreSQL's ``synchronous_commit`` off): a crash after the seal leaves the
instance sealed in ``incoming`` or unindexed in the spool, and
``reconcile_spool`` files it at the next start; a crash of the PostgreSQL
server alone, while the node runs, is found and repaired by the leader before
its next decision (``epoch``).
The index has one writer at a time, so the association threads that arrive
while a commit runs wait, and the next commit takes them all: one transaction,
one commit for the lot. Nobody is answered before their instance is sealed and
its row committed.

The first waiting thread runs the commit itself (no extra thread): with one
association the batch is always one instance.

A thread queues its instance before it seals the file, so the index work
overlaps that fsync: on PostgreSQL the batch's calls (its locks, the rows) go
to the server first, the files are sealed meanwhile (each thread its own, the
committing thread waits for all of the batch), and only then are they moved
into the spool and the transaction committed. Nothing is moved before its file
is sealed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dicom_node.index import Index, InstanceRecord
from dicom_node.spool import Spool, seal


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
        self, record: InstanceRecord, received: Path, sync: Callable[[Path], None] = seal
    ) -> bool:
        """Seal ``received`` (``sync``: ``spool.seal`` with its origin), place it at
        ``record.path`` and index it; True for a new instance, False for a
        duplicate. Raises what the seal, the move or the index raised (the whole
        batch then failed, and nothing of it counts)."""
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
        def place(item: _Pending) -> None:
            self.spool.place(item.received, item.record.path)

        try:
            results = self.index.record_batch(
                [(item.record, partial(place, item)) for item in batch],
                remove=self.spool.remove,
                ready=partial(self._wait_synced, batch, mine, sync),
                durable=False,
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
