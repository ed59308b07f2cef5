"""Who may open an association, and how many at once.

``admit`` is pure: from the settings and what the requestor says (calling and
called AE title, address) it returns None or the A-ASSOCIATE-RJ to send
(PS3.8 9.3.4: result, source, reason) with a reason to log.

``Slots`` counts open associations across every receiving process sharing the
port: each association holds an ``flock`` on one of N slot files per peer and
one of M node-wide slot files. The kernel releases the locks of a process that
dies, so a crash never leaks a slot.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from dicom_node.settings import NodeSettings, ReceiveSettings

# (result, source, reason) of A-ASSOCIATE-RJ
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # rejected-transient: try again later


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int
    why: str


def admit(
    node: NodeSettings, receive: ReceiveSettings, calling: str, called: str, address: str
) -> Rejection | None:
    """None when the association may proceed, else how to reject it."""
    calling, called = calling.strip(), called.strip()
    if node.require_called_aet and called != node.ae_title:
        return Rejection(*CALLED_AE_NOT_RECOGNISED, why="called AE title is not ours")
    if not node.allowed_calling_aets and not receive.peers:
        return None
    if calling in node.allowed_calling_aets:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    for peer in receive.peers:
        if peer.ae_title != calling:
            continue
        if peer.network is None:
            return None
        if ip is not None and ip in ipaddress.ip_network(peer.network, strict=False):
            return None
    known = any(p.ae_title == calling for p in receive.peers)
    why = "calling AE title not allowed from this address" if known else "calling AE title unknown"
    return Rejection(*CALLING_AE_NOT_RECOGNISED, why=why)


class Slot:
    """Held slot files; ``release`` is idempotent."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # closing drops the flock


class Slots:
    """Association slots shared by all processes using ``folder``."""

    def __init__(self, folder: Path, per_peer: int, total: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.per_peer = per_peer
        self.total = total

    def _take(self, prefix: str, count: int) -> int | None:
        for n in range(count):
            fd = os.open(self.folder / f"{prefix}.{n}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    def acquire(self, calling: str, address: str) -> Slot | None:
        """A slot for one more association of (calling AE, address), or None when
        that peer or the node is at its limit."""
        key = hashlib.sha1(f"{calling.strip()}\0{address}".encode()).hexdigest()[:16]
        peer = self._take(f"peer-{key}", self.per_peer)
        if peer is None:
            return None
        node = self._take("node", self.total)
        if node is None:
            os.close(peer)
            return None
        return Slot([peer, node])
