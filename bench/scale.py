"""Scale-out on this machine: worker processes, lanes, and SQLite versus PostgreSQL.

    .venv/bin/python bench/scale.py [--studies 20] [--part throughput,latency,database]

All parts run a real node in Redis mode (its own redis-server), real
``dicom-node worker`` processes and a dcmtk ``storescp`` as the archive, with
small chest CT studies (24 slices of 192x192) sent by ``storescu``.

- throughput: N studies queued at once, run by 1 worker process (TensorFlow with
  2 intra-op threads, ``workers.intra_op_threads``) and by 2 worker processes (1
  thread each), after warm-up studies that load every process's model; studies
  per minute from the first job's creation to the last result at the archive.
- latency: enqueue → start of a job (from the job table: the start is when the
  node saw the job running, or saw it ended if it ran between two looks, 0.5 s
  apart) for an urgent and a normal study on an idle worker, and for an urgent
  study sent behind a backlog of N normal ones.
- database: the node's tables in SQLite and in PostgreSQL (a fresh database on
  the machine's server): ingest rate of N×24 instances with no rules, with the
  CPU time per instance of the node's processes and of the server processes
  serving its database (which a shared machine's load does not inflate as
  much as it does the rate), and the node-side overhead per job with N queued
  studies (``bench/overhead.py``'s measure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from overhead import measure  # noqa: E402

from dicom_node.facts import InstanceFacts  # noqa: E402
from dicom_node.index import Index, InstanceRecord  # noqa: E402
from dicom_node.state import open_database  # noqa: E402
from tests.support import postgres  # noqa: E402
from tests.support.ct_series import SeriesOptions, write_ct_series  # noqa: E402
from tests.support.peers import DCMTK_ENV, NodeProcess, Redis, Storescp, storescu  # noqa: E402
from tests.support.phantom import make_chest_phantom  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

SPACING = (5.0, 1.2, 1.2)
ENGINES = ("sqlite", "postgresql")
ROUNDS = 6  # ingest pushes per engine and association count
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def config(archive: Storescp, redis: Redis, database: str | None = None) -> dict[str, Any]:
    def rule(name: str, description: str, lane: str) -> dict[str, Any]:
        return {"name": name, "match": {"Modality": "CT", "SeriesDescription": description},
                "run": [{"pipeline": "lung-ct", "lane": lane}],
                "destinations": ["archive"]}  # fmt: skip

    storage: dict[str, Any] = {"dir": "var"}
    if database is not None:
        storage["database"] = database
    return {
        "node": {"stable_after_seconds": 1},
        "storage": storage,
        "broker": {"url": redis.url},
        "destinations": {
            "archive": {"ae_title": archive.aet, "host": "127.0.0.1", "port": archive.port}
        },  # fmt: skip
        "rules": [rule("urgent", "URGENT.*", "urgent"), rule("normal", ".*", "normal")],
    }


class Site:
    def __init__(self, tmp: Path, database: str | None = None, tree: Path = REPO) -> None:
        self.tmp = tmp
        self.database = database
        self.redis = Redis(tmp / "redis").start()
        self.archive = Storescp(tmp / "archive").start()
        self.node = NodeProcess(tmp / "node", config(self.archive, self.redis, database),
                                tree=tree)  # fmt: skip
        self.workers: list[NodeProcess] = []
        self.hu = make_chest_phantom((24, 192, 192), SPACING, body_scale=0.55, seed=3).hu
        self.count = 0

    def start(self, workers: int, threads: int) -> Site:
        self.node.config["workers"] = {"intra_op_threads": threads, "inter_op_threads": 1}
        self.node.start()
        for n in range(workers):
            worker = NodeProcess(self.tmp / "node", self.node.config, command="worker",
                                 port=self.node.port, log_name=f"worker-{n}.log")  # fmt: skip
            self.workers.append(worker.start())
        return self

    def series(self, description: str) -> list[Path]:
        self.count += 1
        options = SeriesOptions(spacing=SPACING, series_description=description)
        return write_ct_series(self.tmp / f"s{self.count}", self.hu, options).paths

    def send(self, paths: list[Path]) -> None:
        result = storescu(self.node.port, paths)
        if result.returncode != 0:
            raise SystemExit(f"storescu failed: {result.stderr}")

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.node.status(limit=500)["recent_jobs"])

    def wait_done(self, n: int, results: bool = True) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            jobs = self.jobs()
            ended = [j for j in jobs if j["state"] in ("done", "failed", "skipped")]
            return jobs if len(ended) >= n else None

        jobs = wait_for(done, 120 + 30 * n, f"{n} jobs to end", poll=0.2)
        bad = [(j["state"], j["reason"]) for j in jobs if j["state"] in ("failed", "skipped")]
        if bad:
            raise SystemExit(f"jobs did not finish: {bad}")
        if results:
            files = 2 * n
            wait_for(lambda: len(self.archive.files()) >= files, 60, "the results", poll=0.05)
        return jobs

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the node's processes and, on PostgreSQL, by
        the server's processes serving its database (a load-proof cost measure)."""
        assert self.node.proc is not None
        node = psutil.Process(self.node.proc.pid)
        procs = [node, *node.children(recursive=True)]
        if self.database is not None:
            with psycopg.connect(postgres.SERVER, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s",
                    (self.database.rsplit("/", 1)[1],),
                ).fetchall()
            procs += [psutil.Process(pid) for (pid,) in rows if psutil.pid_exists(pid)]
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:  # a pooled connection closed meanwhile
                pass
        return total

    def stop(self) -> None:
        for proc in (*self.workers, self.node):
            proc.stop()
        self.archive.stop()
        self.redis.stop()


def throughput(studies: int) -> None:
    print(f"\n## {studies} queued studies, 1 vs 2 worker processes")
    for workers, threads in ((1, 2), (2, 1)):
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
            site = Site(Path(name)).start(workers, threads)
            try:
                warm = 2 * workers  # every worker process loads its model before the batch
                site.send([p for _ in range(warm) for p in site.series("warm-up")])
                site.wait_done(warm)
                paths = [p for _ in range(studies) for p in site.series("research")]
                site.send(paths)
                jobs = site.wait_done(studies + warm)
                stored = time.time()
                batch = [j for j in jobs if j["id"] > warm]
                makespan = stored - min(j["created_at"] for j in batch)
                rate = studies / makespan * 60
                print(f"{workers} worker process(es), {threads} TF intra-op thread(s) each:"
                      f" {rate:5.1f} studies/min (makespan {makespan:.1f} s)")  # fmt: skip
            finally:
                site.stop()


def latency(studies: int) -> None:
    print(f"\n## queue latency (enqueue → start), 1 worker process; backlog of {studies}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        site = Site(Path(name)).start(1, 2)
        try:
            site.send(site.series("warm-up"))
            site.wait_done(1)
            for label in ("URGENT idle", "normal idle"):
                last = max(j["id"] for j in site.jobs())
                site.send(site.series(label))

                def done(after: int = last) -> list[dict[str, Any]]:
                    return [j for j in site.jobs() if j["id"] > after and j["state"] == "done"]

                job = wait_for(done, 120, label)[0]
                print(f"{label:12s}: {job['started_at'] - job['enqueued_at']:5.2f} s")
            first = max(j["id"] for j in site.jobs())
            # One push: the backlog, then the urgent study last. Each study is routed
            # when it has been quiet for 1 s, so the urgent one is enqueued behind the
            # whole backlog, about a second after it.
            backlog = [p for _ in range(studies) for p in site.series("normal backlog")]
            site.send(backlog + site.series("URGENT behind backlog"))
            jobs = site.wait_done(first + studies + 1, results=False)
            [urgent] = [j for j in jobs if j["id"] > first and j["lane"] == "urgent"]
            normal = [j for j in jobs if j["id"] > first and j["lane"] == "normal"]
            waits = sorted(j["started_at"] - j["enqueued_at"] for j in normal)
            ahead = sum(j["started_at"] > urgent["started_at"] for j in normal)
            print(f"urgent behind backlog: {urgent['started_at'] - urgent['enqueued_at']:5.2f} s"
                  f" ({ahead} of {len(normal)} normal jobs started after it)")  # fmt: skip
            print(f"normal in the backlog: median {waits[len(waits) // 2]:5.2f} s,"
                  f" last {waits[-1]:5.2f} s")  # fmt: skip
        finally:
            site.stop()


def push(port: int, paths: list[Path], associations: int) -> float:
    """Seconds for ``associations`` concurrent ``storescu`` to send ``paths`` between them."""
    chunks = [paths[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", f"BENCH{i}", "-aec", "DICOM-NODE", "127.0.0.1", str(port),
             *map(str, chunk)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for i, chunk in enumerate(chunks)
    ]  # fmt: skip
    errors = [proc.communicate()[1] for proc in procs]
    elapsed = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return elapsed


def record_ms(targets: dict[str, str | Path], n: int = 600) -> dict[str, tuple[float, float]]:
    """Median and mean milliseconds per ``Index.record`` in this process, for each
    engine: one series, new instances, in blocks of 25 alternating between engines
    (the disk and the server are shared with whatever else runs)."""
    dbs = {engine: open_database(target) for engine, target in targets.items()}
    try:
        indexes = {engine: Index(db) for engine, db in dbs.items()}
        facts: InstanceFacts = {"00080060": ["CT"], "00180050": ["5"]}
        times: dict[str, list[float]] = {engine: [] for engine in dbs}

        def rec(series: str, i: int) -> InstanceRecord:
            uid = f"1.2.3.{series}"
            return InstanceRecord("1.2.3", uid, f"{uid}.{i}", CT_STORAGE, f"spool/{series}/{i}",
                                  1, "CT", facts=facts)  # fmt: skip

        for index in indexes.values():
            for i in range(20):
                index.record(rec("1", i))  # warm: connections, prepared statements
        for block in range(0, n, 25):
            for engine, index in indexes.items():
                for i in range(block, block + 25):
                    start = time.perf_counter()
                    index.record(rec("2", i))
                    times[engine].append((time.perf_counter() - start) * 1000)
        return {e: (statistics.median(t), statistics.fmean(t)) for e, t in times.items()}
    finally:
        for db in dbs.values():
            db.close()


def ingest(studies: int, before: Path | None = None) -> None:
    """Both nodes run side by side; their pushes alternate, so both see the same load.
    With ``before`` (another checkout), two more nodes run that tree's code, and
    every round pushes to all four in a rotating order."""
    print(f"\n## SQLite vs PostgreSQL: ingest of {studies}x24 instances (no rules),"
          f" 1 and 4 associations, both nodes up, {ROUNDS} rounds of pushes")  # fmt: skip
    print(f"load before: {os.getloadavg()[0]:.2f}")
    trees = {"": REPO} if before is None else {"": REPO, " before": before.resolve()}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        tmp = Path(name)
        sites = {
            engine + label: Site(tmp / (engine + label.strip()),
                                 postgres.fresh_database() if engine == "postgresql" else None,
                                 tree)
            for label, tree in trees.items() for engine in ENGINES
        }  # fmt: skip
        try:
            for site in sites.values():
                site.node.config["rules"] = []
                site.start(0, 2)
            rates: dict[tuple[str, int], list[float]] = {}
            cpu: dict[tuple[str, int], list[float]] = {}  # ms per instance
            names = list(sites)
            for round_ in range(ROUNDS):
                for associations in (1, 4):
                    shift = round_ % len(names)  # nobody always first
                    for key in names[shift:] + names[:shift]:
                        site = sites[key]
                        paths = [p for _ in range(studies) for p in site.series("ingest")]
                        used = site.cpu_seconds()
                        seconds = push(site.node.port, paths, associations)
                        used = site.cpu_seconds() - used
                        rates.setdefault((key, associations), []).append(len(paths) / seconds)
                        cpu.setdefault((key, associations), []).append(used / len(paths) * 1000)
            for associations in (1, 4):
                for label in trees:
                    report(rates, associations, f"sqlite{label}", f"postgresql{label}")
                if before is not None:
                    for engine in ENGINES:
                        report(rates, associations, f"{engine} before", engine)
                print(f"{associations} association(s), CPU ms per instance (node + its"
                      " database's server processes), median of the rounds: "
                      + ", ".join(f"{key} {statistics.median(cpu[(key, associations)]):.2f}"
                                  for key in names))  # fmt: skip
            print(f"load after pushes: {os.getloadavg()[0]:.2f}")
        finally:
            for site in sites.values():
                site.stop()
        ms = record_ms({"sqlite": tmp / "record.sqlite", "postgresql": postgres.fresh_database()})
        ratio = ms["postgresql"][0] / ms["sqlite"][0]
        print("Index.record in process, ms median/mean: "
              + ", ".join(f"{e} {ms[e][0]:.2f}/{ms[e][1]:.2f}" for e in ENGINES)
              + f" (PostgreSQL/SQLite medians: {ratio:.2f})")  # fmt: skip
    print(f"load after: {os.getloadavg()[0]:.2f}")
    postgres.drop_all()


def report(rates: dict[tuple[str, int], list[float]], associations: int, a: str, b: str) -> None:
    """Medians of ``a`` and ``b``, and the median of ``b``/``a`` per round."""
    first, second = rates[(a, associations)], rates[(b, associations)]
    ratios = sorted(y / x for x, y in zip(first, second, strict=True))
    print(f"{associations} association(s): median {a} {statistics.median(first):6.1f}/s,"
          f" {b} {statistics.median(second):6.1f}/s; {b} / {a} per round:"
          f" median {statistics.median(ratios):.2f}"
          f" (all: {' '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


def database(studies: int) -> None:
    ingest(studies)
    print("\n## SQLite vs PostgreSQL: node overhead per job")
    for engine in ENGINES:
        url = postgres.fresh_database() if engine == "postgresql" else None
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
            tmp = Path(name)
            site = Site(tmp, url).start(1, 2)
            try:
                measure(tmp, site.node, site.archive, site.hu, 1, "warm")
                per_job = measure(tmp, site.node, site.archive, site.hu, studies, "many")
                print(f"{engine:10s}: node overhead {per_job:5.2f} s per job")
            finally:
                site.stop()
    postgres.drop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--part", default="throughput,latency,database")
    parser.add_argument("--before", type=Path, help="ingest: also run this checkout's code")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores")
    parts = {"throughput": throughput, "latency": latency, "database": database,
             "ingest": partial(ingest, before=args.before)}  # fmt: skip
    for part in args.part.split(","):
        parts[part](args.studies)


if __name__ == "__main__":
    main()
