"""End-to-end latency and worker memory for one chest CT, against dcmtk in the same run.

    .venv/bin/python bench/e2e.py [--slices 300] [--size 512]

1. Ingest: the same files sent by dcmtk ``storescu`` to dcmtk ``storescp`` and
   to the node (both with TCP_NODELAY=1); prints instances/s and the ratio.
2. Latency: from the last instance acknowledged by the node to SEG and SR
   stored at the archive (a ``storescp``), minus the stable wait, split into
   route (dispatch and queue), load, infer, encode, write, send.
3. Memory: the worker process's peak RSS during the job (VmHWM reset before the
   job), its RSS before the job (TensorFlow and the model loaded), and both
   against the volume's float32 size.

A small warm-up study runs first so the measured job finds the model loaded,
as in a node that has been up for a while; the cold model load is printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ct_series import SeriesOptions, write_ct_series  # noqa: E402
from tests.support.peers import NodeProcess, Storescp, storescu  # noqa: E402
from tests.support.phantom import make_chest_phantom  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

STABLE = 2.0


def timed_store(port: int, paths: list[Path], called: str) -> float:
    start = time.perf_counter()
    result = storescu(port, paths, called=called)
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr}")
    return time.perf_counter() - start


def node_config(archive: Storescp) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["node"]["stable_after_seconds"] = STABLE
    config["storage"]["dir"] = "var"
    config["destinations"]["archive"].update(
        {"ae_title": archive.aet, "host": "127.0.0.1", "port": archive.port}
    )
    return config


def job_done(node: NodeProcess, n: int) -> dict | None:
    jobs = [j for j in node.status()["recent_jobs"] if j["state"] in ("done", "failed", "skipped")]
    return jobs[0] if len(jobs) >= n else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        run(Path(tmp), args.slices, args.size)


def run(tmp: Path, slices: int, size: int) -> None:
    spacing = (1.0, 0.7, 0.7)
    phantom = make_chest_phantom((slices, size, size), spacing, seed=5)
    series = write_ct_series(tmp / "ct", phantom.hu, SeriesOptions(spacing=spacing))
    warm = make_chest_phantom((40, 256, 256), (5.0, 1.4, 1.4), seed=6)
    warm_series = write_ct_series(tmp / "warm", warm.hu, SeriesOptions(spacing=(5.0, 1.4, 1.4)))

    peer = Storescp(tmp / "peer").start()
    archive = Storescp(tmp / "archive", aet="ARCHIVE").start()
    node = NodeProcess(tmp / "node", node_config(archive)).start()
    try:
        peer_s = timed_store(peer.port, series.paths, peer.aet)
        timed_store(node.port, warm_series.paths, "DICOM-NODE")
        warm_job = wait_for(lambda: job_done(node, 1), 300, "warm-up job", poll=0.2)
        wait_for(lambda: len(archive.files()) >= 2, 120, "warm-up results", poll=0.1)

        node_s = timed_store(node.port, series.paths, "DICOM-NODE")
        last_ack = time.time()
        wait_for(lambda: len(archive.files()) >= 4, 600, "SEG and SR at the archive", poll=0.05)
        stored = time.time()
        job = wait_for(lambda: job_done(node, 2), 60, "the job row", poll=0.2)
    finally:
        node.stop()
        archive.stop()
        peer.stop()
    report(slices, size, peer_s, node_s, last_ack, stored, job, warm_job)


def report(slices, size, peer_s, node_s, last_ack, stored, job, warm_job) -> None:
    n = slices
    t = job["timings"]
    total = stored - last_ack - STABLE
    compute = sum(t.get(k, 0.0) for k in ("load", "infer", "encode", "write"))
    send = stored - job["finished_at"]
    route = total - compute - send
    float32_mb = slices * size * size * 4 / 2**20
    peak, before = job["summary"]["peak_rss_mb"], job["summary"]["rss_before_mb"]
    print(f"series: {slices} slices of {size}x{size} (float32 volume {float32_mb:.0f} MB)")
    print(f"ingest  storescp {n / peer_s:7.1f} inst/s   node {n / node_s:7.1f} inst/s"
          f"   node/storescp {peer_s / node_s:.2f}")  # fmt: skip
    print(f"latency after last instance, minus {STABLE:.0f} s stable wait: {total:.2f} s")
    stages = {"route+queue": route, **{k: t[k] for k in ("load", "infer", "encode", "write")}}
    for name, value in {**stages, "send": send}.items():
        print(f"  {name:<12}{value:7.2f} s")
    print(f"cold model load (first job of a worker): {warm_job['timings'].get('model', 0):.2f} s")
    print(f"worker RSS before job {before:.0f} MB, peak during job {peak:.0f} MB")
    print(f"  peak / float32 volume         {peak / float32_mb:.2f}x")
    print(f"  (peak - before) / float32     {(peak - before) / float32_mb:.2f}x")


if __name__ == "__main__":
    main()
