"""Real peers on loopback for tests and benchmarks: dcmtk, Orthanc, Redis, the node.

Each starts on ports picked by binding port 0 and stops by process id. A peer
binary that is missing skips the test on a developer's machine and fails it
when ``CI=true``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.support.wait import wait_for

if TYPE_CHECKING:
    from dicom_node.state import Database

REPO = Path(__file__).resolve().parents[2]

# Debian's dcmtk leaves Nagle's algorithm on: ~22 instances/s without this.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def die_with_the_tests() -> None:
    """``preexec_fn`` of every peer: SIGTERM when the test process dies (a killed or
    timed-out pytest must not leave nodes, workers or archives running)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (see README: make test installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def received_files(incoming: Path) -> list[Path]:
    """Data sets being received (or kept from a refused one) under a node's
    ``incoming`` folder: not its association slot files, not its empty blanks."""
    found = []
    for path in incoming.rglob("*"):
        try:
            if path.is_file() and "slots" not in path.parts and path.stat().st_size:
                found.append(path)
        except FileNotFoundError:  # received and moved meanwhile
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return _reap(proc, timeout)


def _reap(proc: subprocess.Popen[Any], timeout: float) -> int:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return int(proc.returncode)


def storescu(
    port: int,
    files: Sequence[Path],
    called: str = "DICOM-NODE",
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    require("storescu")
    cmd = [
        "storescu",
        "-aet",
        calling,
        "-aec",
        called,
        *extra,
        "127.0.0.1",
        str(port),
        *[str(f) for f in files],
    ]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=600)


def echoscu(
    port: int, called: str = "DICOM-NODE", calling: str = "ECHOSCU"
) -> subprocess.CompletedProcess[str]:
    require("echoscu")
    cmd = ["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def stop_together(*peers: _Process | NodeProcess) -> list[int]:
    """Stop peers at once (SIGTERM to all, then wait for each): a teardown of several
    nodes and workers takes as long as the slowest, not the sum. Exit codes in order."""
    running = [peer.proc for peer in peers if peer.proc is not None]
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [_reap(peer.proc, 120) if peer.proc is not None else 0 for peer in peers]


class _Process:
    proc: subprocess.Popen[Any] | None

    def stop(self) -> int:
        return stop_process(self.proc) if self.proc is not None else 0


@dataclass
class Orthanc(_Process):
    """A real Orthanc as PACS/archive, with a REST client."""

    folder: Path
    aet: str = "ORTHANC"
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, modalities: dict[str, list[Any]] | None = None) -> Orthanc:
        binary = require("Orthanc")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-archive",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities or {},
            "DicomCheckCalledAet": False,
            "HttpTimeout": 600,
            "DicomScuTimeout": 600,
            "Plugins": [],
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [binary, str(self.folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_the_tests,
        )
        wait_for(lambda: self._alive(), 60, "Orthanc to answer on HTTP")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: see {self.folder / 'orthanc.log'}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(req, timeout=600) as resp:
            data = resp.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.request("POST", "/instances", path.read_bytes()))

    def push(self, modality: str, resource_id: str) -> Any:
        body = json.dumps({"Resources": [resource_id], "Synchronous": True}).encode()
        return self.request("POST", f"/modalities/{modality}/store", body)

    def _result_series(self, study_uid: str) -> list[tuple[str, list[str]]]:
        """(modality, instance ids) of the study's SEG and SR series, in one request:
        waits poll this, and Orthanc shares the 2 cores with the node under test."""
        body = json.dumps(
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        ).encode()
        found = []
        for series in self.request("POST", "/tools/find", body):
            modality = series["MainDicomTags"].get("Modality")
            if modality in ("SEG", "SR"):
                found.append((str(modality), [str(i) for i in series["Instances"]]))
        return found

    def result_counts(self, study_uid: str) -> dict[str, int]:
        """How many SEG and SR instances the study holds, by modality."""
        counts: dict[str, int] = {}
        for modality, instances in self._result_series(study_uid):
            counts[modality] = counts.get(modality, 0) + len(instances)
        return counts

    def result_ids(self, study_uid: str) -> dict[str, str] | None:
        """An instance id by modality once the study holds both a SEG and an SR."""
        found = {modality: ids[0] for modality, ids in self._result_series(study_uid) if ids}
        return found if len(found) == 2 else None

    def file(self, instance_id: str) -> bytes:
        return bytes(self.request("GET", f"/instances/{instance_id}/file"))


@dataclass
class Storescp(_Process):
    """dcmtk storescp as a simple archive writing every instance to a folder."""

    folder: Path
    aet: str = "ARCHIVE"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Storescp:
        binary = require("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "-aet", self.aet, "-od", str(self.folder), "-uf", str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_the_tests,
        )
        wait_for(lambda: port_open(self.port), 30, "storescp to listen")
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@dataclass
class Redis(_Process):
    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        binary = require("redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_the_tests,
        )
        wait_for(lambda: port_open(self.port), 30, "redis-server to listen")
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# DICOM_NODE_TEST_DATABASE=postgresql puts every test node's tables in PostgreSQL
# (the same name as tests.support.postgres.TEST_DATABASE, which needs psycopg).
TEST_DATABASE = "DICOM_NODE_TEST_DATABASE"
_databases: dict[Path, str] = {}


@dataclass
class NodeProcess:
    """``dicom-node serve`` (or ``worker``) as a real process with its own log file."""

    folder: Path
    config: dict[str, Any]
    command: str = "serve"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    module: str = "workers"  # what `python -m` runs (tests.support.fault_node adds faults)
    log_name: str = ""
    tree: Path = REPO  # the checkout whose code runs (benchmarks compare two)
    args: list[str] = field(default_factory=list)  # after the command, e.g. --queues gpu

    @property
    def config_path(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.folder / (self.log_name or f"{self.command}.log")

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.setdefault("node", {})["port"] = self.port
        storage = self.config.setdefault("storage", {})
        if os.environ.get(TEST_DATABASE) == "postgresql" and "database" not in storage:
            # The suite's PostgreSQL run: one fresh database per node folder.
            from tests.support import postgres

            if self.folder not in _databases:
                _databases[self.folder] = postgres.fresh_database()
            storage["database"] = _databases[self.folder]
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, wait_listening: bool = True) -> NodeProcess:
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                self.command,
                *self.args,
                "--config",
                str(self.config_path),
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env={**os.environ, "PYTHONPATH": str(self.tree)},
            preexec_fn=die_with_the_tests,
        )
        if wait_listening and self.command == "serve":
            wait_for(self._listening, 60, "the node to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dicom-node exited {self.proc.returncode}:\n{self.log()}")
        return port_open(self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", self.module, *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,  # not the caller's folder: `-m` puts the cwd first on sys.path
            env={**os.environ, "PYTHONPATH": str(self.tree)},
            preexec_fn=die_with_the_tests,
        )

    def database(self) -> Database:
        """The node's tables, opened as the node opens them: its SQLite file, or its
        PostgreSQL database in the suite's PostgreSQL run. The caller closes it."""
        from dicom_node.settings import load_settings
        from dicom_node.state import open_database

        return open_database(load_settings(self.config_path).storage.database_target)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one statement (``?`` placeholders) on the node's tables."""
        db = self.database()
        try:
            return db.query(statement, params)
        finally:
            db.close()

    @property
    def database_file(self) -> Path | None:
        """The node's SQLite file; None when its tables are in PostgreSQL."""
        from dicom_node.settings import load_settings

        target = load_settings(self.config_path).storage.database_target
        return target if isinstance(target, Path) else None

    def status(self, limit: int = 20) -> dict[str, Any]:
        """``dicom-node status --json``: what an operator sees. Assert on this."""
        result = self.cli("status", "--json", "--limit", str(limit))
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def snapshot(self, limit: int = 20) -> dict[str, Any]:
        """The report ``status --json`` prints, made in this process by the same code:
        for waiting on the node. Each ``status()`` is a Python start-up (~1.5 s of CPU),
        too much to run every poll of a wait."""
        from dicom_node.cli import status_report
        from dicom_node.settings import load_settings

        report = status_report(load_settings(self.config_path), limit)
        return dict(json.loads(json.dumps(report)))

    def wait_status(
        self,
        check: Callable[[dict[str, Any]], object],
        timeout: float,
        message: str,
        limit: int = 20,
        poll: float = 0.2,
    ) -> dict[str, Any]:
        """Wait until ``check`` holds for the node's status (``snapshot``), then return
        ``status()``, the command's own output, which ``check`` must hold for too
        (use it for states that last)."""
        wait_for(lambda: check(self.snapshot(limit)), timeout, message, poll)
        status = self.status(limit)
        assert check(status), f"{message}: not in the status command's output: {status}"
        return status

    def stop(self, timeout: float = 120) -> int:
        return stop_process(self.proc, timeout) if self.proc is not None else 0
