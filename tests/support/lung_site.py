"""A site shared by the end-to-end tests of one engine in one test process: Orthanc as
the PACS and archive, and a node on the shipped config.yaml with its embedded worker.

Starting a node and its worker's first job (a cold TensorFlow import and model load)
is most of an end-to-end test's own time; tests that neither stop, kill nor
reconfigure the node share one and look only at their own study: its job, its
results in Orthanc, the outbox counts it added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.peers import REPO, NodeProcess, Orthanc, stop_together

# Series described so go to lung-ct whatever they are (the end-to-end test of series
# the pipeline cannot use); no other test's series is described so.
UNUSABLE = "UNUSABLE"


def shipped_config(archive_aet: str, archive_port: int, **node: Any) -> dict[str, Any]:
    """The repository's config.yaml with only contract keys changed."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["node"].update({"stable_after_seconds": 2, **node})
    config["storage"]["dir"] = "var"
    config["destinations"]["archive"].update(
        {"ae_title": archive_aet, "host": "127.0.0.1", "port": archive_port}
    )
    return config


@dataclass
class LungSite:
    folder: Path
    archive: Orthanc
    node: NodeProcess

    @classmethod
    def start(cls, folder: Path) -> LungSite:
        """The node may receive from Orthanc (``node``), which never transcodes."""
        archive = Orthanc(folder / "orthanc")
        node = NodeProcess(folder / "node", {})
        modality = {"AET": "DICOM-NODE", "Host": "127.0.0.1", "Port": node.port,
                    "AllowTranscoding": False}  # fmt: skip
        archive.start(modalities={"node": modality})
        config = shipped_config(archive.aet, archive.dicom_port)
        config["rules"].append(
            {"name": "unusable-to-lung", "match": {"SeriesDescription": f"{UNUSABLE}.*"},
             "pipeline": "lung-ct", "destinations": ["archive"]}
        )  # fmt: skip
        node.config = config
        try:
            node.start()
        except BaseException:
            archive.stop()
            raise
        return cls(folder, archive, node)

    def jobs_of(self, study_uid: str, status: dict[str, Any]) -> list[dict[str, Any]]:
        """The study's jobs in ``status`` (a snapshot or the status command's output)."""
        return [j for j in status["recent_jobs"] if j.get("study_uid") == study_uid]

    def sent(self) -> int:
        """Results the node has sent so far (every test's)."""
        return int(self.node.snapshot()["outbox"].get("sent", 0))


@dataclass
class LungSites:
    """One site per engine, started when a test first asks for it, stopped at the end
    of the test process."""

    root: Path
    sites: dict[str, LungSite] = field(default_factory=dict)

    def get(self, engine: str) -> LungSite:
        if engine not in self.sites:
            self.sites[engine] = LungSite.start(self.root / engine)
        return self.sites[engine]

    def stop(self) -> dict[str, tuple[int, str]]:
        """Stop every site's node at once, then its archive; each node's exit code and log."""
        sites = list(self.sites.items())
        try:
            codes = stop_together(*(site.node for _, site in sites))
        finally:
            for _, site in sites:
                site.archive.stop()
        return {
            engine: (code, site.node.log())
            for (engine, site), code in zip(sites, codes, strict=True)
        }
