"""The node's PostgreSQL server crashes while a series arrives and loses the index
rows of instances the node had answered Success (their commits did not wait for
its disk); the node keeps running. Its leader files them again from the spool
before it routes anything, and the series is processed once, on all of its
instances. On a server of the test's own: the machine's is shared by every test.

To lose commits for certain, the server's WAL writer is stopped (SIGSTOP) for
the push, so asynchronous commits stay in its WAL buffers until a synchronous
commit flushes them; the crash is an immediate shutdown, which PostgreSQL
documents as equivalent to a crash. The server is then looked at on a port the
node does not know before the node gets it back, to see what was lost."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pynetdicom import AE

from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import NodeProcess, Storescp, free_port, stop_together
from tests.support.phantom import make_chest_phantom
from tests.support.postgres import PrivateServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.one_engine("its node uses a PostgreSQL server of the test's own")

CT = "1.2.840.10008.5.1.4.1.1.2"
SIGQUIT_BIT = 1 << (signal.SIGQUIT - 1)


def pg_ctl(server: PrivateServer, *args: str) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, str(server.bin / "pg_ctl"), "-D", str(server.data), *args],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


def sql(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(statement)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def quit_pending(pid: int) -> bool:
    """SIGQUIT is pending for the (stopped) process."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("ShdPnd:", "SigPnd:"))]  # fmt: skip
    return any(mask & SIGQUIT_BIT for mask in masks)


def crash(server: PrivateServer, walwriter: int) -> None:
    """Immediate shutdown while the WAL writer is stopped: nothing it holds is written."""
    pg_ctl(server, "-m", "immediate", "-W", "stop")
    wait_for(lambda: quit_pending(walwriter), 30, "the stop to reach the WAL writer")
    os.kill(walwriter, signal.SIGCONT)  # it exits on SIGQUIT without writing
    wait_for(lambda: not (server.data / "postmaster.pid").exists(), 60, "the server to stop")


def store(assoc, paths: list[Path]) -> int:
    return sum(1 for p in paths if assoc.send_c_store(dcmread(p)).Status == 0)


def test_a_server_crash_loses_answered_commits_and_the_series_still_runs_once_on_all(tmp_path):
    phantom = make_chest_phantom((24, 128, 128), (5.0, 1.8, 1.8), body_scale=0.55, seed=13)
    series = write_ct_series(tmp_path / "ct", phantom.hu, SeriesOptions(spacing=phantom.spacing))
    half = len(series.paths) // 2
    server = PrivateServer(free_port())
    archive = Storescp(tmp_path / "archive")
    node = NodeProcess(tmp_path / "n", {
        "node": {"stable_after_seconds": 10},  # longer than the gap between the two halves
        "storage": {"dir": "var", "database": server.url},
        "destinations": {"archive": {"ae_title": archive.aet, "host": "127.0.0.1",
                                     "port": archive.port}},
        "rules": [{"name": "lungs", "match": {"Modality": "CT"}, "pipeline": "lung-ct",
                   "destinations": ["archive"]}],
    })  # fmt: skip
    walwriter = 0
    try:
        server.start()
        # Nothing else may write the WAL out meanwhile: no autovacuum, background writer
        # or timed checkpoint; and a long WAL writer delay.
        for setting in ("wal_writer_delay = '10s'", "autovacuum = off",
                        "bgwriter_lru_maxpages = 0", "checkpoint_timeout = '1d'"):  # fmt: skip
            sql(server.url, f"ALTER SYSTEM SET {setting}")
        sql(server.url, "SELECT pg_reload_conf()")
        archive.start()
        node.start()
        wait_for(lambda: "this node leads" in node.log(), 30, "the node to lead")
        [(walwriter,)] = sql(server.url, "SELECT pid FROM pg_stat_activity"
                                         " WHERE backend_type = 'walwriter'")  # fmt: skip
        os.kill(walwriter, signal.SIGSTOP)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CT)
        # The first half, released: the release's record is a synchronous commit,
        # which flushes the WAL with the half's asynchronous commits before it.
        first = ae.associate("127.0.0.1", node.port, ae_title="DICOM-NODE")
        assert store(first, series.paths[:half]) == half
        first.release()
        released = "SELECT COUNT(*) FROM series WHERE released_at IS NOT NULL"
        wait_for(lambda: sql(server.url, released)[0][0] == 1, 30, "the release's record")
        # The second half, answered Success, its association still open: then the crash.
        second = ae.associate("127.0.0.1", node.port, ae_title="DICOM-NODE")
        assert store(second, series.paths[half:]) == len(series.paths) - half
        crash(server, walwriter)
        walwriter = 0

        # What the server kept, seen on a port the node does not know.
        port = free_port()
        pg_ctl(server, "-o", f"-p {port} -k {server.folder} -c fsync=off",
               "-l", str(server.folder / "log"), "-w", "start")  # fmt: skip
        url = f"postgresql://postgres@127.0.0.1:{port}/node"
        kept = sql(url, "SELECT COUNT(*) FROM instances")[0][0]
        epoch = sql(url, "SELECT COUNT(*) FROM server_epoch")[0][0]
        pg_ctl(server, "-m", "fast", "-w", "stop")
        assert kept == half, "the first half was made durable, the second half lost"
        assert epoch == 0, "crash recovery emptied the unlogged epoch table"

        server.start()  # the node's port again
        second.release()
        wait_for(lambda: len(archive.files()) == 2, 240, "the SEG and SR at the archive", 0.5)
        status = node.wait_status(lambda s: s["jobs"] == {"done": 1}, 60, "one job, done")
        assert status["index"]["instances"] == len(series.paths)
        [job] = status["recent_jobs"]
        assert job["instances"] == len(series.paths), "the job ran on the whole series"
        results = {str(dcmread(p).Modality): dcmread(p) for p in archive.files()}
        seg = results["SEG"]
        referenced = {item.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence
                      for item in ref.ReferencedInstanceSequence}  # fmt: skip
        assert referenced == set(series.sop_uids)
        log = node.log()
        assert "lost its recent commits" in log
        assert f"filed {len(series.paths) - half} sealed instance(s) the index had lost" in log
        assert "Traceback" not in log, log
    finally:
        if walwriter:
            os.kill(walwriter, signal.SIGCONT)
        stop_together(node, archive)
        server.destroy()
