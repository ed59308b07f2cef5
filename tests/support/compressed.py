"""Re-encode DICOM files in other transfer syntaxes with the tools PACS vendors'
files are checked against: dcmtk (``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle``,
``dcmconv``) and GDCM (``gdcmconv``). Each syntax names its command and whether
decoding must give back the source pixels exactly."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

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
