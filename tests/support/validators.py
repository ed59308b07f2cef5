"""dciodvfy (dicom3tools) and PixelMed's validators, as used at IHE Connectathons.

Lines starting "Error" are failures; zero is the bar. A missing tool skips the
test locally and fails it when ``CI=true``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.peers import require

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# Without these three the JDK refuses PixelMed's XSLT (FACTS.md).
JAVA_LIMITS = [
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]
# A validator runs for seconds: the JIT's optimising tier and the parallel collector
# cost more CPU than they save. With these the same report (byte for byte) takes
# 3.9 instead of 10.2 s of CPU for a lung SEG and 8.6 instead of 19.1 s for its SR
# (OpenJDK 17, docs/benchmarks.md "Test suite"), on the 2 cores the suite shares.
JAVA_QUICK = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]


@dataclass(frozen=True)
class Report:
    text: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.startswith("Error")]


def _run(command: list[str]) -> Report:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return Report(done.stdout + done.stderr)


def dciodvfy(path: Path) -> Report:
    return _run([require("dciodvfy"), str(path)])


def pixelmed(validator: str, path: Path) -> Report:
    java = require("java")
    if not PIXELMED_JAR.exists():
        require("pixelmed.jar (Debian libpixelmed-java)")
    classname = f"com.pixelmed.validate.{validator}"
    return _run([java, *JAVA_QUICK, *JAVA_LIMITS, "-cp", str(PIXELMED_JAR), classname, str(path)])


def seg_reports(path: Path) -> list[Report]:
    """dciodvfy and PixelMed's DicomInstanceValidator on a SEG."""
    instance = pixelmed("DicomInstanceValidator", path)
    assert "IOD validation complete" in instance.text, instance.text
    return [dciodvfy(path), instance]


def sr_reports(path: Path) -> list[Report]:
    """dciodvfy and PixelMed's DicomSRValidator (TID 1500 template check) on an SR."""
    template = pixelmed("DicomSRValidator", path)
    assert "Found Root Template TID_1500" in template.text, template.text
    return [dciodvfy(path), template]


def errors_in_seg(path: Path) -> list[str]:
    return [line for report in seg_reports(path) for line in report.errors]


def errors_in_sr(path: Path) -> list[str]:
    return [line for report in sr_reports(path) for line in report.errors]
