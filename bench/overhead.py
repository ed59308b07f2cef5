"""Node-side overhead per job (route, queue, collect, send) with 1 and with N queued studies.

    .venv/bin/python bench/overhead.py [--studies 20] [--tree PATH]

A real node in Redis mode (its own redis-server) with one real worker process and
a dcmtk ``storescp`` as the archive. Small chest CT studies (24 slices of
192x192) are stored at the node with ``storescu``, all at once, so that they
queue behind each other; then the script waits until every SEG and SR is at the
archive. The worker runs the jobs one after the other, so

    overhead per job = (makespan - sum of the worker's own time per job) / jobs

where the makespan runs from the first job's creation (the study became stable)
to the last result stored at the archive, and the worker's own time is the sum
of its stage timings (model, load, infer, encode, write). What is left is what
the node and the broker add: routing, enqueueing, the worker's pickup of the
next message, collecting the outcome, moving results, sending. A warm-up study
runs first, so no job pays the model's first load.

``--tree PATH`` runs the node and worker from another checkout (e.g. a worktree
of an older commit) to compare before and after a change, same script, same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ct_series import SeriesOptions, write_ct_series  # noqa: E402
from tests.support.peers import NodeProcess, Redis, Storescp, storescu  # noqa: E402
from tests.support.phantom import make_chest_phantom  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

STAGES = ("model", "load", "infer", "encode", "write")


def config(archive: Storescp, redis: Redis) -> dict[str, Any]:
    return {
        "node": {"stable_after_seconds": 1},
        "storage": {"dir": "var"},
        "broker": {"url": redis.url},
        "destinations": {
            "archive": {"ae_title": archive.aet, "host": "127.0.0.1", "port": archive.port}
        },
        "rules": [
            {"name": "lungs", "match": {"Modality": "CT"}, "pipeline": "lung-ct",
             "destinations": ["archive"]}
        ],
    }  # fmt: skip


def ended_jobs(node: NodeProcess) -> list[dict[str, Any]]:
    jobs = node.status(limit=500)["recent_jobs"]
    return [j for j in jobs if j["state"] in ("done", "failed", "skipped")]


def measure(tmp: Path, node: NodeProcess, archive: Storescp, hu: Any, n: int, tag: str) -> float:
    before_jobs = len(ended_jobs(node))
    before_files = len(archive.files())
    spacing = (5.0, 1.2, 1.2)
    paths = []
    for k in range(n):
        series = write_ct_series(tmp / f"{tag}-{k}", hu, SeriesOptions(spacing=spacing))
        paths += series.paths
    result = storescu(node.port, paths)
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr}")
    wait_for(lambda: len(archive.files()) >= before_files + 2 * n, 60 + 30 * n,
             "every SEG and SR at the archive", poll=0.05)  # fmt: skip
    stored = time.time()
    jobs = wait_for(lambda: (j := ended_jobs(node)) and len(j) >= before_jobs + n and j, 60,
                    "the job rows")[:n]  # fmt: skip
    if any(j["state"] != "done" for j in jobs):
        raise SystemExit(f"a job did not finish: {[(j['state'], j['reason']) for j in jobs]}")
    makespan = stored - min(j["created_at"] for j in jobs)
    worker = sum(sum(j["timings"].get(s, 0.0) for s in STAGES) for j in jobs)
    per_job = (makespan - worker) / n
    print(f"{n:3d} queued studies: makespan {makespan:6.2f} s, worker {worker:6.2f} s,"
          f" node overhead {per_job:5.2f} s per job")  # fmt: skip
    return per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to run the node from")
    args = parser.parse_args()
    print(f"node code from {args.tree.resolve()}")
    hu = make_chest_phantom((24, 192, 192), (5.0, 1.2, 1.2), body_scale=0.55, seed=3).hu
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        redis = Redis(tmp / "redis").start()
        archive = Storescp(tmp / "archive").start()
        node = NodeProcess(tmp / "node", config(archive, redis), tree=args.tree.resolve())
        worker = NodeProcess(tmp / "node", node.config, command="worker", port=node.port,
                             tree=args.tree.resolve())  # fmt: skip
        try:
            node.start()
            worker.start()
            measure(tmp, node, archive, hu, 1, "warm")
            measure(tmp, node, archive, hu, 1, "one")
            measure(tmp, node, archive, hu, args.studies, "many")
        except AssertionError:
            print(node.log()[-3000:], worker.log()[-3000:], sep="\n")
            raise
        finally:
            node.stop()
            worker.stop()
            archive.stop()
            redis.stop()


if __name__ == "__main__":
    main()
