"""The running node: SCP, dispatcher, sender and (embedded mode) its workers.

``Node`` wires the parts together with their dependencies as arguments. It
knows nothing of Celery: the entry point hands it a ``Backend`` that can
enqueue a job message and tell how to start a worker process.

Shutdown (SIGTERM/SIGINT): stop accepting associations, let the dispatcher
and sender finish their round, ask embedded workers for a warm shutdown (the
running job finishes; a job cut short is found unfinished at the next start
and enqueued again), close the database, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

from dicom_node import audit, scu
from dicom_node.dispatch import Dispatcher, Enqueue
from dicom_node.epoch import ServerRestarted, deciding, epoch_for
from dicom_node.index import Index
from dicom_node.jobs import Jobs
from dicom_node.leader import LOOK_SECONDS, lease_for
from dicom_node.outbox import Outbox, Sender
from dicom_node.presence import presence_for
from dicom_node.receivers import ReceiverProcesses
from dicom_node.retention import purge_sources
from dicom_node.scp import (
    ORPHAN_AGE,
    Receiver,
    Server,
    listening_sockets,
    reconcile_spool,
    start_servers,
    stop_servers,
)
from dicom_node.settings import ConfigError, Settings, check_pipeline_names, load_settings
from dicom_node.spool import Spool
from dicom_node.state import open_database

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What the node needs from the worker side (``workers.backend`` provides it)."""

    def make_enqueue(self, settings: Settings) -> Enqueue: ...

    def worker_command(self, settings: Settings, config: Path | None) -> list[str]: ...

    def pipeline_names(self, settings: Settings) -> set[str]: ...


class EmbeddedWorkers:
    """Supervises the worker process that embedded mode runs beside the node.

    A worker that exits is started again after a wait that doubles with each
    death in a row (``RESTART_BACKOFF`` up to ``MAX_RESTART_BACKOFF`` seconds) and
    resets once a worker has stayed up for ``STABLE_SECONDS``. Every death is
    logged; one that keeps dying is logged as such.
    """

    RESTART_BACKOFF = 1.0
    MAX_RESTART_BACKOFF = 60.0
    STABLE_SECONDS = 120.0

    def __init__(
        self,
        command: list[str],
        grace: float,
        pidfile: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.grace = grace
        self.pidfile = pidfile
        self.clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.deaths = 0  # in a row, without a stable run between
        self.started_at = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        self._stop_orphan()
        self.proc = subprocess.Popen(self.command, start_new_session=True)
        self.started_at = self.clock()
        self.restart_at = None  # set before anything can fail: one start, one process
        logger.info("embedded worker started (pid %d)", self.proc.pid)
        try:
            self.pidfile.write_text(str(self.proc.pid))
        except OSError as exc:  # storage gone: the worker runs; a later node cannot find it
            logger.error("could not write the embedded worker's pid file: %s", exc.strerror)

    def _stop_orphan(self) -> None:
        """A worker left behind by a node that was killed (SIGKILL, power cut of the
        node process only) would consume beside the new one: stop it first."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if b"worker" not in cmdline or b"-m" not in cmdline:
            return  # the pid was reused by something else
        logger.warning("stopping embedded worker %d left by an earlier run", pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.killpg(pid, signal.SIGKILL)

    def check(self) -> None:
        """Notice a dead worker and start a new one when its backoff has passed."""
        if self.proc is None:
            return
        now = self.clock()
        if self.restart_at is None:
            if self.proc.poll() is None:
                if now - self.started_at >= self.STABLE_SECONDS:
                    self.deaths = 0
                return
            self.deaths = 1 if now - self.started_at >= self.STABLE_SECONDS else self.deaths + 1
            wait = min(self.RESTART_BACKOFF * 2 ** (self.deaths - 1), self.MAX_RESTART_BACKOFF)
            self.restart_at = now + wait
            code = self.proc.returncode
            if self.deaths >= 3:
                logger.error(
                    "embedded worker keeps dying: exit code %s, %d deaths in a row;"
                    " restarting in %.0f s",
                    code,
                    self.deaths,
                    wait,
                )
            else:
                logger.error("embedded worker exited with %s; restarting in %.0f s", code, wait)
            return
        if now >= self.restart_at:
            self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # Celery warm shutdown
        try:
            self.proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            logger.warning("embedded worker still busy after %.0f s; stopping it", self.grace)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Node:
    def __init__(self, settings: Settings, backend: Backend, config: Path | None) -> None:
        self.settings = settings
        self.loaded = settings  # as last read from the file (for the audit log)
        self.config = config
        self.backend = backend
        self.spool = Spool(settings.storage.dir)
        self.spool.create()
        target = settings.storage.database_target
        self.db = open_database(target)
        self.lease = lease_for(self.db, target if isinstance(target, Path) else None)
        self.presence = presence_for(self.db, target if isinstance(target, Path) else None)
        self.leading = False
        self._told_standby = False
        self.index = Index(self.db)  # receiving (and filing what the spool gives back)
        self.outbox = Outbox(self.db)  # the sender's
        # Deciding reads the index and writes jobs, the outbox and purges, each
        # transaction checking that the database server lost nothing meanwhile.
        self.epoch = epoch_for(self.db)
        decider = deciding(self.db, self.epoch)
        self.stop_event = threading.Event()
        self._tick = threading.Event()
        self.sender = Sender(
            self.outbox,
            self.spool,
            dict(settings.destinations),
            settings.send,
            settings.node.ae_title,
            scu.connect,
        )
        self.dispatcher = Dispatcher(
            settings,
            self.spool,
            Index(decider),
            Jobs(decider),
            Outbox(decider),
            backend.make_enqueue(settings),
            on_results=self.sender.wake.set,
        )
        self.receiver = Receiver(
            self.spool,
            self.index,
            settings.storage.min_free_mb * 1024 * 1024,
            settings.node,
            settings.receive,
        )
        self.workers = (
            EmbeddedWorkers(
                backend.worker_command(settings, config),
                settings.workers.shutdown_grace_seconds,
                self.spool.broker_dir / "worker.pid",
            )
            if settings.broker.embedded
            else None
        )
        self._threads: list[threading.Thread] = []
        self.server: Server | None = None
        self.receivers: ReceiverProcesses | None = None
        self.tls_server: Server | None = None

    def start(self) -> tuple[str, int]:
        # No other node receives and this one does not yet: every unindexed file is left
        # by a crash.
        alone = self.presence.alone()
        reconcile = partial(reconcile_spool, self.spool, self.index,
                            min_age=0.0 if alone else ORPHAN_AGE,
                            max_inflated=self.receiver.max_inflated)  # fmt: skip
        if alone:  # it files everything: the server's epoch can be set
            self.epoch.at_start(reconcile)
        else:
            reconcile()
        self.presence.arrive()
        try:
            servers = start_servers(self.settings.node, self.receiver)  # fails first, if at all
        except BaseException:
            self.presence.leave()
            raise
        self.server, self.tls_server = servers[0], servers[1] if len(servers) > 1 else None
        host, port = self.server.server_address[:2]
        tls_port = self.tls_server.server_address[1] if self.tls_server is not None else None
        if self.settings.receive.processes > 1:
            extra = self.settings.receive.processes - 1
            shared = listening_sockets(self.settings.node, servers)  # not bound again
            self.receivers = ReceiverProcesses(extra, self.config, port, tls_port, shared)
            self.receivers.start()
        self.sender.active = lambda: self.leading
        self._lead()
        if self.workers is not None:
            self.workers.start()
        for name, target in (("dispatcher", self._dispatch_loop), ("sender", self._send_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "listening as %s on %s:%d (broker: %s)",
            self.settings.node.ae_title,
            host,
            port,
            "embedded" if self.settings.broker.embedded else "external",
        )
        return host, port

    def _lead(self) -> bool:
        """Take or keep the lead (``leader``); the new leader first re-sends the jobs
        it finds unfinished, as after a restart."""
        was = self.leading
        held = self.lease.hold()
        if held:  # before any decision: nothing the server lost is missing (``epoch``)
            self.epoch.check(self._refile)  # raises: no decision this round, nor a new lead
        self.leading = held
        if self.leading and not was:
            logger.info("this node leads: it routes studies, runs jobs and sends results")
            requeued = self.dispatcher.requeue_unfinished()
            if requeued:
                logger.info("%d unfinished job(s) from before enqueued again", requeued)
        elif was and not self.leading:
            logger.warning("this node no longer leads; it keeps receiving")
        elif not self.leading and not was and not self._told_standby and not self.lease.unreachable:
            self._told_standby = True
            logger.info("another node leads; this one receives, and takes over if it stops")
        return self.leading

    def _refile(self) -> None:
        """After the database server lost commits: file every sealed spool file no
        index row names, young ones too (``epoch``)."""
        reconcile_spool(self.spool, self.index, min_age=0.0, sweep=False,
                        max_inflated=self.receiver.max_inflated)  # fmt: skip

    def _dispatch_loop(self) -> None:
        last_purge = 0.0
        while not self.stop_event.is_set():
            try:
                if self.receivers is not None:  # a standby node receives too
                    self.receivers.check()
                if self.workers is not None:  # and keeps its embedded worker alive
                    self.workers.check()
                self.presence.keep()
                if not self._lead():
                    self._tick.wait(LOOK_SECONDS)
                    continue
                self.dispatcher.tick()
                if time.time() - last_purge > 600:
                    last_purge = time.time()
                    purge_sources(self.dispatcher.index, self.spool, self.settings.storage,
                                  last_purge)  # fmt: skip
                    reconcile_spool(self.spool, self.index, last_purge,
                                    max_inflated=self.receiver.max_inflated)  # fmt: skip
            except ServerRestarted:
                logger.warning("the database server restarted during the round; its decisions"
                               " were rolled back and are taken again")  # fmt: skip
            except Exception as exc:  # boundary: the dispatcher thread must not die
                where = "".join(traceback.format_tb(exc.__traceback__)[-3:])
                logger.error("dispatcher round failed (%s); will try again, at\n%s",
                             type(exc).__name__, where)  # fmt: skip
            self._tick.wait(0.5)

    def _send_loop(self) -> None:
        self.sender.run_forever(self.stop_event)

    def stop(self) -> None:
        drain = self.settings.receive.drain_seconds
        logger.info("stopping: no new associations; %g s for those in progress to end", drain)
        if self.receivers is not None:  # they drain too, meanwhile
            self.receivers.signal_stop()
        stop_servers([s for s in (self.server, self.tls_server) if s is not None], drain)
        if self.receivers is not None:
            self.receivers.stop(timeout=drain + 30)
        self.stop_event.set()
        self._tick.set()
        self.sender.wake.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.send.timeout_seconds + 5)
        if self.workers is not None:
            self.workers.stop()
        self.lease.release()
        self.presence.leave()
        self.db.close()
        logger.info("stopped")

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP, or the file changed). Rules, routing,
        destinations and send settings change at once; other sections need a
        restart. A bad file changes nothing. A change is appended to the audit log."""
        if self.config is None:
            logger.warning("no --config file to reload; running on embedded defaults")
            return False
        try:
            new = load_settings(self.config)
            # The workers keep the models they started with: a rule may only name those.
            running = self.backend.pipeline_names(self.settings)
            pending = (
                frozenset(self.backend.pipeline_names(new) - running)
                if new.models != self.settings.models
                else frozenset()
            )
            check_pipeline_names(new, running, pending)
        except ConfigError as exc:
            logger.error("configuration NOT reloaded; the running one stays in force: %s", exc)
            return False
        later = [k for k in ("node", "storage", "broker", "workers", "models")
                 if getattr(new, k) != getattr(self.settings, k)]  # fmt: skip
        if later:
            logger.warning(
                "changes to %s take effect at the next restart of the node and its workers"
                " (e.g. systemctl restart dicom-node)",
                ", ".join(later),
            )
        keys = audit.changed_keys(self.loaded, new)
        self.loaded = new
        live = {"rules": new.rules, "destinations": new.destinations, "send": new.send,
                "routing": new.routing}  # fmt: skip
        self.settings = self.settings.model_copy(update=live)
        self.dispatcher.settings = self.settings
        self.sender.destinations = dict(new.destinations)
        self.sender.settings = new.send
        logger.info(
            "configuration reloaded: %d rule(s), %d destination(s)",
            len(new.rules),
            len(new.destinations),
        )
        if keys:
            self._audit("reload", keys)
        return True

    def _audit(self, event: str, keys: list[str]) -> None:
        try:
            audit.append(self.settings, event, self.config, keys)
        except OSError as exc:  # the audit log must not stop the node
            logger.error("could not append to the configuration audit log: %s", exc.strerror)

    def run_until_signal(self) -> int:
        """Serve until SIGTERM or SIGINT (SIGHUP reloads the config); returns the exit code."""
        got = threading.Event()
        hup = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            logger.info("received %s", signal.Signals(signum).name)
            (hup if signum == signal.SIGHUP else got).set()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        # The file's state before the start entry is logged: a change saved once that
        # entry is there (an operator, a test) is always seen as a change.
        seen = applied = audit.FileState.of(self.config) if self.config else None
        self.start()
        self._audit("start", [])
        while not got.wait(0.5):
            if hup.is_set():
                hup.clear()
                self.reload()
                applied = seen = audit.FileState.of(self.config) if self.config else None
            elif self.config is not None and self.settings.routing.watch_config:
                # Reload once the file changed and then stayed the same for one poll
                # (an editor may write it in steps).
                now_state = audit.FileState.of(self.config)
                if now_state != applied and now_state == seen and now_state is not None:
                    logger.info("configuration file changed; reloading")
                    self.reload()
                    applied = now_state
                seen = now_state
        self.stop()
        return 0
