"""The Storage and Verification SCP: receive, store durably, then answer.

An instance is answered Success (0x0000) only after its bytes are fsync'ed in
the spool and recorded in the index. Every failure becomes a DICOM status
with an ErrorComment; a handler never raises into pynetdicom:

    0xA700  out of resources: the spool's disk is (nearly) full, or writing failed
    0xA900  the data set does not match the C-STORE request (SOP Instance UID)
    0xC210  the data set cannot be parsed
    0xC211  a required UID is missing or unsafe (not digits and dots, > 64 chars)
    0x0122  the SOP class is not a storage SOP class this node accepts

Peers are checked at association time: the called AE title must be ours (when
``node.require_called_aet``) and the calling AE title must be listed in
``node.allowed_calling_aets`` (when that list is not empty); other
associations are rejected and logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.facts import InstanceFacts, instance_facts
from dicom_node.index import Index, InstanceRecord
from dicom_node.settings import NodeSettings
from dicom_node.spool import Spool, UnsafeUid, check_uid

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# Uncompressed transfer syntaxes (compressed ones come later; see README).
UNCOMPRESSED = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
]
assert set(UNCOMPRESSED) <= set(ALL_TRANSFER_SYNTAXES)
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()[:64]


class Receiver:
    """Stores C-STORE requests; all dependencies are handed in."""

    def __init__(
        self,
        spool: Spool,
        index: Index,
        min_free_bytes: int,
    ) -> None:
        self.spool = spool
        self.index = index
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self.counts: dict[int, dict[str, int]] = {}
        self.series_by_assoc: dict[int, set[str]] = {}  # for triggers on release

    def handle_store(self, event: Any) -> Dataset | int:
        try:
            status = self._store(event)
        except Exception:  # never raise into pynetdicom
            logger.exception("unexpected error while storing an instance")
            status = _status(0xA700, "internal error while storing; not stored")
        self._count(event, "stored" if status == 0 else "failed")
        return status

    def _store(self, event: Any) -> Dataset | int:
        request = event.request
        try:
            ds = event.dataset
            sop_class = str(ds.get("SOPClassUID", "") or request.AffectedSOPClassUID)
            uids = (
                check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID", "(0020,000D)"),
                check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID", "(0020,000E)"),
                check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID", "(0008,0018)"),
            )
            keys = {
                k: _text(ds, k)
                for k in (
                    "Modality",
                    "BodyPartExamined",
                    "SeriesDescription",
                    "ProtocolName",
                    "Manufacturer",
                )
            }
            facts = instance_facts(ds, _context(event))
        except UnsafeUid as exc:
            logger.warning("refused an instance: %s", exc, extra=_peer(event))
            return _status(0xC211, str(exc))
        except Exception as exc:
            logger.warning(
                "refused an unparseable data set: %s", type(exc).__name__, extra=_peer(event)
            )
            return _status(0xC210, "data set cannot be parsed")
        if sop_class not in STORAGE_SOP_CLASSES:
            return _status(0x0122, f"SOP class {sop_class[:40]} not supported")
        if uids[2] != str(request.AffectedSOPInstanceUID).strip("\0 "):
            return _status(0xA900, "(0008,0018) SOPInstanceUID differs from the request")
        if self.spool.free_bytes() < self.min_free_bytes:
            logger.error("spool disk is full; refusing instances (storage.min_free_mb)")
            return _status(0xA700, "out of resources: node storage is full")
        return self._write(event, sop_class, uids, keys, facts)

    def _write(
        self,
        event: Any,
        sop_class: str,
        uids: tuple[str, str, str],
        keys: dict[str, str],
        facts: InstanceFacts,
    ) -> Dataset | int:
        study, series, sop = uids
        try:
            data = event.encoded_dataset()
            rel = self.spool.store_instance(study, series, sop, data)
        except OSError as exc:
            logger.error("could not write an instance to the spool: %s", exc.strerror)
            return _status(0xA700, "out of resources: could not write to storage")
        record = InstanceRecord(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            sop_class_uid=sop_class,
            path=rel,
            size=len(data),
            modality=keys["Modality"],
            body_part=keys["BodyPartExamined"],
            description=keys["SeriesDescription"],
            protocol_name=keys["ProtocolName"],
            manufacturer=keys["Manufacturer"],
            facts=facts,
        )
        new, replaced = self.index.record(record)
        if replaced:
            self.spool.remove(replaced)
        logger.debug("stored %s (%s)", sop, "new" if new else "duplicate", extra=_peer(event))
        with self._lock:
            self.series_by_assoc.setdefault(id(event.assoc), set()).add(series)
        return 0x0000

    def _count(self, event: Any, key: str) -> None:
        with self._lock:
            counts = self.counts.setdefault(id(event.assoc), {"stored": 0, "failed": 0})
            counts[key] += 1

    def handle_echo(self, event: Any) -> int:
        return 0x0000

    def handle_accepted(self, event: Any) -> None:
        logger.info("association accepted", extra=_peer(event))

    def handle_rejected(self, event: Any) -> None:
        logger.warning("association rejected (unknown or wrong AE title)", extra=_peer(event))

    def handle_closed(self, event: Any) -> None:
        with self._lock:
            counts = self.counts.pop(id(event.assoc), None)
            series = self.series_by_assoc.pop(id(event.assoc), set())
        if series and event.event == evt.EVT_RELEASED:  # an abort completes nothing
            self.index.mark_released(sorted(series))
        if counts:
            logger.info(
                "association ended: %d stored, %d failed",
                counts["stored"],
                counts["failed"],
                extra=_peer(event),
            )


def _context(event: Any) -> dict[str, str]:
    """Receive-time facts rules may test: who sent it, to which AE title, from where."""
    try:
        assoc = event.assoc
        return {
            "calling_ae": str(assoc.requestor.ae_title).strip(),
            "called_ae": str(assoc.acceptor.ae_title).strip(),
            "peer_address": str(assoc.requestor.address),
        }
    except AttributeError:
        return {}


def _peer(event: Any) -> dict[str, str]:
    try:
        req = event.assoc.requestor
        return {"peer": f"{req.ae_title}@{req.address}:{req.port}"}
    except Exception:
        return {}


def start_server(settings: NodeSettings, receiver: Receiver) -> ThreadedAssociationServer:
    """Listen on ``node.host:node.port`` (port 0 picks a free port)."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = settings.require_called_aet
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.add_supported_context(VERIFICATION)
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, UNCOMPRESSED)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_C_ECHO, receiver.handle_echo),
        (evt.EVT_ACCEPTED, receiver.handle_accepted),
        (evt.EVT_REJECTED, receiver.handle_rejected),
        (evt.EVT_RELEASED, receiver.handle_closed),
        (evt.EVT_ABORTED, receiver.handle_closed),
    ]
    server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False always returns the server
    return server
