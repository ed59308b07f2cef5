"""Routing rules: cost of header facts at receive time, of evaluating 200 rules per
series, and of ``dicom-node rules test --recent 10000``.

    .venv/bin/python bench/rules.py [--rules 200] [--studies 10000]

1. Receive time: extracting the header facts of one instance (``facts.instance_facts``
   on a decoded data set) and merging them into its series' row in the index
   (``Index.record``), against pydicom reading the same header from disk.
2. Evaluation: ``routing.match`` of one series against ``--rules`` rules (the shipped
   ones plus generated rules of every operator, written so that most conditions are
   evaluated before one fails), against reading the series' header from disk. An
   audit hook counts files opened during evaluation: it must be 0.
3. ``rules test --recent N`` over an index of N studies of 4 series each (chest CT,
   scout, dose SR, head CT; facts made by the node's own code from real CT headers),
   run as the real command, against the ``sqlite3`` shell reading the same rows.

Headers come from pydicom-data's ``CT_small.dcm`` (a real CT header).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from dicom_node import facts as header  # noqa: E402
from dicom_node.index import Index, InstanceRecord, SeriesSummary  # noqa: E402
from dicom_node.routing import match  # noqa: E402
from dicom_node.settings import Settings, load_settings  # noqa: E402
from dicom_node.state import open_database  # noqa: E402

CONTEXT = {"calling_ae": "CT_ROOM2", "called_ae": "DICOM-NODE", "peer_address": "10.20.1.7"}


def ct_file() -> Path:
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        sys.exit("pydicom-data is not installed (pip install pydicom-data)")
    return Path(str(path))


def instance(base: Dataset, i: int, **attrs: Any) -> Dataset:
    ds = base.copy()
    ds.SOPInstanceUID = f"{base.SeriesInstanceUID}.{i}"
    ds.InstanceNumber = i
    ds.ImagePositionPatient = [0, 0, -i * 1.25]
    ds.SliceLocation = -i * 1.25
    ds.AcquisitionTime = f"1200{i % 60:02d}"
    ds.WindowCenter = 40 + i % 7
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def series_facts(base: Dataset, n: int, **attrs: Any) -> header.SeriesFacts:
    facts: header.SeriesFacts = {}
    for i in range(n):
        header.merge(facts, header.instance_facts(instance(base, i, **attrs), CONTEXT), i == 0)
    return facts


def generated_rules(n: int) -> list[dict[str, Any]]:
    """Rules of every operator; each passes its first conditions, fails late."""
    rules = []
    for i in range(n):
        rules.append({
            "name": f"site-rule-{i}",
            "when": {"all": [
                {"attribute": "Modality", "one_of": ["CT", "PT"], "ignore_case": True},
                {"attribute": "calling_ae", "regex": "CT_ROOM[0-9]+"},
                {"not": {"attribute": "ImageType", "contains": ["LOCALIZER", "SCOUT"]}},
                {"attribute": "SliceThickness", "range": {"min": 0.1, "max": 10}},
                {"attribute": "StudyDate", "date_range": {"from": "1990-01-01"}},
                {"any": [
                    {"attribute": "BodyPartExamined", "equals": f"REGION{i}", "ignore_case": True},
                    {"attribute": "SeriesDescription", "regex": f".*protocol {i}.*",
                     "ignore_case": True},
                    {"attribute": "peer_address", "in_network": [f"192.168.{i % 250}.0/24"]},
                ]},
            ]},
            "pipeline": "lung-ct",
        })  # fmt: skip
    return rules


def settings_with(extra: list[dict[str, Any]]) -> Settings:
    shipped = load_settings(REPO / "config.yaml")
    raw = shipped.model_dump(mode="json", by_alias=True, exclude={"source"})
    raw["rules"] = raw["rules"] + extra
    return Settings.model_validate(raw)


def received(ds: Dataset) -> Dataset:
    """The data set as the SCP sees it: decoded lazily from the bytes received."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def bench_receive(base: Dataset, path: Path, tmp: Path, n: int = 300) -> dict[str, float]:
    datasets = [received(instance(base, i)) for i in range(n)]
    start = time.perf_counter()
    for d in datasets:
        header.instance_facts(d, CONTEXT)
    extract = (time.perf_counter() - start) / n
    found = [header.instance_facts(d, CONTEXT) for d in datasets]
    start = time.perf_counter()
    facts: header.SeriesFacts = {}
    for i, f in enumerate(found):
        header.merge(facts, f, i == 0)
    merge = (time.perf_counter() - start) / n
    db = open_database(tmp / "receive.sqlite")
    index = Index(db)
    datasets = [received(instance(base, i)) for i in range(n)]
    start = time.perf_counter()
    for i, d in enumerate(datasets):
        found = header.instance_facts(d, CONTEXT)
        index.record(InstanceRecord("1.2", "1.2.3", f"1.2.3.{i}", d.SOPClassUID, f"p{i}", 1,
                                    facts=found))  # fmt: skip
    with_facts = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i, d in enumerate(datasets):
        index.record(InstanceRecord("1.3", "1.3.4", f"1.3.4.{i}", d.SOPClassUID, f"q{i}", 1))
    without = (time.perf_counter() - start) / n
    db.close()
    start = time.perf_counter()
    for _ in range(n):
        dcmread(path, stop_before_pixels=True)
    read = (time.perf_counter() - start) / n
    return {"extract": extract, "merge": merge, "record_with": with_facts,
            "record_without": without, "read_header": read}  # fmt: skip


def bench_evaluate(base: Dataset, path: Path, settings: Settings, n: int = 2000) -> dict[str, Any]:
    facts = series_facts(base, 200, BodyPartExamined="CHEST", SeriesDescription="Thorax 1.0")
    series = SeriesSummary("1.2", "1.2.3", "", "", "", "", "", "", 200, facts)
    opened = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and measuring:
            opened.append(args[0])

    measuring = False
    sys.addaudithook(hook)
    when = datetime.now()
    match(series, [series], settings.rules, when)  # warm
    times, cpu = [], []
    for _ in range(5):
        measuring = True
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            plan = match(series, [series], settings.rules, when)
        times.append((time.perf_counter() - start) / n)
        cpu.append((time.process_time() - start_cpu) / n)
        measuring = False
    start = time.perf_counter()
    for _ in range(200):
        dcmread(path, stop_before_pixels=True)
    read = (time.perf_counter() - start) / 200
    return {"median": statistics.median(times), "best": min(times), "opened": len(opened),
            "cpu": statistics.median(cpu),
            "matched": [a.rule.name for a in plan.applied], "read_header": read,
            "facts_bytes": len(json.dumps(facts))}  # fmt: skip


def build_index(base: Dataset, tmp: Path, studies: int) -> Path:
    """N studies of 4 series, rows as ``Index.record`` writes them (facts made by the
    node's code), inserted in bulk so the setup takes seconds, not hours."""
    kinds = [
        series_facts(base, 200, BodyPartExamined="CHEST", SeriesDescription="Thorax 1.0"),
        series_facts(base, 2, BodyPartExamined="CHEST", ImageType=["ORIGINAL", "PRIMARY",
                                                                   "LOCALIZER"]),
        series_facts(base, 1, Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.67"),
        series_facts(base, 150, BodyPartExamined="HEAD", SeriesDescription="Head 5mm"),
    ]  # fmt: skip
    counts = [200, 2, 1, 150]
    texts = [json.dumps(f) for f in kinds]
    folder = tmp / "recent"
    (folder / "var").mkdir(parents=True)
    db = open_database(folder / "var" / "node.sqlite")
    now = time.time()
    with db.transaction() as conn:
        for s in range(studies):
            study = f"1.2.826.0.1.3680043.8.498.9.{s}"
            t = now - (studies - s)
            conn.execute("INSERT INTO studies (study_uid, revision, routed_revision,"
                         " first_received, last_received) VALUES (?, 1, 1, ?, ?)",
                         (study, t, t))  # fmt: skip
            for k, (text, count) in enumerate(zip(texts, counts, strict=True)):
                conn.execute("INSERT INTO series (series_uid, study_uid, instances,"
                             " last_received, first_received, facts) VALUES (?, ?, ?, ?, ?, ?)",
                             (f"{study}.{k}", study, count, t, t, text))  # fmt: skip
    db.close()
    return folder


def bench_recent(folder: Path, studies: int) -> dict[str, float]:
    config = folder / "config.yaml"
    shipped = (REPO / "config.yaml").read_text()
    config.write_text(shipped)
    command = [sys.executable, "-m", "workers", "rules", "test", "--config", str(config),
               "--recent", str(studies), "--json"]  # fmt: skip
    start = time.perf_counter()
    before = os.times()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    node = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    lines = result.stdout.splitlines()
    lungs = sum(1 for line in lines if '"lung-ct"' in line)
    start = time.perf_counter()
    subprocess.run(["sqlite3", str(folder / "var" / "node.sqlite"),
                    "SELECT study_uid, series_uid, facts FROM series"],
                   stdout=subprocess.DEVNULL, check=True)  # fmt: skip
    peer = time.perf_counter() - start
    return {"seconds": node, "cpu": cpu, "series": len(lines), "lungs": lungs, "sqlite3": peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--studies", type=int, default=10000)
    args = parser.parse_args()
    path = ct_file()
    base = dcmread(path)
    settings = settings_with(generated_rules(args.rules - 2))
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        r = bench_receive(base, path, Path(tmp))
        print("1. receive time, per instance")
        print(f"   header facts extracted         {r['extract'] * 1e3:7.3f} ms")
        print(f"   merged into the series' facts  {r['merge'] * 1e3:7.3f} ms")
        print(f"   index record with facts        {r['record_with'] * 1e3:7.3f} ms"
              f"  (without facts {r['record_without'] * 1e3:.3f} ms; both mostly the"
              " commit's fsync)")  # fmt: skip
        print(f"   peer: pydicom reads the header {r['read_header'] * 1e3:7.3f} ms")
        e = bench_evaluate(base, path, settings)
        print(f"2. evaluation of {len(settings.rules)} rules, per series"
              f" (facts {e['facts_bytes']} bytes)")  # fmt: skip
        print(f"   routing.match                  {e['median'] * 1e3:7.3f} ms median"
              f" of 5 ({e['best'] * 1e3:.3f} best, {e['cpu'] * 1e3:.3f} CPU);"
              f" files opened: {e['opened']}")  # fmt: skip
        print(f"   peer: pydicom reads the header {e['read_header'] * 1e3:7.3f} ms"
              f"  → evaluation / header read = {e['median'] / e['read_header']:.2f}")  # fmt: skip
        print(f"   matched: {', '.join(e['matched'])}")
        folder = build_index(base, Path(tmp), args.studies)
        c = bench_recent(folder, args.studies)
        print(f"3. rules test --recent {args.studies} ({c['series']} series, {c['lungs']}"
              " routed to lung-ct)")  # fmt: skip
        print(f"   dicom-node rules test --json   {c['seconds']:7.2f} s (the whole command;"
              f" {c['cpu']:.2f} s CPU)")  # fmt: skip
        print(f"   peer: sqlite3 reads the rows   {c['sqlite3']:7.2f} s"
              f"  → ratio {c['seconds'] / c['sqlite3']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
