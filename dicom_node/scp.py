"""The Storage and Verification SCP: receive, store durably, then answer.

Two engines receive (``receive.engine``): ``native``, the node's own upper layer
(``dicom_node.ul``), and ``pynetdicom``, the fallback whose handlers live here.
Both hand ``Receiver`` plain values (the received file, its transfer syntax, the
requested SOP Instance UID, the ``Origin``) and answer the ``Outcome`` it returns.

Each data set is received straight to a file in ``storage.dir/incoming/<pid>``
(the native engine's streaming, or pynetdicom's chunked receive), never held
whole in memory. Its header is read
from that file (``dicom_node.header``: UIDs, routing keys, structure checks;
pixels are never decoded); the file is sealed and fsync'ed (``spool.seal``: the
one fsync that keeps it), renamed into the spool and indexed, and only then
answered Success (0x0000).
The data set is stored exactly as sent, in the transfer syntax it came in.

Every failure becomes a DICOM status with an ErrorComment naming the attribute
(never a value); nothing of a refused data set is kept, and a handler never
raises into pynetdicom:

    0xA700  out of resources: the spool's disk is (nearly) full, writing failed,
            the instance is larger than receive.max_instance_mb, or a deflated
            data set inflates past receive.max_inflated_mb
    0xA900  the data set does not match the C-STORE request (SOP Class or SOP
            Instance UID)
    0xC210  the data set cannot be parsed (truncated, a declared length past its
            end, File Meta Information inside it, pixels not encoded as the
            transfer syntax says)
    0xC211  a required UID is missing or unsafe (not digits and dots, > 64 chars)
    0x0122  the SOP class is not a storage SOP class this node accepts, or the
            request names another SOP class than its presentation context

Limits are enforced while the data arrives: a data set that grows past the
size limit, or that starts while the disk is below the free-space watermark,
is discarded as it comes in (the peer still gets its failure status once it
has sent the rest). Peers are checked at association time (``peers.admit``) and
counted across every receiving process (``peers.Slots``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.commit import GroupCommit
from dicom_node.facts import InstanceFacts, instance_facts
from dicom_node.header import BadInstance, InstanceHeader, read_header
from dicom_node.index import Index, InstanceRecord
from dicom_node.peers import LOCAL_LIMIT_EXCEEDED, Rejection, Slot, Slots, admit
from dicom_node.settings import NodeSettings, ReceiveSettings
from dicom_node.spool import Checksum, Spool, UnsafeUid, seal, sealed

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# Every transfer syntax pynetdicom knows: uncompressed, deflated, RLE, JPEG (baseline,
# extended, lossless), JPEG-LS, JPEG 2000, HTJ2K, MPEG/HEVC. Stored as received.
TRANSFER_SYNTAXES = list(ALL_TRANSFER_SYNTAXES)
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


@dataclass(frozen=True)
class Origin:
    """Who sent an association: what the storing logic needs of it, engine-neutral."""

    calling_ae: str
    called_ae: str
    address: str
    port: int = 0

    def context(self) -> dict[str, str]:
        """Receive-time facts rules may test: who sent it, to which AE, from where."""
        return {"calling_ae": self.calling_ae, "called_ae": self.called_ae,
                "peer_address": self.address}  # fmt: skip

    def log(self) -> dict[str, str]:
        """The ``extra`` of a log line about this peer (AE and address only)."""
        return {"peer": f"{self.calling_ae}@{self.address}:{self.port}"}

    def sealed(self) -> str:
        """The text ``spool.seal`` keeps in a received file (``from_seal`` reads it)."""
        return f"{self.calling_ae}\t{self.called_ae}\t{self.address}"

    @classmethod
    def from_seal(cls, text: str) -> Origin:
        calling, called, address = (text.split("\t") + ["", "", ""])[:3]
        return cls(calling, called, address)


@dataclass(frozen=True)
class Outcome:
    """The answer to one C-STORE: status, ErrorComment, and the series it filled."""

    status: int
    comment: str = ""
    series_uid: str | None = None


RELEASE_MARK_SECONDS = 30.0  # how long an ended association tries to mark its series

# A C-STORE whose Affected SOP Class UID is not its presentation context's.
CONTEXT_MISMATCH = Outcome(0x0122, "(0000,0002) AffectedSOPClassUID differs from its context's")


class _Discard:
    """Stands in for the file a refused data set was being received into: the rest
    of its bytes are dropped as they arrive, and the reason is kept for the answer."""

    def __init__(self, name: str, status: int, comment: str) -> None:
        self.name = name  # pynetdicom unlinks this path after the handler
        self.file = self
        self.status = status
        self.comment = comment

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def instance_record(
    spool: Spool, header: InstanceHeader, facts: InstanceFacts, size: int
) -> InstanceRecord:
    """The index row of a received instance, filed where the spool keeps it."""
    return InstanceRecord(
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_uid=header.sop_uid,
        sop_class_uid=header.sop_class_uid,
        path=spool.instance_relpath(header.study_uid, header.series_uid, header.sop_uid),
        size=size,
        modality=header.keys["Modality"],
        body_part=header.keys["BodyPartExamined"],
        description=header.keys["SeriesDescription"],
        protocol_name=header.keys["ProtocolName"],
        manufacturer=header.keys["Manufacturer"],
        facts=facts,
    )


class Receiver:
    """Stores C-STORE requests; all dependencies are handed in."""

    def __init__(
        self,
        spool: Spool,
        index: Index,
        min_free_bytes: int,
        node: NodeSettings | None = None,
        receive: ReceiveSettings | None = None,
    ) -> None:
        self.spool = spool
        self.index = index
        self.min_free_bytes = min_free_bytes
        self.node = node or NodeSettings()
        self.receive = receive or ReceiveSettings()
        self.max_instance = int(self.receive.max_instance_mb * 2**20)
        self.max_inflated = int(self.receive.max_inflated_mb * 2**20)
        self.slots = Slots(spool.root / "incoming" / "slots",
                           self.receive.max_associations_per_peer,
                           self.node.max_associations)  # fmt: skip
        self.commits = GroupCommit(index, spool)
        self._lock = threading.Lock()
        self.counts: dict[int, dict[str, int]] = {}
        self.series_by_assoc: dict[int, set[str]] = {}  # for triggers on release
        self.started: dict[int, float] = {}  # when each association was accepted
        self._held: dict[int, Slot] = {}
        self._received: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._sealing: tuple[int, ThreadPoolExecutor] | None = None

    # -- association control ---------------------------------------------------
    def open_association(self, origin: Origin) -> Slot | Rejection:
        """Admit a requestor (``peers.admit``) and hold a slot for it, or say how to
        reject it (logged with the AE and address)."""
        rejection = admit(self.node, self.receive, origin.calling_ae, origin.called_ae,
                          origin.address)  # fmt: skip
        if rejection is None:
            slot = self.slots.acquire(origin.calling_ae, origin.address)
            if slot is not None:
                return slot
            rejection = Rejection(*LOCAL_LIMIT_EXCEEDED, why="association limit reached")
        logger.warning("association rejected (%s)", rejection.why, extra=origin.log())
        return rejection

    def handle_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        origin = Origin(_ae(rq.calling_ae_title), _ae(rq.called_ae_title),
                        str(assoc.requestor.address), int(assoc.requestor.port))  # fmt: skip
        slot = self.open_association(origin)
        if isinstance(slot, Rejection):
            assoc.acse.send_reject(slot.result, slot.source, slot.reason)
            assoc.kill()  # waits until the A-ASSOCIATE-RJ is sent, as pynetdicom's own rejections
            return
        _prefer_requestor_order(assoc)
        with self._lock:
            self._held[id(assoc)] = slot  # type: ignore[assignment]

    def handle_conn_close(self, event: Any) -> None:
        """The connection ended (released, aborted, timed out): free the slot and
        remove a data set cut off mid-way."""
        with self._lock:
            slot = self._held.pop(id(event.assoc), None)
        if slot is not None:
            slot.release()
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is not None:
            partial.close()
            Path(partial.name).unlink(missing_ok=True)

    # -- limits while the data arrives ----------------------------------------
    def handle_pdu(self, event: Any) -> None:
        """Runs for every PDU before its data is written: discards a data set that
        grows past ``max_instance_mb`` or starts while the disk is full."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        message = event.assoc.dimse.message
        sink = getattr(message, "_data_set_file", None)
        if sink is None or isinstance(sink, _Discard):
            return
        size = sum(len(i.presentation_data_value) - 1 for i in items
                   if not i.presentation_data_value[0] & 1)  # fmt: skip
        before = self._received.get(message, 0)
        self._received[message] = before + size
        refusal = self.check_arriving(before, size, _origin(event))
        if refusal is not None:
            sink.close()
            os.truncate(sink.name, 0)
            message._data_set_file = _Discard(sink.name, refusal.status, refusal.comment)

    def check_arriving(self, before: int, size: int, origin: Origin) -> Outcome | None:
        """While a data set arrives (``before`` bytes so far, ``size`` more now): None
        to keep it, or the failure to answer once the rest has come (and discarded)."""
        if before == 0 and self.spool.free_bytes() < self.min_free_bytes:
            logger.error("spool disk is full; refusing instances (storage.min_free_mb)")
            return Outcome(0xA700, "out of resources: node storage is full")
        if before + size > self.max_instance:
            logger.warning("refused an instance larger than receive.max_instance_mb",
                           extra=origin.log())  # fmt: skip
            return Outcome(0xA700, "instance larger than receive.max_instance_mb")
        return None

    # -- C-STORE ----------------------------------------------------------------
    def handle_store(self, event: Any) -> Dataset | int:
        received = getattr(event.request, "_dataset_file", None)
        if isinstance(received, _Discard):
            Path(received.name).unlink(missing_ok=True)
            outcome = Outcome(received.status, received.comment)
        elif received is None:
            outcome = Outcome(0xC210, "no data set in the request")
        else:
            syntax = str(event.context.transfer_syntax)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            sop_class = str(event.request.AffectedSOPClassUID)
            if sop_class != str(event.context.abstract_syntax):
                Path(received.name).unlink(missing_ok=True)
                outcome = CONTEXT_MISMATCH
            else:
                outcome = self.store(Path(received.name), syntax, sop_class, sop_uid,
                                     _origin(event))  # fmt: skip
        if outcome.series_uid is not None:
            with self._lock:
                self.series_by_assoc.setdefault(id(event.assoc), set()).add(outcome.series_uid)
        self._count(event, "stored" if outcome.status == 0 else "failed")
        return 0x0000 if outcome.status == 0 else _status(outcome.status, outcome.comment)

    def store(
        self,
        path: Path,
        transfer_syntax: str,
        sop_class: str,
        sop_uid: str,
        origin: Origin,
        checksum: Checksum | None = None,
        fd: int | None = None,
    ) -> Outcome:
        """Store the received file ``path`` (File Meta, then the data set as sent)
        of a C-STORE request for ``sop_class`` / ``sop_uid``: check, seal, place,
        index; the Outcome to answer. ``path`` is gone after (placed into the spool,
        or removed). Never raises. ``checksum``: the seal's sum, when the engine
        computed it as it wrote the file; ``fd``: the file opened for reading and
        writing, closed here (the native engine gives both: fewer system calls).

        The seal (a checksum and an fsync) starts at once in a thread of its own
        and runs while the header is read and checked: the two take about as long,
        and the fsync does not hold the interpreter. The instance is placed only
        once it is sealed; a refused one is removed once its seal has ended."""
        sealing = self._sealer().submit(
            seal, path, origin.sealed(), self.spool.from_blank(path), checksum, fd
        )
        try:
            return self._store(
                path, transfer_syntax, sop_class.strip("\0 "), sop_uid.strip("\0 "), origin,
                sealing, fd,
            )  # fmt: skip
        except self.index.db.transient_errors as exc:  # the sender retries later
            logger.error("could not index an instance: the node's database is unavailable (%s)",
                         type(exc).__name__)  # fmt: skip
            return Outcome(0xA700, "out of resources: the node's database is unavailable")
        except Exception as exc:  # never raise into the engine
            logger.error("unexpected error while storing an instance: %s", type(exc).__name__)
            return Outcome(0xA700, "internal error while storing; not stored")
        finally:
            sealing.exception()  # ended, whatever it raised
            if fd is not None:
                os.close(fd)
            path.unlink(missing_ok=True)  # a refused data set leaves nothing

    def _sealer(self) -> ThreadPoolExecutor:
        """Threads that seal received files, made in the process that uses them."""
        with self._lock:
            if self._sealing is None or self._sealing[0] != os.getpid():
                pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="seal")
                self._sealing = (os.getpid(), pool)
            return self._sealing[1]

    def _store(
        self,
        path: Path,
        transfer_syntax: str,
        sop_class: str,
        sop_uid: str,
        origin: Origin,
        sealing: Future[None],
        fd: int | None,
    ) -> Outcome:
        try:
            header, ds = read_header(path, transfer_syntax, self.max_inflated, fd)
            facts = instance_facts(ds, origin.context())
        except BadInstance as exc:
            logger.warning("refused an instance: %s", exc.comment, extra=origin.log())
            return Outcome(exc.status, exc.comment)
        if header.sop_class_uid not in STORAGE_SOP_CLASSES:
            return Outcome(0x0122, f"SOP class {header.sop_class_uid[:40]} not supported")
        if header.sop_class_uid != sop_class:
            return Outcome(0xA900, "(0008,0016) SOPClassUID differs from the request")
        if header.sop_uid != sop_uid:
            return Outcome(0xA900, "(0008,0018) SOPInstanceUID differs from the request")
        if self.spool.free_bytes() < self.min_free_bytes:
            logger.error("spool disk is full; refusing instances (storage.min_free_mb)")
            return Outcome(0xA700, "out of resources: node storage is full")
        size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
        record = instance_record(self.spool, header, facts, size)
        try:  # sealed (waiting for it), placed, indexed
            new = self.commits.record(record, path, lambda _: sealing.result())
        except OSError as exc:
            logger.error("could not write an instance to the spool: %s", exc.strerror)
            return Outcome(0xA700, "out of resources: could not write to storage")
        logger.debug("stored %s (%s)", header.sop_uid, "new" if new else "duplicate",
                     extra=origin.log())  # fmt: skip
        return Outcome(0x0000, series_uid=header.series_uid)

    def _count(self, event: Any, key: str) -> None:
        with self._lock:
            counts = self.counts.setdefault(id(event.assoc), {"stored": 0, "failed": 0})
            counts[key] += 1

    def handle_echo(self, event: Any) -> int:
        return 0x0000

    def handle_accepted(self, event: Any) -> None:
        with self._lock:
            self.started[id(event.assoc)] = time.time()
        logger.info("association accepted", extra=_origin(event).log())

    def handle_closed(self, event: Any) -> None:
        with self._lock:
            counts = self.counts.pop(id(event.assoc), None) or {"stored": 0, "failed": 0}
            series = self.series_by_assoc.pop(id(event.assoc), set())
            started = self.started.pop(id(event.assoc), 0.0)
        self.association_ended(_origin(event), counts["stored"], counts["failed"], series,
                               released=event.event == evt.EVT_RELEASED,
                               started=started)  # fmt: skip

    def association_ended(
        self,
        origin: Origin,
        stored: int,
        failed: int,
        series: set[str],
        released: bool,
        started: float = 0.0,
    ) -> None:
        """Series of a released association are complete (an abort completes nothing);
        an association begun at ``started`` that was aborted, lost or had failed
        stores leaves its series *interrupted*: routing waits for the sender to send
        again (``node.interrupted_hold_seconds``). The database may be away for a
        moment (a restart): marking is retried for up to ``RELEASE_MARK_SECONDS``,
        then left to the rules' timeouts, with a log line."""
        if series and released:
            self._mark(partial(self.index.mark_released, sorted(series), started), origin)
        if series and (failed or not released):
            self._mark(partial(self.index.mark_interrupted, sorted(series)), origin)
        if stored or failed:
            logger.info("association ended: %d stored, %d failed", stored, failed,
                        extra=origin.log())  # fmt: skip

    def _mark(self, mark: Callable[[], None], origin: Origin) -> None:
        deadline = time.monotonic() + RELEASE_MARK_SECONDS
        pause = 0.25
        while True:
            try:
                mark()
                return
            except self.index.db.transient_errors as exc:
                if time.monotonic() + pause > deadline:
                    logger.error("could not record how an association ended (%s):"
                                 " its series complete by their rules' timeouts instead",
                                 type(exc).__name__, extra=origin.log())  # fmt: skip
                    return
                time.sleep(pause)  # the database is away (a restart): wait and try again
                pause = min(pause * 2, 4.0)

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_PDU_RECV, self.handle_pdu),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_closed),
            (evt.EVT_ABORTED, self.handle_closed),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
        ]


def _prefer_requestor_order(assoc: Any) -> None:
    """Accept, for each SOP class, the transfer syntax the requestor proposed first
    (pynetdicom would take the first in our list). A sender that holds an image as
    JPEG-LS proposes JPEG-LS first, and so sends it as it is: stored as received,
    nothing transcoded, nothing lost, and no failure from a sender that cannot
    decompress (dcmtk's storescu, Orthanc with AllowTranscoding off)."""
    ours = {str(cx.abstract_syntax): cx for cx in assoc.acceptor.supported_contexts}
    wanted: dict[str, list[Any]] = {}
    for rq in assoc.requestor.primitive.presentation_context_definition_list:
        supported = ours.get(str(rq.abstract_syntax))
        if supported is None:
            continue
        order = wanted.setdefault(str(rq.abstract_syntax), [])
        order += [str(ts) for ts in rq.transfer_syntax
                  if ts in supported.transfer_syntax and str(ts) not in order]  # fmt: skip
    contexts = []
    for abstract, syntaxes in wanted.items():
        cx = PresentationContext()
        cx.abstract_syntax = abstract
        cx.transfer_syntax = syntaxes
        contexts.append(cx)
    assoc.acceptor.supported_contexts = contexts


def _ae(value: object) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip()


def _origin(event: Any) -> Origin:
    try:
        assoc = event.assoc
        return Origin(_ae(assoc.requestor.ae_title), _ae(assoc.acceptor.ae_title),
                      str(assoc.requestor.address), int(assoc.requestor.port))  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        return Origin("", "", "")


class _BoundedSocket(AssociationSocket):
    """pynetdicom reads a whole PDU into memory, whatever length the peer declares
    (up to 4 GiB), even past the maximum we advertised: refuse such a PDU before
    reading it. The DUL then closes the connection; a partial data set is removed."""

    max_read = 2**20

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.max_read:
            raise OSError(f"a PDU of {nr_bytes} bytes is over the limit of {self.max_read}")
        return super().recv(nr_bytes)


def _bounded_handler(limit: int) -> type[RequestHandler]:
    class Handler(RequestHandler):
        def _create_association(self) -> Any:
            assoc = super()._create_association()
            sock = assoc.dul.socket
            sock.__class__ = _BoundedSocket  # only recv differs
            sock.max_read = limit  # type: ignore[union-attr]
            return assoc

    return Handler


class _ReusePortServer(ThreadedAssociationServer):
    """Binds with SO_REUSEPORT so several receiving processes share one port."""

    def server_bind(self) -> None:
        import socket

        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def configure_receiving(spool: Spool) -> None:
    """Set pynetdicom's process-wide options for receiving. Called once by the entry
    point of each receiving process (pynetdicom reads them as module globals)."""
    # Receive each data set straight to a file instead of into memory.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom creates those files with tempfile.NamedTemporaryFile: put them on
    # the spool's file system, in a folder of this process, so they can be renamed
    # into the spool and a crashed process's leftovers can be swept.
    tempfile.tempdir = str(spool.incoming(os.getpid()))
    # pynetdicom logs query identifiers (patient names, IDs) at INFO by default.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def make_ae(node: NodeSettings, receive: ReceiveSettings) -> AE:
    ae = AE(ae_title=node.ae_title)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = receive.max_pdu_bytes
    ae.acse_timeout = receive.acse_timeout_seconds
    ae.dimse_timeout = receive.dimse_timeout_seconds
    ae.network_timeout = receive.network_timeout_seconds
    ae.require_called_aet = False  # checked by peers.admit, with its own log line
    ae.add_supported_context(VERIFICATION)
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    return ae


class Server(Protocol):
    """A listener of either engine: where it listens, and how to stop it."""

    @property
    def server_address(self) -> Any: ...

    def shutdown(self) -> None: ...


def stop_servers(servers: list[Server], drain: float) -> None:
    """Stop every listener accepting at once, then give the associations in
    progress up to ``drain`` seconds in all to end (the native engine's; the
    pynetdicom engine's are cut when the process exits)."""
    from dicom_node.ul.server import Listener

    deadline = time.monotonic() + drain
    for server in servers:
        if isinstance(server, Listener):
            server.stop_accepting()
        else:
            server.shutdown()
    for server in servers:
        if isinstance(server, Listener):
            server.drain(max(0.0, deadline - time.monotonic()))


def start_servers(
    settings: NodeSettings,
    receiver: Receiver,
    port: int | None = None,
    tls_port: int | None = None,
    inherited: tuple[socket.socket | None, socket.socket | None] = (None, None),
) -> list[Server]:
    """The plain listener on ``node.port`` (unless ``node.tls.only``) and the TLS
    listener on ``node.tls.port`` (when ``node.tls``), in that order. ``port`` and
    ``tls_port`` override the configured ports (port 0 picks a free port);
    ``inherited``: the node process's listening sockets (plain, TLS), shared by a
    receiving process of the native engine instead of binding its own."""
    servers: list[Server] = []
    tls = settings.tls
    if tls is None or not tls.only:
        servers.append(start_server(settings, receiver, port=port, inherited=inherited[0]))
    if tls is not None:
        from dicom_node.tls import server_context

        servers.append(start_server(settings, receiver, port=tls.port if tls_port is None
                                    else tls_port, ssl_context=server_context(tls),
                                    inherited=inherited[1]))  # fmt: skip
    return servers


def listening_sockets(
    settings: NodeSettings, servers: list[Server]
) -> tuple[socket.socket | None, socket.socket | None]:
    """The listening sockets (plain, TLS) of ``start_servers``' servers that other
    receiving processes can share: the native engine's; None for pynetdicom's."""
    from dicom_node.ul.server import Listener

    socks = [server.socket if isinstance(server, Listener) else None for server in servers]
    if settings.tls is not None and settings.tls.only:
        return None, socks[0]
    return socks[0], socks[1] if len(socks) > 1 else None


def start_server(
    settings: NodeSettings,
    receiver: Receiver,
    receive: ReceiveSettings | None = None,
    port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    inherited: socket.socket | None = None,
) -> Server:
    """Listen on ``node.host:node.port`` (port 0 picks a free port), sharing the
    port with other receiving processes of the node; ``receive.engine`` says whose
    upper layer receives (``dicom_node.ul`` or pynetdicom)."""
    receive = receive or receiver.receive
    if receive.engine == "native":
        from dicom_node.ul.server import Listener

        return Listener(settings, receiver, receive, settings.port if port is None else port,
                        ssl_context, inherited)  # fmt: skip
    configure_receiving(receiver.spool)
    ae = make_ae(settings, receive)
    address = (settings.host, settings.port if port is None else port)
    # SO_REUSEPORT only when this node runs several receiving processes: otherwise a
    # second node started on the same port by mistake fails with "in use".
    server_class = _ReusePortServer if receive.processes > 1 else ThreadedAssociationServer
    # Largest PDU we read: what we advertise (0: unlimited, so the instance limit), and
    # never under 1 MiB + 64 KiB (an A-ASSOCIATE-RQ proposing every SOP class is big).
    limit = max(receive.max_pdu_bytes or receiver.max_instance, 2**20) + 2**16
    server = ae.make_server(address, evt_handlers=receiver.handlers(), server_class=server_class,
                            ssl_context=ssl_context,
                            request_handler=_bounded_handler(limit))  # fmt: skip
    ae._servers.append(server)  # as AE.start_server does, so server.shutdown() finds it
    thread = threading.Thread(target=server.serve_forever, name="scp", daemon=True)
    thread.start()
    return server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ORPHAN_AGE = 600.0  # seconds; far longer than any move-and-commit transaction
_MAX_INFLATED = int(ReceiveSettings().max_inflated_mb * 2**20)


def reconcile_spool(
    spool: Spool,
    index: Index,
    now: float | None = None,
    min_age: float = ORPHAN_AGE,
    max_inflated: int = _MAX_INFLATED,
    sweep: bool = True,
) -> None:
    """At start, and then every retention round: file what a crash left sealed
    (``spool.seal``: such an instance may have been answered Success), remove
    what it left unfinished.

    - In ``incoming`` of this host's receiving processes that are gone: a sealed
      file is filed as if just received (moved into the spool, indexed durably),
      unless a newer copy of its instance is filed; every other file (a data set
      cut off mid-way or refused, an unused blank) is removed.
    - In the spool: a file that no index row names (its commit was lost) is
      indexed when sealed and no newer copy is filed; otherwise removed.

    Only spool files older than ``min_age`` count: another receiving process, or
    another node sharing the storage, may be between its move and its commit
    right now (0 is safe only before any receiving process of a node alone on
    its index has started).

    ``sweep=False`` (the database server lost commits, see ``epoch``): only the
    sealed spool files no row names are filed, whatever their age, and nothing
    is removed. A file a live receiver is committing right now is then filed
    twice, which changes nothing: the second ``Index.record`` waits for the
    instance's lock and finds the first one's row."""
    now = time.time() if now is None else now
    filed = partial = dropped = 0
    if sweep:
        for path in spool.left_incoming(_alive):
            if path.stat().st_size and _file_sealed(spool, index, path, max_inflated, None):
                filed += 1
        partial = spool.sweep_incoming(_alive)
    for rel in index.unindexed(spool.instance_files(older_than=now - min_age)):
        if _file_sealed(spool, index, spool.resolve(rel), max_inflated, rel):
            filed += 1
        elif sweep:
            spool.remove(rel)
            dropped += 1
    if filed:
        logger.warning(
            "filed %d sealed instance(s) %s",
            filed,
            "an earlier run had not filed" if sweep else "the index had lost",
        )
    if partial or dropped:
        logger.warning(
            "removed what an earlier run left unfinished: %d partial data set(s),"
            " %d unfiled spool file(s)",
            partial,
            dropped,
        )


def _file_sealed(
    spool: Spool, index: Index, path: Path, max_inflated: int, in_spool: str | None
) -> bool:
    """Index a sealed file left by a crash (``in_spool``: where it lies in the
    spool; None: in ``incoming``, to be moved); False when it is not whole, not
    a readable instance, or a newer copy of its instance is filed."""
    text = sealed(path)
    if text is None:
        return False
    origin = Origin.from_seal(text)
    try:
        syntax = str(read_file_meta_info(path).TransferSyntaxUID)
        header, ds = read_header(path, syntax, max_inflated)
        facts = instance_facts(ds, origin.context())
        record = instance_record(spool, header, facts, path.stat().st_size)
    except (BadInstance, UnsafeUid, InvalidDicomError, AttributeError, ValueError, OSError):
        return False
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        return False  # refused when it arrived
    if in_spool is not None and record.path != in_spool:
        return False  # not where its UIDs file it: no file this node placed
    mtime = path.stat().st_mtime_ns
    for rel in {record.path, index.path_of(record.sop_uid)} - {None, in_spool}:
        try:
            if spool.resolve(str(rel)).stat().st_mtime_ns >= mtime:
                return False  # a copy received later is filed
        except FileNotFoundError:
            continue

    def place() -> None:
        spool.place(path, record.path)

    index.record(record, time.time(), None if in_spool is not None else place, spool.remove)
    return True
