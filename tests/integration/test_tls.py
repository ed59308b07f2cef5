"""DICOM TLS on the SCP and in the sender, against dcmtk's TLS peers."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from dicom_node import scu
from dicom_node.settings import Destination, TlsSettings
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import DCMTK_ENV, NodeProcess, free_port, port_open, require
from tests.support.pki import make_pki
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def node(tmp_path_factory, pki, node_database):
    tls_port = free_port()
    proc = NodeProcess(
        tmp_path_factory.mktemp("tls-node"),
        {
            "node": {
                "tls": {
                    "port": tls_port,
                    "certificate": str(pki.server_cert),
                    "key": str(pki.server_key),
                    "ca_file": str(pki.ca),
                }
            },
            # Two receiving processes: the second shares both listening sockets.
            "receive": {"processes": 2},
            "storage": {"dir": "var"},
            "rules": [],
        },  # fmt: skip
    ).start()
    proc.tls_port = tls_port  # type: ignore[attr-defined]
    wait_for(lambda: port_open(tls_port), 30, "the TLS port to listen")
    incoming = proc.folder / "var" / "incoming"
    wait_for(lambda: len(list(incoming.glob("*.[0-9]*"))) == 2, 30, "both receiving processes")
    yield proc
    assert proc.stop() == 0, proc.log()


def dcmtk(tool: str, port: int, key, cert, ca, *files) -> subprocess.CompletedProcess[str]:
    cmd = [require(tool), "+tls", str(key), str(cert), "+cf", str(ca), "-aet", "TLSSCU",
           "-aec", "DICOM-NODE", "127.0.0.1", str(port), *map(str, files)]  # fmt: skip
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def test_echo_and_store_over_tls_with_a_trusted_client_certificate(node, pki, tmp_path):
    for _ in range(4):  # answered by both receiving processes in turn
        echo = dcmtk("echoscu", node.tls_port, pki.client_key, pki.client_cert, pki.ca)
        assert echo.returncode == 0, echo.stderr
    series = write_ct_series(tmp_path, np.zeros((3, 16, 16), np.int16), SeriesOptions())
    result = dcmtk("storescu", node.tls_port, pki.client_key, pki.client_cert, pki.ca,
                   *series.paths)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert node.status()["index"]["instances"] == 3


def test_a_client_certificate_no_trusted_ca_signed_is_refused(node, pki):
    result = dcmtk("echoscu", node.tls_port, pki.stranger_key, pki.stranger_cert, pki.ca)
    assert result.returncode != 0
    assert "TLS" in result.stderr or "Association Request Failed" in result.stderr
    assert dcmtk("echoscu", node.tls_port, pki.client_key, pki.client_cert, pki.ca).returncode == 0


def test_the_plain_port_runs_beside_the_tls_one(node):
    from tests.support.peers import echoscu

    assert echoscu(node.port).returncode == 0


def test_the_sender_speaks_tls_to_a_destination_and_checks_its_certificate(pki, tmp_path):
    port = free_port()
    archive = subprocess.Popen(
        [require("storescp"), "+tls", str(pki.server_key), str(pki.server_cert), "+cf",
         str(pki.ca), "-aet", "ARCHIVE", "-od", str(tmp_path), str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port), 30, "storescp +tls to listen")
        ours = TlsSettings(ca_file=pki.ca, certificate=pki.client_cert, key=pki.client_key)
        trusted = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=port, tls=ours)
        assert scu.echo(trusted, "DICOM-NODE")
        wrong_ca = TlsSettings(ca_file=pki.stranger_cert, certificate=pki.client_cert,
                               key=pki.client_key)  # fmt: skip
        untrusted = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=port, tls=wrong_ca)
        assert not scu.echo(untrusted, "DICOM-NODE")
    finally:
        archive.terminate()
        archive.wait()
