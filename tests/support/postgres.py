"""A real PostgreSQL for tests: the machine's server, started when it is not running.

Each test gets a database of its own (``fresh_database``); all of them are
dropped when the session ends. ``DICOM_NODE_TEST_PG`` names the server (default:
this machine's, trust auth, user postgres).
"""

from __future__ import annotations

import itertools
import os
import subprocess
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
