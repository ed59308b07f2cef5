"""C-STORE of result files to a destination (the node as Storage SCU).

Only this module and ``scp`` touch pynetdicom. ``connect`` opens one
association for a set of SOP classes; ``Connection.store`` sends one file,
read from disk only when it is its turn, and returns the destination's status.
Failures are raised as classes from ``dicom_node.errors``:

    DestinationUnavailable   refused/timed-out connection, association aborted
                             or rejected-transient: try again later
    DestinationRefused       association rejected-permanent, or no presentation
                             context accepted for the object's SOP class
    UnreadableResult         the file is missing or not DICOM
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt

from dicom_node.errors import DestinationRefused, DestinationUnavailable, UnreadableResult
from dicom_node.settings import Destination

logger = logging.getLogger(__name__)

_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class StoreResult:
    """The destination's answer to one C-STORE; ``status`` None: no answer."""

    status: int | None
    detail: str = ""


class Connection(Protocol):
    """An open association the sender stores files over."""

    def store(self, path: Path) -> StoreResult: ...

    def close(self) -> None: ...


def sop_class_of(path: Path) -> str:
    """The SOP Class UID of a result file (header only); ``UnreadableResult`` if none."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.SOPClassUID)
    except (OSError, InvalidDicomError, AttributeError, ValueError, EOFError) as exc:
        raise UnreadableResult(f"result file unreadable ({type(exc).__name__})") from None


def _where(destination: Destination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _associate(
    destination: Destination, calling_ae: str, sop_classes: Iterable[str], timeout: float
) -> Any:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 15.0)
    for sop_class in sorted(set(sop_classes)):
        ae.add_requested_context(sop_class, _TRANSFER_SYNTAXES)
    answers: list[Any] = []  # the A-ASSOCIATE response primitive, kept for its Result
    tls_args = None
    if destination.tls is not None:
        from dicom_node.tls import client_context

        try:
            tls_args = (client_context(destination.tls), destination.host)
        except OSError as exc:  # ssl.SSLError is one: a bad certificate, key or CA file
            why = f"{type(exc).__name__}: {exc.strerror or exc}"
            raise DestinationRefused(f"TLS files for {_where(destination)}: {why}") from None
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, _no_delay),
            (evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive)),
        ],
    )
    if assoc.is_established:
        return assoc
    where = _where(destination)
    # A-ASSOCIATE result: 0 accepted, 1 rejected-permanent, 2 rejected-transient (PS3.8 7.1.1.9)
    results = [getattr(p, "result", None) for p in answers]
    if assoc.is_rejected:
        if 0x01 in results:
            raise DestinationRefused(f"association to {where} rejected (permanent)")
        raise DestinationUnavailable(f"association to {where} rejected (transient)")
    if 0x00 in results:  # accepted, then aborted by us: no presentation context was accepted
        raise DestinationRefused(f"{where} accepted none of the proposed presentation contexts")
    state = "aborted" if assoc.is_aborted else "could not be opened"
    raise DestinationUnavailable(f"association to {where} {state}")


def configure_sending() -> None:
    """Set pynetdicom's process-wide option for sending. Called once by the entry
    point of each sending process (pynetdicom reads it as a module global)."""
    # A result file whose transfer syntax the peer accepted is sent as its bytes,
    # in chunks from the file, instead of being decoded and encoded again (a lung
    # SEG holds hundreds of per-frame items: ~0.1 s each way).
    _config.STORE_SEND_CHUNKED_DATASET = True


def _no_delay(event: Any) -> None:
    """EVT_CONN_OPEN: turn Nagle's algorithm off on the association's socket.
    Without it the last PDU of a message waits for the peer's delayed ACK
    (~40 ms per C-STORE on loopback, see shared/FACTS.md)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PynetdicomConnection:
    def __init__(self, assoc: Any, destination: Destination) -> None:
        self._assoc = assoc
        self._where = _where(destination)
        self._syntaxes: dict[str, set[str]] = {}  # accepted SOP class -> transfer syntaxes
        for cx in assoc.accepted_contexts:
            self._syntaxes.setdefault(str(cx.abstract_syntax), set()).add(
                str(cx.transfer_syntax[0])
            )

    def store(self, path: Path) -> StoreResult:
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
            syntax = str(meta.get("TransferSyntaxUID", ""))
            # The file as it is when the peer accepted its syntax; else decoded, for
            # pynetdicom to encode in a syntax the peer accepted.
            dataset: Path | Dataset = path
            if syntax not in self._syntaxes.get(sop_class, ()):
                dataset = dcmread(path)
                sop_class = str(dataset.get("SOPClassUID", ""))
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            raise UnreadableResult(f"result file unreadable ({type(exc).__name__})") from None
        if sop_class not in self._syntaxes:
            raise DestinationRefused(f"{self._where} accepted no presentation context for the "
                                     "result's SOP class")  # fmt: skip
        if not self._assoc.is_established:
            raise DestinationUnavailable(f"association to {self._where} was lost")
        try:
            status = self._assoc.send_c_store(dataset)
        except (ValueError, RuntimeError) as exc:
            raise DestinationUnavailable(f"C-STORE to {self._where} not sent "
                                         f"({type(exc).__name__})") from None  # fmt: skip
        if not status or "Status" not in status:
            return StoreResult(None, "no response (association lost or timed out)")
        code = int(status.Status)
        return StoreResult(code, str(status.get("ErrorComment", ""))[:64] if code else "")

    def close(self) -> None:
        if self._assoc.is_established:
            self._assoc.release()


def connect(
    destination: Destination, calling_ae: str, sop_classes: Iterable[str], timeout: float = 60.0
) -> Connection:
    """Open an association to ``destination`` proposing ``sop_classes``."""
    return PynetdicomConnection(
        _associate(destination, calling_ae, sop_classes, timeout), destination
    )


def echo(destination: Destination, calling_ae: str, timeout: float = 15.0) -> bool:
    """C-ECHO the destination; True when it answered Success."""
    try:
        assoc = _associate(destination, calling_ae, [VERIFICATION], timeout)
    except (DestinationUnavailable, DestinationRefused):
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()
