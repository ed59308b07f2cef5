"""dciodvfy (dicom3tools) and PixelMed's validators, as used at IHE Connectathons.

Lines starting "Error" are failures; zero is the bar. A missing tool skips the
test locally and fails it when ``CI=true``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.peers import require

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# Without these three the JDK refuses PixelMed's XSLT (FACTS.md).
JAVA_LIMITS = [
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]


def _errors(command: list[str]) -> list[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def dciodvfy(path: Path) -> list[str]:
    return _errors([require("dciodvfy"), str(path)])


def pixelmed(validator: str, path: Path) -> list[str]:
    java = require("java")
    if not PIXELMED_JAR.exists():
        require("pixelmed.jar (Debian libpixelmed-java)")
    return _errors(
        [
            java,
            *JAVA_LIMITS,
            "-cp",
            str(PIXELMED_JAR),
            f"com.pixelmed.validate.{validator}",
            str(path),
        ]
    )


def errors_in_seg(path: Path) -> list[str]:
    return dciodvfy(path) + pixelmed("DicomInstanceValidator", path)


def errors_in_sr(path: Path) -> list[str]:
    return dciodvfy(path) + pixelmed("DicomSRValidator", path)
