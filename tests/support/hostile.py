"""Data sets that break the rules in one precise way, as Part 10 files for
``tests.support.raw_scu`` (which sends the data set bytes untouched).

Each builder returns the data set bytes; ``write_raw`` puts them behind a
File Meta Information header naming the presentation context to use.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support.ct_series import SENTINEL_PATIENT

DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def ct_dataset(
    sop_uid: str | None = None, rows: int = 16, study: str | None = None, value: int = 0
) -> Dataset:
    """A small valid CT Image Storage data set (with sentinel patient values)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study or "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = (study or "1.2.826.0.1.3680043.8.498.1") + ".1"
    ds.Modality = "CT"
    for keyword, text in SENTINEL_PATIENT.items():
        setattr(ds, keyword, text)
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.full((rows, rows), value, np.int16).tobytes()
    return ds


def encode(ds: Dataset) -> bytes:
    """Explicit VR little endian bytes of a data set (no File Meta)."""
    buf = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buf)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return buf.getvalue()


def write_raw(
    path: Path,
    data: bytes,
    sop_uid: str,
    syntax: str = ExplicitVRLittleEndian,
    sop_class: str = CTImageStorage,
) -> Path:
    """``data`` behind a preamble and a File Meta naming ``sop_class`` in ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    from pydicom.filebase import DicomFileLike

    write_file_meta_info(DicomFileLike(buf), meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + data)
    return path


def element(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the declared length."""
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n) + value


def nested_sequences(levels: int) -> bytes:
    """(0008,1140) ReferencedImageSequence nested ``levels`` deep, undefined lengths."""
    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    head = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    return (head + item_start) * levels + (item_end + seq_end) * levels


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def deflate_bomb(header: bytes, inflated_mb: int) -> bytes:
    """A deflated data set: ``header`` (no pixels) then OB Pixel Data of ``inflated_mb`` MiB of
    zeros, compressed a thousandfold."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mb * 2**20
    out = [c.compress(header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size))]
    zeros = b"\0" * 2**20
    for _ in range(inflated_mb):
        out.append(c.compress(zeros))
    out.append(c.flush())
    return b"".join(out)
