"""One association, acceptor side (PS3.8 section 9.2): negotiate, then answer
C-ECHO and C-STORE until the requestor releases or aborts.

A data set goes straight from the socket to a file in this process's incoming
folder (an empty one made ahead, ``spool.Blanks``, so that keeping it costs one
fsync): the File Meta Information first (``meta``), then each data fragment as
it arrives (``recv_into`` a reused buffer, ``os.write`` of its slices). The
storing itself (header checks, fsync, place, index, status) is the engine-
neutral ``scp.Receiver``; this module only speaks the protocol.

What ends an association, and how:

    A-RELEASE-RQ          A-RELEASE-RP, series marked released
    A-ABORT from the peer  connection closed, a partial data set removed
    malformed PDU          A-ABORT (service provider, the reason that fits)
    unexpected PDU         A-ABORT (service provider, unexpected PDU)
    PDU over our limit     A-ABORT before reading it
    timeout                A-ABORT: ACSE timeout before the A-ASSOCIATE-RQ,
                           DIMSE timeout inside a message, network timeout
                           between messages
    connection lost        a partial data set removed

Nothing here raises out of ``Association.run``; the socket is always closed and
the association slot always released.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.peers import Rejection, Slot
from dicom_node.scp import CONTEXT_MISMATCH, Origin, Outcome, Receiver
from dicom_node.spool import PREAMBLE, Checksum
from dicom_node.ul import pdu
from dicom_node.ul.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    BadCommand,
    Command,
    decode_command,
    encode_response,
)
from dicom_node.ul.meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # the reused receive buffer
MAX_COMMAND = 1 << 16  # a command set is a few hundred bytes
MAX_ASSOCIATE_RQ = (1 << 20) + (1 << 16)  # every SOP class, every syntax: ~200 KiB

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21
APPLICATION_CONTEXT_NOT_SUPPORTED = (0x01, 0x01, 0x02)
PROTOCOL_VERSION_NOT_SUPPORTED = (0x01, 0x02, 0x02)


@dataclass(frozen=True)
class AcceptorConfig:
    """What an association needs of the settings; ``syntaxes`` maps each abstract
    syntax we accept to the transfer syntaxes we take for it."""

    syntaxes: dict[str, frozenset[str]]
    blank: Callable[[], Path]  # an empty file to receive a data set into
    max_pdu: int  # advertised; 0: unlimited
    limit: int  # the largest PDU we read
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float


class _Closed(Exception):
    """The peer closed the connection."""


class _Abort(Exception):
    """End the association with an A-ABORT of the service provider."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def negotiate(
    proposed: tuple[pdu.ProposedContext, ...], syntaxes: dict[str, frozenset[str]]
) -> list[pdu.ContextResult]:
    """For each proposed context: the first transfer syntax the requestor proposed
    among ours (so a JPEG-LS image comes as it is held and is stored as received),
    abstract syntax not supported (0x03), or no common transfer syntax (0x04)."""
    results = []
    for cx in proposed:
        ours = syntaxes.get(cx.abstract_syntax)
        first = cx.transfer_syntaxes[0]
        if ours is None:
            results.append(
                pdu.ContextResult(cx.context_id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, first)
            )
            continue
        common = [ts for ts in cx.transfer_syntaxes if ts in ours]
        result = pdu.ACCEPTANCE if common else pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED
        results.append(pdu.ContextResult(cx.context_id, result, common[0] if common else first))
    return results


@dataclass
class _Message:
    """A C-STORE whose data set is arriving."""

    command: Command
    context_id: int
    transfer_syntax: str
    path: Path | None = None
    fd: int | None = None
    received: int = 0
    refusal: Outcome | None = None
    checksum: Checksum = field(default_factory=Checksum)  # of what was written


@dataclass
class _Tally:
    stored: int = 0
    failed: int = 0
    series: set[str] = field(default_factory=set)


class Association:
    """Runs one association on an accepted (and, for TLS, wrapped) socket."""

    LINGER = 5.0  # seconds to wait for the requestor to close after our last PDU

    def __init__(
        self,
        sock: socket.socket,
        receiver: Receiver,
        config: AcceptorConfig,
        address: tuple[str, int],
        wrap: Callable[[socket.socket], socket.socket] | None = None,
    ) -> None:
        self.sock = sock
        self.receiver = receiver
        self.config = config
        self.address = address
        self.wrap = wrap
        # What has been received and not yet used: view[lo:hi]. A receive takes
        # whatever has arrived (up to CHUNK), so one system call usually brings a
        # PDU's header, its PDV header and its data together.
        self.view = memoryview(bytearray(CHUNK))
        self.lo = self.hi = 0
        self.accepted: dict[int, str] = {}  # context ID → transfer syntax
        self.abstract: dict[int, str] = {}  # context ID → abstract syntax (SOP class)
        self.started = 0.0  # when the association was accepted
        self.command = bytearray()
        self.message: _Message | None = None
        self.tally = _Tally()
        self.origin = Origin("", "", address[0], address[1])
        self.waiting_since: float | None = None  # for the requestor's next message
        self.closing = False  # our last PDU is sent: waiting for the requestor to close
        self.stopping = False

    # -- the whole association ------------------------------------------------
    def run(self) -> None:
        slot: Slot | None = None
        released = False
        try:
            self.sock.settimeout(self.config.acse_timeout)  # ARTIM
            if self.wrap is not None:
                try:
                    self.sock = self.wrap(self.sock)
                except (OSError, ValueError) as exc:
                    logger.warning("TLS handshake refused (%s)", type(exc).__name__,
                                   extra=self.origin.log())  # fmt: skip
                    return
            slot = self._associate()
            if slot is not None:
                released = self._serve()
        except _Abort as exc:
            logger.warning("association aborted: %s", exc, extra=self.origin.log())
            self._send(pdu.encode_abort(pdu.SOURCE_PROVIDER, exc.reason))
        except TimeoutError:
            logger.warning(
                "association aborted: no PDU within the timeout", extra=self.origin.log()
            )
            self._send(pdu.encode_abort(pdu.SOURCE_PROVIDER, pdu.REASON_NOT_SPECIFIED))
        except (_Closed, OSError) as exc:
            if self.stopping:
                logger.info("association closed: the node is stopping", extra=self.origin.log())
            elif isinstance(exc, OSError):
                logger.warning("association lost (%s)", type(exc).__name__,
                               extra=self.origin.log())  # fmt: skip
            elif slot is not None:
                logger.warning("association lost: the peer closed the connection",
                               extra=self.origin.log())  # fmt: skip
        except Exception as exc:  # boundary: an association thread must end cleanly
            logger.error("association failed (%s)", type(exc).__name__, extra=self.origin.log())
            self._send(pdu.encode_abort(pdu.SOURCE_PROVIDER, pdu.REASON_NOT_SPECIFIED))
        finally:
            self._drop_message()
            self._close()
            if slot is not None:
                slot.release()
                t = self.tally
                self.receiver.association_ended(self.origin, t.stored, t.failed, t.series,
                                                released, self.started)  # fmt: skip

    def _associate(self) -> Slot | None:
        """Read the A-ASSOCIATE-RQ; answer AC (and return the held slot) or RJ."""
        kind, length = self._read_header()
        if kind != pdu.ASSOCIATE_RQ:
            raise _Abort(pdu.REASON_UNEXPECTED_PDU, f"PDU type 0x{kind:02X} before association")
        if length > MAX_ASSOCIATE_RQ:
            raise _Abort(pdu.REASON_INVALID_PARAMETER, f"A-ASSOCIATE-RQ of {length} bytes")
        try:
            rq = pdu.parse_associate_rq(self._read(length))
        except pdu.MalformedPDU as exc:
            raise _Abort(exc.reason, f"malformed A-ASSOCIATE-RQ ({exc})") from None
        self.origin = Origin(rq.calling_ae, rq.called_ae, self.address[0], self.address[1])
        if not rq.protocol_version & 1:
            self._reject(*PROTOCOL_VERSION_NOT_SUPPORTED, "protocol version not supported")
            return None
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            self._reject(*APPLICATION_CONTEXT_NOT_SUPPORTED, "application context not supported")
            return None
        slot = self.receiver.open_association(self.origin)  # logs a rejection
        if isinstance(slot, Rejection):
            self._send(pdu.encode_associate_rj(slot.result, slot.source, slot.reason))
            return None
        try:
            results = negotiate(rq.contexts, self.config.syntaxes)
            self.accepted = {r.context_id: r.transfer_syntax for r in results
                             if r.result == pdu.ACCEPTANCE}  # fmt: skip
            self.abstract = {cx.context_id: cx.abstract_syntax for cx in rq.contexts}
            self.sock.sendall(pdu.encode_associate_ac(rq, results, self.config.max_pdu,
                              IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION))  # fmt: skip
        except BaseException:
            slot.release()
            raise
        self.started = time.time()
        logger.info("association accepted", extra=self.origin.log())
        return slot

    def _reject(self, result: int, source: int, reason: int, why: str) -> None:
        logger.warning("association rejected (%s)", why, extra=self.origin.log())
        self._send(pdu.encode_associate_rj(result, source, reason))

    def _serve(self) -> bool:
        """PDUs until the association ends; True when released."""
        timeout = None
        while True:
            inside = self.message is not None or bool(self.command)
            wanted = self.config.dimse_timeout if inside else self.config.network_timeout
            if wanted != timeout:  # each change is a system call
                self.sock.settimeout(wanted)
                timeout = wanted
            if not inside:
                self.waiting_since = time.monotonic()
            kind, length = self._read_header()
            self.waiting_since = None
            if length > self.config.limit:
                why = f"a PDU of {length} bytes is over the limit of {self.config.limit}"
                raise _Abort(pdu.REASON_INVALID_PARAMETER, why)
            if kind == pdu.P_DATA_TF:
                self._p_data(length)
            elif kind == pdu.RELEASE_RQ:
                self._read(length)
                self._send(pdu.encode_release_rp())
                return True
            elif kind == pdu.ABORT:
                self._read(length)
                logger.info("association aborted by the peer", extra=self.origin.log())
                return False
            else:
                raise _Abort(pdu.REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{kind:02X}")

    # -- P-DATA-TF ----------------------------------------------------------------
    def _p_data(self, length: int) -> None:
        remaining = length
        header = bytearray(6)
        while remaining:
            if remaining < 6:
                raise _Abort(pdu.REASON_INVALID_PARAMETER, "a PDV item is cut off")
            self._fill(memoryview(header))
            item_length, context_id, control = pdu.PDV.unpack(header)
            if item_length < 2 or item_length + 4 > remaining:
                raise _Abort(pdu.REASON_INVALID_PARAMETER, "a PDV item length is wrong")
            remaining -= 4 + item_length
            size = item_length - 2
            if context_id not in self.accepted:
                raise _Abort(pdu.REASON_INVALID_PARAMETER, "a PDV on a context not accepted")
            if control & 1:
                self._command_fragment(context_id, size, last=bool(control & 2))
            else:
                self._data_fragment(context_id, size, last=bool(control & 2))

    def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self.message is not None:
            raise _Abort(pdu.REASON_UNEXPECTED_PARAMETER, "a command fragment inside a data set")
        if len(self.command) + size > MAX_COMMAND:
            raise _Abort(pdu.REASON_INVALID_PARAMETER, "a command set over 64 KiB")
        self.command += self._read(size)
        if not last:
            return
        try:
            command = decode_command(bytes(self.command))
        except BadCommand as exc:
            raise _Abort(pdu.REASON_INVALID_PARAMETER, f"bad command set ({exc})") from None
        finally:
            self.command.clear()
        if command.has_data_set:
            self._start_message(command, context_id)
        elif command.command_field == C_ECHO_RQ:
            self._respond(command, context_id, Outcome(0x0000))
        elif command.command_field == C_STORE_RQ:
            self._respond(command, context_id, Outcome(0xC210, "no data set in the request"))
        else:
            self._respond(command, context_id, Outcome(0x0211, "unrecognised operation"))

    def _start_message(self, command: Command, context_id: int) -> None:
        syntax = self.accepted[context_id]
        message = _Message(command, context_id, syntax)
        self.message = message
        if command.command_field != C_STORE_RQ:
            message.refusal = Outcome(0x0211, "unrecognised operation")
            return
        if command.sop_class != self.abstract.get(context_id):
            message.refusal = CONTEXT_MISMATCH  # its data set is dropped as it arrives
            return
        try:
            message.path = self.config.blank()
            message.fd = os.open(message.path, os.O_RDWR)  # read and sealed through it too
            meta = file_meta(command.sop_class, command.sop_instance, syntax,
                             self.origin.calling_ae)  # fmt: skip
            self._write(message.fd, meta)
            message.checksum.feed(memoryview(meta)[PREAMBLE:])
        except OSError as exc:
            self._refuse_write(message, exc)

    def _data_fragment(self, context_id: int, size: int, last: bool) -> None:
        message = self.message
        if message is None or context_id != message.context_id:
            raise _Abort(pdu.REASON_UNEXPECTED_PARAMETER, "a data fragment without its command")
        if message.fd is not None:
            refusal = self.receiver.check_arriving(message.received, size, self.origin)
            if refusal is not None:
                message.refusal = refusal
                self._discard(message)
        message.received += size
        while size:
            part = self._take(size)
            size -= len(part)
            if message.fd is not None:
                try:
                    self._write(message.fd, part)
                except OSError as exc:
                    self._refuse_write(message, exc)
                else:
                    message.checksum.feed(part)
        if last:
            self._finish_message(message)

    def _finish_message(self, message: _Message) -> None:
        self.message = None
        command = message.command
        if message.refusal is not None or message.path is None or message.fd is None:
            self._discard(message)
            outcome = message.refusal or Outcome(0xA700, "out of resources")
        else:
            fd, message.fd = message.fd, None  # the receiver's now: it closes it
            outcome = self.receiver.store(message.path, message.transfer_syntax,
                                          command.sop_class, command.sop_instance,
                                          self.origin, message.checksum, fd)  # fmt: skip
        if outcome.status == 0:
            self.tally.stored += 1
            if outcome.series_uid is not None:
                self.tally.series.add(outcome.series_uid)
        else:
            self.tally.failed += 1
        self._respond(command, message.context_id, outcome)

    def _respond(self, command: Command, context_id: int, outcome: Outcome) -> None:
        data = encode_response(command, outcome.status, outcome.comment)
        self.sock.sendall(pdu.encode_p_data([(context_id, 0x03, data)]))

    # -- files ------------------------------------------------------------------------
    @staticmethod
    def _write(fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _refuse_write(self, message: _Message, exc: OSError) -> None:
        logger.error("could not write an instance to the spool: %s", exc.strerror)
        message.refusal = Outcome(0xA700, "out of resources: could not write to storage")
        self._discard(message)

    @staticmethod
    def _discard(message: _Message) -> None:
        """Drop what was received of this data set; the rest is read and dropped."""
        if message.fd is not None:
            os.close(message.fd)
            message.fd = None
        if message.path is not None:
            message.path.unlink(missing_ok=True)
            message.path = None

    def _drop_message(self) -> None:
        if self.message is not None:
            self._discard(self.message)
            self.message = None

    def idle_for(self, now: float) -> float:
        """Seconds this association has been waiting for its requestor's next
        message (0 while one is arriving or being answered)."""
        if self.closing:
            return math.inf
        since = self.waiting_since
        return 0.0 if since is None else now - since

    def interrupt(self) -> None:
        """From another thread: shut the connection down, so this association's
        thread finds it closed and ends (the node is stopping)."""
        self.stopping = True
        try:  # the plain socket's shutdown, also under TLS: no TLS state is touched
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    # -- socket -------------------------------------------------------------------------
    def _read_header(self) -> tuple[int, int]:
        header = bytearray(6)
        self._fill(memoryview(header))
        try:
            return pdu.parse_header(bytes(header))
        except pdu.MalformedPDU as exc:
            raise _Abort(exc.reason, str(exc)) from None

    def _take(self, size: int) -> memoryview:
        """At most ``size`` received bytes (receiving when none are left); valid
        until the next call."""
        if self.lo == self.hi:
            n = self.sock.recv_into(self.view)
            if n == 0:
                raise _Closed
            self.lo, self.hi = 0, n
        end = min(self.hi, self.lo + size)
        part = self.view[self.lo : end]
        self.lo = end
        return part

    def _fill(self, view: memoryview) -> None:
        while view:
            part = self._take(len(view))
            view[: len(part)] = part
            view = view[len(part) :]

    def _read(self, size: int) -> bytes:
        data = bytearray(size)
        self._fill(memoryview(data))
        return bytes(data)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _close(self) -> None:
        """PS3.8 state Sta13: after our last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP,
        A-ABORT) the requestor closes the connection. Wait for that, for at most
        ``LINGER`` seconds, draining what still arrives: closing first could reset
        the connection with our last PDU still unread by the peer (a rejected
        requestor would then see a lost connection, not the rejection). Nor is our
        side shut down first: a requestor that sees the end of the stream with the
        A-ASSOCIATE-RJ may take it for an abort (pynetdicom did, under load)."""
        self.closing = True
        try:
            linger = min(self.config.acse_timeout, self.LINGER)
            deadline = time.monotonic() + linger
            self.sock.settimeout(linger)
            while self.sock.recv(CHUNK) and time.monotonic() < deadline:
                pass
        except (OSError, ValueError):
            pass
        self.sock.close()
