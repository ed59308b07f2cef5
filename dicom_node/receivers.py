"""Extra receiving processes: several full SCPs sharing the node's port.

One Python process receives on at most about one core (see docs/benchmarks.md);
with ``receive.processes: N`` the node process runs one SCP
and starts N-1 more processes of this module. With the native engine they
inherit the node's listening sockets (``--listen-fd``; each new connection goes
to whichever process has waited longest in ``accept``, see ``ul.server``); with
the pynetdicom engine each binds the port with SO_REUSEPORT (the kernel spreads
new connections by a hash of their addresses). Each is a complete
SCP on the one spool and index: the index's write lock is shared between
processes (``state.Database``), association limits are counted across them
(``peers.Slots``), and each receives into its own ``incoming/<pid>`` folder.
Routing, dispatch and sending stay in the node process.

``ReceiverProcesses`` starts them, restarts one that dies (after a backoff) and
stops them with SIGTERM on shutdown. Run by hand it is

    python -m dicom_node.receivers --config config.yaml --port 11112 [--listen-fd N]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dicom_node.index import Index
from dicom_node.presence import presence_for
from dicom_node.scp import Receiver, start_servers, stop_servers
from dicom_node.settings import Settings, load_settings
from dicom_node.spool import Spool
from dicom_node.state import open_database

logger = logging.getLogger(__name__)


class ReceiverProcesses:
    """Supervises ``count`` receiving processes beside the node's own SCP."""

    RESTART_BACKOFF = 2.0

    def __init__(
        self,
        count: int,
        config: Path | None,
        port: int,
        tls_port: int | None = None,
        listening: tuple[socket.socket | None, socket.socket | None] = (None, None),
    ) -> None:
        self.count = count
        self.command = [sys.executable, "-m", "dicom_node.receivers", "--port", str(port),
                        "--parent", str(os.getpid())]  # fmt: skip
        if tls_port is not None:
            self.command += ["--tls-port", str(tls_port)]
        self.fds = tuple(sock.fileno() for sock in listening if sock is not None)
        for option, sock in zip(("--listen-fd", "--tls-listen-fd"), listening, strict=True):
            if sock is not None:
                self.command += [option, str(sock.fileno())]
        if config is not None:
            self.command += ["--config", str(config)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dead_since: dict[int, float] = {}

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        logger.info("%d extra receiving process(es) started", self.count)

    def check(self, now: float | None = None) -> None:
        """Restart a receiving process that exited, once its backoff has passed."""
        now = time.monotonic() if now is None else now
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                continue
            since = self.dead_since.setdefault(i, now)
            if since == now:
                logger.error("receiving process %d exited with %s; restarting",
                             proc.pid, proc.returncode)  # fmt: skip
            if now - since >= self.RESTART_BACKOFF:
                del self.dead_since[i]
                self.procs[i] = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, pass_fds=self.fds)

    def signal_stop(self) -> None:
        """SIGTERM to each: it stops accepting and drains its associations."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        self.signal_stop()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve(
    settings: Settings,
    port: int,
    stop: threading.Event,
    parent: int = 0,
    tls_port: int | None = None,
    inherited: tuple[socket.socket | None, socket.socket | None] = (None, None),
) -> None:
    """One receiving process: an SCP on ``port`` until ``stop`` is set, or until the
    node process ``parent`` is gone (killed: it must not leave receivers behind)."""
    spool = Spool(settings.storage.dir)
    target = settings.storage.database_target
    db = open_database(target)
    receiver = Receiver(spool, Index(db), settings.storage.min_free_mb * 2**20,
                        settings.node, settings.receive)  # fmt: skip
    # Marked as receiving on its own: a node started again while this process
    # still finishes (its parent was killed) must not take its files for orphans.
    presence = presence_for(db, target if isinstance(target, Path) else None)
    presence.arrive()
    servers = start_servers(settings.node, receiver, port=port, tls_port=tls_port,
                            inherited=inherited)  # fmt: skip
    logger.info("receiving (pid %d)", os.getpid())
    while not stop.wait(1.0):
        if parent and os.getppid() != parent:
            logger.warning("the node process is gone; receiving process stops")
            break
        presence.keep()
    stop_servers(servers, settings.receive.drain_seconds)
    presence.leave()
    db.close()


def main(argv: list[str] | None = None) -> int:
    from dicom_node.cli import configure_logging

    parser = argparse.ArgumentParser(prog="dicom_node.receivers")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--listen-fd", type=int, help="the node's listening socket, shared")
    parser.add_argument("--tls-listen-fd", type=int, help="its TLS listening socket, shared")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    settings = load_settings(args.config)
    os.umask(0o027 if settings.storage.group_access else 0o077)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the node process reloads the config
    inherited = tuple(None if fd is None else socket.socket(fileno=fd)
                      for fd in (args.listen_fd, args.tls_listen_fd))  # fmt: skip
    serve(settings, args.port, stop, args.parent, args.tls_port,
          (inherited[0], inherited[1]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
