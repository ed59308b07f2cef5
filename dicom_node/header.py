"""Read what the node needs from a received instance without decoding it.

The SCP receives each data set straight to a file (pynetdicom's chunked
receive: 128-byte preamble, ``DICM``, File Meta Information made from the
presentation context, then the data set exactly as the peer sent it).
``read_header`` parses that file's elements up to Pixel Data (the header
facts routing rules test need them all: ``dicom_node.facts``), takes the UIDs
and routing keys, then checks the rest of the structure cheaply (declared
lengths against the bytes present, the Pixel Data element's encoding against
the transfer syntax, every fragment present) without reading pixel values.
Pixels are never decoded.

Deflated data sets are inflated as a stream: only the first ``HEAD_BYTES`` are
kept for the header, the rest is counted and dropped, and inflating stops with
``BadInstance`` once ``max_inflated`` bytes have come out (a "zip bomb").

    BadInstance(status, comment)    the data set cannot be stored as it is; the
                                    status and comment go back to the peer. The
                                    comment names attributes by tag and keyword,
                                    never a value.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from dicom_node.facts import raw_text
from dicom_node.spool import UnsafeUid, check_uid

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE = frozenset({IMPLICIT_LE, "1.2.840.10008.1.2.1", DEFLATED, EXPLICIT_BE})
HEAD_BYTES = 8 * 1024 * 1024  # of a deflated data set, kept for the header
PIXEL_DATA = 0x7FE00010
PIXEL_GROUP = 0x7FE00000  # reading stops at (7FE0,xxxx): pixels are not parsed
UNDEFINED = 0xFFFFFFFF
ROUTING_KEYWORDS = {  # keyword: tag
    "Modality": 0x00080060,
    "BodyPartExamined": 0x00180015,
    "SeriesDescription": 0x0008103E,
    "ProtocolName": 0x00181030,
    "Manufacturer": 0x00080070,
}


class BadInstance(ValueError):
    """A received data set the node refuses; ``status`` is the DIMSE status to answer."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class InstanceHeader:
    """UIDs (checked safe for paths) and routing keys of one received instance."""

    sop_class_uid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    keys: dict[str, str]


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def meta_end(fp: BinaryIO) -> int:
    """Offset of the data set after a Part 10 preamble and File Meta Information."""
    fp.seek(128)
    head = fp.read(16)
    if len(head) < 16 or head[:4] != b"DICM" or head[4:8] != b"\x02\x00\x00\x00":
        raise BadInstance(0xC210, "no File Meta Information group length")
    (group_length,) = struct.unpack("<I", head[12:16])
    return 144 + group_length


def _inflated_head(fp: BinaryIO, max_inflated: int) -> bytes:
    """The first ``HEAD_BYTES`` of a deflated data set; counts the rest up to the limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    try:
        while chunk := fp.read(256 * 1024):
            while chunk:
                out = inflater.decompress(chunk, 1024 * 1024)
                chunk = inflater.unconsumed_tail
                total += len(out)
                if total > max_inflated:
                    raise BadInstance(
                        0xA700,
                        f"deflated data set inflates past {max_inflated // 2**20} MiB"
                        " (receive.max_inflated_mb)",
                    )
                if len(head) < HEAD_BYTES:
                    head += out[: HEAD_BYTES - len(head)]
            if inflater.eof:
                break
    except zlib.error:
        raise BadInstance(0xC210, "deflated data set cannot be inflated") from None
    if not inflater.eof:
        raise BadInstance(0xC210, "deflated data set is truncated")
    return bytes(head)


class _Walk:
    """``stop_when`` for pydicom's reader: checks each top-level element's declared
    length against the bytes present and stops at the pixels."""

    def __init__(self, fp: BinaryIO, size: int | None) -> None:
        self.fp = fp
        self.size = size

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag >> 16 == 0x0002:
            raise BadInstance(0xC210, f"{_tag(tag)} File Meta Information inside the data set")
        if tag >= PIXEL_GROUP:
            return True  # the pixels are checked by _skip_to_pixels
        if self.size is not None and length != UNDEFINED:
            if self.fp.tell() + length > self.size:
                raise BadInstance(0xC210, f"{_tag(tag)} declares {length} bytes past the end")
        return False


def _skip_to_pixels(fp: BinaryIO, little: bool, implicit: bool, size: int) -> int | None:
    """Walk top-level element headers from where the header reading stopped;
    returns the Pixel Data length (``UNDEFINED`` when encapsulated) or None."""
    endian = "<" if little else ">"
    for _ in range(100_000):
        start = fp.tell()
        head = fp.read(8)
        if len(head) == 0:
            return None
        if len(head) < 8:
            raise BadInstance(0xC210, "data set ends inside an element header")
        group, elem = struct.unpack(endian + "HH", head[:4])
        tag = group << 16 | elem
        if implicit:
            (length,) = struct.unpack(endian + "I", head[4:])
            value_at = start + 8
        elif head[4:6] in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN",
                           b"UR", b"UT", b"SV", b"UV"):  # fmt: skip
            more = fp.read(4)
            if len(more) < 4:
                raise BadInstance(0xC210, "data set ends inside an element header")
            (length,) = struct.unpack(endian + "I", more)
            value_at = start + 12
        else:
            (length,) = struct.unpack(endian + "H", head[6:8])
            value_at = start + 8
        if tag == PIXEL_DATA:
            if length != UNDEFINED and value_at + length > size:
                raise BadInstance(0xC210, "(7FE0,0010) PixelData is truncated")
            return int(length)
        if length == UNDEFINED:
            # A sequence (or UN) of undefined length before the pixels: too rare to walk
            # by hand; the pixel check is skipped for such data sets.
            return None
        if value_at + length > size:
            raise BadInstance(0xC210, f"{_tag(tag)} declares {length} bytes past the end")
        fp.seek(value_at + length)
    return None


def _check_fragments(fp: BinaryIO, size: int) -> None:
    """Encapsulated Pixel Data: items up to the sequence delimiter, all present."""
    for _ in range(10_000_000):
        head = fp.read(8)
        if len(head) < 8:
            raise BadInstance(0xC210, "(7FE0,0010) PixelData is truncated")
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return
        if (group, elem) != (0xFFFE, 0xE000) or fp.tell() + length > size:
            raise BadInstance(0xC210, "(7FE0,0010) PixelData fragments are malformed or truncated")
        fp.seek(fp.tell() + length)


def read_header(
    path: Path, transfer_syntax: str, max_inflated: int, fd: int | None = None
) -> tuple[InstanceHeader, Dataset]:
    """The header of a received file and its data set up to the pixels (values
    decoded lazily by pydicom); ``BadInstance`` when it cannot be stored.
    ``fd``: the file already open for reading (left open)."""
    if fd is None:
        with open(path, "rb", buffering=0) as file:
            return read_header(path, transfer_syntax, max_inflated, file.fileno())
    size = os.fstat(fd).st_size
    if size < 144:
        raise BadInstance(0xC210, "no File Meta Information group length")
    # Read through a mapping: pydicom asks a file for its position at every
    # element, which a buffered file answers with a system call (about a
    # hundred per CT header, each letting other threads take the interpreter).
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        implicit = transfer_syntax == IMPLICIT_LE
        little = transfer_syntax != EXPLICIT_BE
        return _read_mapped(cast(BinaryIO, mapped), size, transfer_syntax, implicit,
                            little, max_inflated)  # fmt: skip


def _read_mapped(
    raw: BinaryIO, size: int, transfer_syntax: str, implicit: bool, little: bool,
    max_inflated: int,
) -> tuple[InstanceHeader, Dataset]:  # fmt: skip
    start = meta_end(raw)
    raw.seek(start)
    fp: BinaryIO = raw
    if transfer_syntax == DEFLATED:
        fp = io.BytesIO(_inflated_head(raw, max_inflated))
        size_known: int | None = None
    else:
        size_known = size
    walk = _Walk(fp, size_known)
    try:
        ds = read_dataset(fp, implicit, little, stop_when=walk)
        header = _header(ds)
    except BadInstance:
        raise
    except UnsafeUid as exc:
        raise BadInstance(0xC211, str(exc)) from None
    except (ValueError, TypeError, KeyError, EOFError, OSError, struct.error,
            RecursionError, NotImplementedError, AttributeError) as exc:  # fmt: skip
        raise BadInstance(0xC210, f"data set cannot be parsed ({type(exc).__name__})") from None
    if size_known is not None:
        pixels = _skip_to_pixels(fp, little, implicit, size)
        encapsulated = transfer_syntax not in NATIVE
        if pixels is not None and (pixels == UNDEFINED) != encapsulated:
            raise BadInstance(
                0xC210,
                "(7FE0,0010) PixelData is "
                + ("native" if encapsulated else "encapsulated")
                + " but the transfer syntax says otherwise",
            )
        if pixels == UNDEFINED:
            _check_fragments(fp, size)
    return header, ds


def _key(ds: Any, keyword: str, tag: int) -> str:
    """A routing key's text: straight from the raw element when it is plain ASCII
    (as the facts take it, multiple values joined by ``\\``), else decoded by
    pydicom (its character set)."""
    raw = ds._dict.get(tag)
    if raw is None:
        return ""
    handled, text = raw_text(tag, raw)
    if not handled:
        value = ds.get(keyword)
        text = str(value if value is not None else "")
    return (text or "").strip()[:64]


def _uid(ds: Any, keyword: str, tag: str) -> str:
    """A UID as its bytes say: only NUL or space padding is dropped (pydicom would
    also drop a trailing newline or other white space)."""
    raw = ds.get_item(keyword)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes):
        value = value.rstrip(b"\0 ").decode("ascii", "replace")
    return check_uid(value, keyword, tag)


def _header(ds: Any) -> InstanceHeader:
    get = ds.get
    sop_class = get("SOPClassUID")
    if sop_class is None or not str(sop_class).strip("\0 "):
        raise BadInstance(0xC211, "(0008,0016) SOPClassUID is missing")
    return InstanceHeader(
        sop_class_uid=str(sop_class).strip("\0 "),
        study_uid=_uid(ds, "StudyInstanceUID", "(0020,000D)"),
        series_uid=_uid(ds, "SeriesInstanceUID", "(0020,000E)"),
        sop_uid=_uid(ds, "SOPInstanceUID", "(0008,0018)"),
        keys={k: _key(ds, k, tag) for k, tag in ROUTING_KEYWORDS.items()},
    )
