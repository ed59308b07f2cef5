"""The node's PostgreSQL server stops in the middle of a push and comes back: on a
server of the test's own, since the machine's server is shared by every test."""

from __future__ import annotations

import subprocess

import numpy as np

from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import DCMTK_ENV, NodeProcess, echoscu, free_port, storescu
from tests.support.postgres import PrivateServer
from tests.support.wait import wait_for


def _count(node: NodeProcess) -> int:
    return int(node.query("SELECT COUNT(*) FROM instances")[0][0])


def test_a_database_restart_mid_push_loses_nothing_answered_and_the_node_recovers(tmp_path):
    series = write_ct_series(tmp_path / "ct", np.zeros((400, 64, 64), np.int16), SeriesOptions())
    server = PrivateServer(free_port()).start()
    proc = NodeProcess(tmp_path / "n", {"storage": {"dir": "var", "database": server.url},
                                        "rules": []})  # fmt: skip
    try:
        proc.start()
        push = subprocess.Popen(
            ["storescu", "-v", "-aec", "DICOM-NODE", "127.0.0.1", str(proc.port),
             *map(str, series.paths)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
        )  # fmt: skip
        wait_for(lambda: _count(proc) >= 30, 60, "part of the push to arrive")
        server.stop()
        # storescu halts at its first failure and releases while the server is down.
        out = push.communicate(timeout=120)[0]
        acked = out.count("Received Store Response (Success)")
        assert "Received Store Response (Refused: OutOfResources)" in out, out[-2000:]
        assert echoscu(proc.port).returncode == 0, "still serving without its database"
        server.start()
        wait_for(lambda: "association ended:" in proc.log(), 60,
                 "the ended association to be recorded once the server is back")  # fmt: skip
        spool = proc.folder / "var" / "spool" / series.study_uid / series.series_uid
        for sop in series.sop_uids[:acked]:
            assert (spool / f"{sop}.dcm").exists()
        assert _count(proc) >= acked
        assert storescu(proc.port, series.paths).returncode == 0  # the sender tries again
        assert _count(proc) == 400
        log = proc.log()
        assert "the node's database is unavailable" in log
        assert "Traceback" not in log, log
        assert "another node leads" not in log, "no other node: the database was away"
    finally:
        assert proc.stop() == 0, proc.log()
        server.destroy()
