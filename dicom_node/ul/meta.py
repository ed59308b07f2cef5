"""The File Meta Information (PS3.10 7.1) written before a received data set, so
a spool file is a DICOM file: preamble, ``DICM``, group 0002 in explicit VR
little endian. Values come from the C-STORE request and the presentation
context; the data set follows exactly as received."""

from __future__ import annotations

import struct

IMPLEMENTATION_CLASS_UID = "2.25.187914763260552918828758233299851978806"
IMPLEMENTATION_VERSION = "DICOM_NODE_01"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHL", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:64]
    return raw + b"\0" if len(raw) % 2 else raw


def _text(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    ae = source_ae.encode("ascii", "replace")[:16]
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _ui(sop_class)),
        _element(0x0003, b"UI", _ui(sop_instance)),
        _element(0x0010, b"UI", _ui(transfer_syntax)),
        _element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION.encode("ascii"))),
        _element(0x0016, b"AE", _text(ae)),
    ))  # fmt: skip
    group_length = _element(0x0000, b"UL", struct.pack("<L", len(body)))
    return bytes(128) + b"DICM" + group_length + body
