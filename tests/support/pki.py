"""Certificates for TLS tests, made with the openssl command: a CA, a server and a
client certificate it signed, and a client certificate nobody trusts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import require


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # self-signed: no CA vouches for it
    stranger_key: Path


def _run(*args: str) -> None:
    subprocess.run([require("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    f = {n: folder / n for n in ("ca.key", "ca.crt", "stranger.key", "stranger.crt")}
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]),
         "-out", str(f["ca.crt"]), "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    for name in ("server", "client"):
        key, csr, crt = (folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={'localhost' if name == 'server' else 'test-client'}")  # fmt: skip
        _run("x509", "-req", "-in", str(csr), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
             "-CAcreateserial", "-out", str(crt), "-days", "2")  # fmt: skip
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["stranger.key"]),
         "-out", str(f["stranger.crt"]), "-days", "2", "-subj", "/CN=stranger")  # fmt: skip
    return Pki(
        ca=f["ca.crt"],
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        stranger_cert=f["stranger.crt"],
        stranger_key=f["stranger.key"],
    )
