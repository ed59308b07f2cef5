"""A real PostgreSQL for tests: the machine's server, started when it is not running.

Each test gets a database of its own (``fresh_database``); all of them are
dropped when the session ends. ``DICOM_NODE_TEST_PG`` names the server (default:
this machine's, trust auth, user postgres).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from dicom_node.postgres import create_database, drop_database
from tests.support.wait import wait_for

# DICOM_NODE_TEST_DATABASE=postgresql puts every test node's tables in PostgreSQL.
TEST_DATABASE = "DICOM_NODE_TEST_DATABASE"
SERVER = os.environ.get("DICOM_NODE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_made: list[str] = []
_numbers = itertools.count(1)


def _answers() -> bool:
    try:
        with psycopg.connect(SERVER, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def ensure_server() -> str:
    """The server's URL; starts Debian's cluster if it is installed and down."""
    if _answers():
        return SERVER
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if not versions:
        raise AssertionError("PostgreSQL is not installed (scripts/install.sh installs it)")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
        check=False,
        capture_output=True,
    )
    wait_for(_answers, 60, "PostgreSQL to answer")
    return SERVER


def fresh_database() -> str:
    """A new, empty database's URL."""
    server = ensure_server()
    name = f"dicom_node_test_{os.getpid()}_{next(_numbers)}"
    drop_database(server, name)
    create_database(server, name)
    _made.append(name)
    return server.rsplit("/", 1)[0] + "/" + name


def suite_database(folder: Path) -> str | Path:
    """Where a test keeps a node's tables: ``node.sqlite`` in ``folder``, or a fresh
    PostgreSQL database in the suite's PostgreSQL run (``DICOM_NODE_TEST_DATABASE``)."""
    if os.environ.get(TEST_DATABASE) == "postgresql":
        return fresh_database()
    return folder / "node.sqlite"


def drop_all() -> None:
    while _made:
        drop_database(SERVER, _made.pop())


class PrivateServer:
    """A PostgreSQL server of the test's own (``initdb`` in a temporary folder, its
    own port), for faults that stop the server: the machine's server is shared by
    every test. Runs as the ``postgres`` user when the tests run as root."""

    def __init__(self, port: int) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not versions:
            raise AssertionError("PostgreSQL is not installed (scripts/install.sh installs it)")
        self.bin = versions[-1].parent
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
        self.data = self.folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/node"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> PrivateServer:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                      "-U", "postgres", "--no-sync")  # fmt: skip
        options = f"-p {self.port} -k {self.folder} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "log"), "-w", "start")  # fmt: skip
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'node'").fetchone():
                conn.execute("CREATE DATABASE node")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)
