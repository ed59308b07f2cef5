"""The native engine's listener: accepts connections on ``node.host:port`` and
runs each association in a thread of its own (blocking sockets; socket I/O
releases the GIL).

With ``receive.processes`` > 1 the receiving processes share the node's one
listening socket (inherited, not a second bind): each waits in a blocking
``accept``, and Linux hands each new connection to the process that has waited
longest, so concurrent senders are spread evenly (SO_REUSEPORT would spread
them by a hash of their addresses, often three to one), and connections queued
for a process that dies are not lost with it.

TCP_NODELAY on every accepted socket (a peer that leaves Nagle on otherwise
waits ~40 ms per response, shared/FACTS.md); TLS sockets are wrapped in the
association's thread, so a slow handshake holds up no one.

Connections beyond ``node.max_associations`` + ``SPARE`` in flight are closed
at once: the association slots (``peers.Slots``) reject with a reason, this
only bounds threads for connections that never send an A-ASSOCIATE-RQ.

Stopping (``shutdown``): the listening socket closes first, so new connections
are refused, then the associations in progress get ``drain`` seconds to end as
their requestors release them. One that waits for its requestor's next message
for more than ``IDLE_CUT`` seconds is closed then (a PACS may keep an association
open for reuse; it opens a new one later), the others once the time is up. A
closed association's thread removes its partial data set, if any, and ends; an
instance being stored at that moment is still stored and indexed, only its
answer is lost, so the sender sends it again.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time

from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION, Receiver
from dicom_node.settings import NodeSettings, ReceiveSettings
from dicom_node.ul.acceptor import AcceptorConfig, Association

logger = logging.getLogger(__name__)

SPARE = 32
IDLE_CUT = 0.5  # seconds without a message after which stopping closes an association


def acceptor_config(receiver: Receiver, receive: ReceiveSettings) -> AcceptorConfig:
    syntaxes = frozenset(str(ts) for ts in TRANSFER_SYNTAXES)
    supported = dict.fromkeys(sorted(STORAGE_SOP_CLASSES | {VERIFICATION}), syntaxes)
    # Largest PDU we read: what we advertise (0: unlimited, so the instance limit) and
    # 64 KiB of slack for a requestor that counts its framing differently.
    limit = (receive.max_pdu_bytes or receiver.max_instance) + 2**16
    receiver.spool.prepare_blanks()
    return AcceptorConfig(
        syntaxes=supported,
        blank=receiver.spool.blank,
        max_pdu=receive.max_pdu_bytes,
        limit=limit,
        acse_timeout=receive.acse_timeout_seconds,
        dimse_timeout=receive.dimse_timeout_seconds,
        network_timeout=receive.network_timeout_seconds,
    )


class Listener:
    """A listening socket and its accept thread; ``shutdown`` stops accepting.
    ``inherited``: a listening socket made by the node process, shared."""

    def __init__(
        self,
        settings: NodeSettings,
        receiver: Receiver,
        receive: ReceiveSettings,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        inherited: socket.socket | None = None,
    ) -> None:
        self.receiver = receiver
        self.config = acceptor_config(receiver, receive)
        self.ssl_context = ssl_context
        if inherited is None:
            family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
            self.socket = socket.socket(family)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((settings.host, port))
            self.socket.listen(128)
        else:
            self.socket = inherited
        # Blocking accept in every process sharing it (a timeout would make the
        # shared socket non-blocking for all); shutdown() wakes them.
        self.socket.settimeout(None)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._stop = threading.Event()
        self._room = threading.BoundedSemaphore(settings.max_associations + SPARE)
        self._active: set[Association] = set()
        self._ended = threading.Condition()
        self._thread = threading.Thread(target=self._accept_loop, name="ul-listener", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self.socket.accept()
            except OSError as exc:
                if self._stop.is_set():
                    return
                if exc.errno == errno.EINVAL:  # shut down by another process sharing it
                    logger.info("the listening socket was closed; no new associations here")
                    return
                logger.error("accept failed (%s)", type(exc).__name__)
                self._stop.wait(0.1)
                continue
            if not self._room.acquire(blocking=False):
                logger.warning("connection refused: too many connections in flight",
                               extra={"peer": f"{address[0]}:{address[1]}"})  # fmt: skip
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._run, args=(conn, address[:2]), name="ul-association",
                             daemon=True).start()  # fmt: skip

    def _run(self, conn: socket.socket, address: tuple[str, int]) -> None:
        association: Association | None = None
        try:
            wrap = None
            if self.ssl_context is not None:
                context = self.ssl_context

                def wrap(sock: socket.socket) -> socket.socket:
                    return context.wrap_socket(sock, server_side=True)

            association = Association(conn, self.receiver, self.config, address, wrap)
            with self._ended:
                self._active.add(association)
            association.run()
        finally:
            with self._ended:
                if association is not None:
                    self._active.discard(association)
                self._ended.notify_all()
            self._room.release()

    def stop_accepting(self) -> None:
        """Stop listening: new connections are refused from now on, in every process
        sharing the socket (the node stops them all together)."""
        self._stop.set()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes every blocked accept
        except OSError:
            pass
        self._thread.join()
        self.socket.close()

    def drain(self, seconds: float) -> int:
        """Wait up to ``seconds`` for the associations in progress to end, then
        shut the connections of the others down and wait (a few seconds at most)
        for their threads to end; the number that had to be cut."""
        deadline = time.monotonic() + seconds
        cut: set[Association] = set()
        with self._ended:
            while self._active - cut and (now := time.monotonic()) < deadline:
                idle = {a for a in self._active - cut if a.idle_for(now) >= IDLE_CUT}
                for association in idle:
                    association.interrupt()
                cut |= idle
                self._ended.wait(min(0.2, deadline - now))
            busy = self._active - cut
        for association in busy:
            association.interrupt()
        with self._ended:
            self._ended.wait_for(lambda: not self._active, timeout=5.0)
        if busy:
            logger.warning("stopping: %d association(s) still in progress were closed",
                           len(busy))  # fmt: skip
        return len(busy)

    def shutdown(self, drain: float = 0.0) -> None:
        """Stop accepting, then drain (``drain`` seconds at most)."""
        self.stop_accepting()
        self.drain(drain)
