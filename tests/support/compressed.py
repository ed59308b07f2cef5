"""Re-encode DICOM files in other transfer syntaxes with the tools PACS vendors'
files are checked against: dcmtk (``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle``,
``dcmconv``), GDCM (``gdcmconv``) and, for HTJ2K, OpenJPH (``ojph_compress``).
Each syntax names its command and whether decoding must give back the source
pixels exactly."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

from tests.support.peers import require


@dataclass(frozen=True)
class Syntax:
    name: str
    uid: str
    command: tuple[str, ...]  # the input and output file names are appended
    lossless: bool


SYNTAXES = [
    Syntax("implicit-le", "1.2.840.10008.1.2", ("dcmconv", "+ti"), True),
    Syntax("explicit-be", "1.2.840.10008.1.2.2", ("dcmconv", "+tb"), True),
    Syntax("deflated", "1.2.840.10008.1.2.1.99", ("dcmconv", "+td"), True),
    Syntax("rle", "1.2.840.10008.1.2.5", ("dcmcrle",), True),
    Syntax("jpeg-extended-12bit", "1.2.840.10008.1.2.4.51", ("dcmcjpeg", "+ee"), False),
    Syntax("jpeg-lossless-p14", "1.2.840.10008.1.2.4.57", ("dcmcjpeg", "+el"), True),
    Syntax("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", ("dcmcjpeg", "+e1"), True),
    Syntax("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", ("dcmcjpls", "+el"), True),
    Syntax("jpeg-ls-near-lossless", "1.2.840.10008.1.2.4.81", ("dcmcjpls", "+en"), False),
    Syntax("j2k-lossless", "1.2.840.10008.1.2.4.90", ("gdcmconv", "--j2k"), True),
    Syntax(
        "j2k-lossy", "1.2.840.10008.1.2.4.91", ("gdcmconv", "--j2k", "--lossy", "-r", "10"), False
    ),  # fmt: skip
]
# JPEG baseline (8-bit) needs 8-bit images: made from an 8-bit copy of the source.
BASELINE = Syntax("jpeg-baseline-8bit", "1.2.840.10008.1.2.4.50", ("dcmcjpeg", "+eb"), False)


def convert(syntax: Syntax, source: Path, target: Path) -> Path:
    require(syntax.command[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*syntax.command, str(source), str(target)], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return target


# HTJ2K: neither dcmtk nor GDCM on Debian 12 encode it; OpenJPH's ``ojph_compress``
# (Debian openjph-tools) makes the codestream and pydicom wraps it.
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSY = "1.2.840.10008.1.2.4.203"


def htj2k_codestream(pixels: np.ndarray, bits_stored: int, lossless: bool = True) -> bytes:
    """One frame (Rows, Columns) of 16-bit samples as an HTJ2K codestream."""
    require("ojph_compress")
    signed = pixels.dtype.kind == "i"
    rows, cols = pixels.shape
    with tempfile.TemporaryDirectory() as folder:
        raw, out = Path(folder) / "frame.yuv", Path(folder) / "frame.j2c"
        pixels.astype("<i2" if signed else "<u2").tofile(raw)
        subprocess.run(
            ["ojph_compress", "-i", str(raw), "-o", str(out), "-dims", f"{{{cols},{rows}}}",
             "-num_comps", "1", "-signed", "true" if signed else "false",
             "-bit_depth", str(bits_stored), "-downsamp", "{1,1}",
             "-reversible", "true" if lossless else "false",
             *([] if lossless else ["-qstep", "0.001"])],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return out.read_bytes()


def to_htj2k(source: Path, target: Path, lossless: bool = True) -> Path:
    """``source`` (a single-frame image) re-encoded in HTJ2K, as an archive holding
    HTJ2K would send it."""
    ds = pydicom.dcmread(source)
    stream = htj2k_codestream(ds.pixel_array, int(ds.BitsStored), lossless)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS if lossless else HTJ2K_LOSSY
    if not lossless:
        ds.LossyImageCompression = "01"
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target
