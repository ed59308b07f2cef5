"""Result datasets as the bytes of a DICOM file, without pydicom's cost per element.

pydicom's writer spends ~16 µs of CPU on every element it writes: a BINARY SEG
of 488 frames is ~4,900 nested data sets and ~11,700 elements (its per-frame
functional groups), 0.2 s per file. Here every top-level sequence is encoded by
a small Explicit VR Little Endian encoder for the element kinds result objects
are made of (numbers, ASCII strings and UIDs, sequences); any other element in
a sequence item (a date object, a person name, text that is not ASCII, an
over-long value) is encoded by pydicom's own ``write_data_element``. pydicom
then writes the file (preamble, file meta, top-level elements), taking each
encoded sequence as it is.

The bytes are those of ``Dataset.save_as(buffer, enforce_file_format=True)``
(``tests/unit/pipelines/test_dicomfile.py`` compares them for SEG and SR of
each pipeline). A dataset in another transfer syntax, or one whose items hold
an element pydicom would have to re-read or disambiguate first (a raw element,
an ambiguous VR), is written by pydicom alone.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, MutableSequence
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR

# Explicit VR: these VRs have two reserved bytes and a 32-bit length.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
NUMBERS = {"US": "H", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
STRINGS = frozenset({"AE", "AS", "CS", "UI", "UR", "DA", "DT", "TM"})  # ASCII, values as str
TEXTS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})  # in the data set's character set
NUMBER_STRINGS = frozenset({"DS", "IS"})
# Character sets in which an ASCII text is its ASCII bytes (as pydicom names them).
ASCII_SUPERSETS = frozenset(
    convert_encodings([term])[0]
    for term in (
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 192",
    )  # fmt: skip
) | {default_encoding}

SHORT_HEADER = struct.Struct("<HH2sH")
LONG_HEADER = struct.Struct("<HH2sHL")
ITEM = struct.Struct("<HHL")
UNDEFINED = 0xFFFFFFFF
ITEM_START = (0xFFFE, 0xE000)
ITEM_END = ITEM.pack(0xFFFE, 0xE00D, 0)
SEQUENCE_END = ITEM.pack(0xFFFE, 0xE0DD, 0)


class _ForPydicom(Exception):
    """This data set is written by pydicom alone."""


def file_bytes(ds: Dataset) -> memoryview:
    """``ds`` as the bytes of a DICOM file (preamble, file meta, data set), a view
    of the encoder's buffer: written to disk as it is, without another copy."""
    buffer = io.BytesIO()
    (with_encoded_sequences(ds) or ds).save_as(buffer, enforce_file_format=True)
    return buffer.getbuffer()


def with_encoded_sequences(ds: Dataset) -> Dataset | None:
    """A shallow copy of ``ds`` whose top-level sequences are raw elements holding
    their encoded items, marked as read in Explicit VR Little Endian so pydicom
    writes them as they are; None when pydicom must write ``ds`` alone."""
    try:
        return _encoded_copy(ds)
    except _ForPydicom:
        return None


def _encoded_copy(ds: Dataset) -> Dataset:
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        raise _ForPydicom
    charset = ds.get("SpecificCharacterSet")
    encodings = convert_encodings(charset) if charset else default_encoding
    copy = Dataset()
    for found in ds.elements():
        if found.VR in AMBIGUOUS_VR:
            found = correct_ambiguous_vr_element(found, ds, True, [ds])  # as pydicom does
        if not isinstance(found, DataElement) or found.VR in AMBIGUOUS_VR:
            raise _ForPydicom  # pydicom would decode or disambiguate it first
        elem: DataElement = found
        if elem.VR == "SQ" and not elem.is_empty:
            value = _items(elem.value, charset or default_encoding)
            length = UNDEFINED if elem.is_undefined_length else len(value)
            copy[elem.tag] = RawDataElement(elem.tag, "SQ", length, value, 0, False, True)
        else:
            copy[elem.tag] = elem
    copy.file_meta = meta
    if getattr(ds, "preamble", None) is not None:
        copy.preamble = ds.preamble
    copy.set_original_encoding(False, True, encodings)
    return copy


def _items(items: Iterable[Dataset], parent: str | MutableSequence[str]) -> bytes:
    """The encoded items of a sequence: each with its length, or delimited when it
    was read that way."""
    parts: list[bytes] = []
    for item in items:
        body = b"".join(_dataset(item, parent))
        if getattr(item, "is_undefined_length_sequence_item", False):
            parts += (ITEM.pack(*ITEM_START, UNDEFINED), body, ITEM_END)
        else:
            parts += (ITEM.pack(*ITEM_START, len(body)), body)
    return b"".join(parts)


def _dataset(ds: Dataset, parent: str | MutableSequence[str]) -> list[bytes]:
    """The encoded elements of ``ds`` in tag order (group lengths left out, as
    pydicom leaves them out); ``parent``: the enclosing character set."""
    charset = ds.get("SpecificCharacterSet", parent) if 0x00080005 in ds else parent
    encodings = convert_encodings(charset)
    ascii_text = len(encodings) == 1 and encodings[0] in ASCII_SUPERSETS
    parts: list[bytes] = []
    for elem in ds.elements():
        tag = elem.tag
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue
        if not isinstance(elem, DataElement) or elem.VR in AMBIGUOUS_VR:
            raise _ForPydicom  # pydicom would re-read or disambiguate it first
        vr = elem.VR
        if vr == "SQ":
            value = _items(elem.value or (), encodings)
        else:
            encoded = _value(vr, elem.value, ascii_text)
            if encoded is None or (len(encoded) > 0xFFFF and vr not in LONG_VRS):
                parts.append(_by_pydicom(elem, charset))
                continue
            value = encoded
        group, number, code = tag >> 16, tag & 0xFFFF, vr.encode("ascii")
        if vr == "SQ" and elem.is_undefined_length:
            parts += (LONG_HEADER.pack(group, number, code, 0, UNDEFINED), value, SEQUENCE_END)
        elif vr in LONG_VRS:
            parts += (LONG_HEADER.pack(group, number, code, 0, len(value)), value)
        else:
            parts += (SHORT_HEADER.pack(group, number, code, len(value)), value)
    return parts


def _value(vr: str, value: Any, ascii_text: bool) -> bytes | None:
    """The encoded value, padded to an even length; None: pydicom encodes it."""
    if value is None:
        return b""
    many = isinstance(value, (MultiValue, list, tuple))
    values = value if many else (value,)
    if vr in NUMBERS:
        if value == "":
            return b""
        if not all(isinstance(v, (int, float)) for v in values):
            return None
        return struct.pack(f"<{len(values)}{NUMBERS[vr]}", *values)
    if vr in STRINGS or (vr in TEXTS and ascii_text):
        if not all(isinstance(v, str) for v in values):
            return None  # dates and times as objects, bytes
        text = "\\".join(values)
        pad = "\0" if vr == "UI" else " "
    elif vr in NUMBER_STRINGS:
        text = "\\".join(
            v.original_string if hasattr(v, "original_string") else str(v) for v in values
        )
        pad = " "
    elif vr in ("OB", "OW") and type(value) is bytes:
        return value + b"\0" if len(value) % 2 else value
    else:
        return None
    if not text.isascii():
        return None
    if len(text) % 2:
        text += pad
    return text.encode("ascii")


def _by_pydicom(elem: DataElement, charset: str | MutableSequence[str]) -> bytes:
    """One element as pydicom's writer encodes it (tag, VR, length, value)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, elem, charset)  # type: ignore[arg-type]
    return buffer.getvalue()
