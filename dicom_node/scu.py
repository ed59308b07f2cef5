"""C-STORE of result files to a destination (the node as Storage SCU).

Only this module and ``scp`` touch pynetdicom. ``send`` opens one association
for a batch of files and reports, per file, whether the destination answered
Success (or a warning, which PS3.4 counts as stored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from dicom_node.settings import Destination

logger = logging.getLogger(__name__)

_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class SendError(Exception):
    """The destination could not be reached or refused the association (transient)."""


@dataclass(frozen=True)
class SendResult:
    path: Path
    stored: bool
    status: int | None
    detail: str = ""


def _is_stored(status: int) -> bool:
    # 0x0000 success; 0xB000, 0xB007, 0xB006 warnings: stored with coercion/adjustments.
    return status == 0x0000 or (status & 0xF000) == 0xB000


def send(
    destination: Destination,
    paths: Sequence[Path],
    calling_ae: str,
    timeout: float = 60.0,
) -> list[SendResult]:
    """Send ``paths`` to ``destination`` over one association."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 15.0)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, _TRANSFER_SYNTAXES)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise SendError(
            f"association to {destination.ae_title}@{destination.host}:{destination.port} {state}"
        )
    results = []
    try:
        for path, ds in zip(paths, datasets, strict=True):
            results.append(_store_one(assoc, path, ds))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _store_one(assoc: object, path: Path, ds: object) -> SendResult:
    try:
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    except (ValueError, RuntimeError) as exc:
        return SendResult(path, False, None, f"not sent: {exc}")
    if not status or "Status" not in status:
        return SendResult(path, False, None, "no response (association lost or timed out)")
    code = int(status.Status)
    detail = str(status.get("ErrorComment", "")) if code else ""
    return SendResult(path, _is_stored(code), code, detail)


def echo(destination: Destination, calling_ae: str, timeout: float = 15.0) -> bool:
    """C-ECHO the destination; True when it answered Success."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()
