"""Ingest rate of the node against dcmtk ``storescp +B``, side by side in one run.

    .venv/bin/python bench/ingest.py [--instances 1000] [--processes 2] [--rss-push 10000]
        [--jpeg-ls] [--engine native|pynetdicom]

1. Makes ``--instances`` CT instances (512×512, 16-bit, explicit VR little endian,
   one series) in a temporary folder.
2. Sends them with dcmtk ``storescu`` (TCP_NODELAY=1 on both dcmtk ends) to
   ``storescp +B`` (bit-preserving, writes each file, no fsync) and to the node
   (shipped defaults, ``rules: []``, seal + fsync and index commit before every
   Success, ``receive.processes`` from ``--processes``): once over one
   association, once over four concurrent associations (four ``storescu`` with
   a quarter of the files each). Each push goes to a fresh node (empty spool
   and index) as each storescp push goes to an empty folder: every instance is
   new on both sides. Prints instances/s and node/storescp ratios, and the
   durable floor measured just before each node push (``durable_floor``: the
   median ms of the node's per-instance disk work, alone, on the node's disk;
   1000/floor is what one association could reach at best).
3. ``--jpeg-ls``: the same files compressed with ``dcmcjpls`` (lossless), sent
   to both as they are (stored as received, so no slower than uncompressed).
4. ``--rss-push N``: pushes N instances (the files sent again and again over four
   associations) and samples the RSS of the node and its receiving processes
   every 0.2 s; prints the first and the peak total (it must stay flat).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ct_series import SeriesOptions, make_ct_datasets  # noqa: E402
from tests.support.peers import DCMTK_ENV, NodeProcess, free_port, port_open  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402


def make_files(folder: Path, count: int) -> list[Path]:
    """``count`` 512×512 CT instances of one series (noise, so they do not compress away)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    hu = rng.integers(-1000, 1500, (1, 512, 512), dtype=np.int16)
    template = make_ct_datasets(hu, SeriesOptions()).datasets[0]
    from pydicom.uid import generate_uid

    paths = []
    for n in range(count):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = n + 1
        path = folder / f"ct{n:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def jpeg_ls(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        target = folder / path.name
        subprocess.run(["dcmcjpls", str(path), str(target)], check=True)
        out.append(target)
    return out


def push(
    port: int, called: str, paths: list[Path], associations: int, propose: tuple[str, ...] = ()
) -> float:
    """Seconds for ``associations`` concurrent storescu to send ``paths`` between them."""
    chunks = [paths[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", *propose, "-aet", f"BENCH{i}", "-aec", called, "127.0.0.1", str(port),
             *map(str, chunk)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for i, chunk in enumerate(chunks)
    ]  # fmt: skip
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return elapsed


def durable_floor(folder: Path, rounds: int = 20) -> float:
    """Median ms of what the node does on disk per instance, alone, in ``folder``
    (on the node's disk, just before its push): write 512 KiB into a file made
    empty beforehand (its folder fsynced then), fsync it, rename it into another
    folder, commit one row to SQLite (WAL, synchronous=NORMAL, as the receiving
    commit). No receiving, no parsing, no checksum: the floor the disk sets on
    one association right now."""
    import sqlite3
    import statistics

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d").mkdir(exist_ok=True)
    db = sqlite3.connect(folder / "floor.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    data = os.urandom(512 * 1024)
    for n in range(rounds):
        os.close(os.open(folder / f"{n}.tmp", os.O_WRONLY | os.O_CREAT, 0o600))
    dfd = os.open(folder, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    times = []
    for n in range(rounds):
        start = time.perf_counter()
        fd = os.open(folder / f"{n}.tmp", os.O_WRONLY)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(folder / f"{n}.tmp", folder / "d" / f"{n}.dcm")
        db.execute("INSERT INTO t VALUES (?)", (n,))
        times.append(time.perf_counter() - start)
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(times) * 1000


def node_tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            if "worker" in " ".join(p.cmdline()):
                continue  # the embedded Celery worker does not receive
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2,
                    help="receive.processes of the node (0: leave the key out)")  # fmt: skip
    ap.add_argument("--rss-push", type=int, default=0)
    ap.add_argument("--jpeg-ls", action="store_true")
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout whose node runs")
    ap.add_argument("--engine", choices=["native", "pynetdicom"], default="native",
                    help="receive.engine of the node (left out with --processes 0)")  # fmt: skip
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        paths = make_files(work / "ct", args.instances)
        sets: dict[str, tuple[list[Path], tuple[str, ...]]] = {"uncompressed": (paths, ())}
        if args.jpeg_ls:  # -xt: storescu proposes JPEG-LS lossless, so sends the files as they are
            sets["JPEG-LS lossless"] = (jpeg_ls(paths, work / "jls"), ("-xt",))
        (work / "storescp").mkdir()
        scp_port = free_port()
        scp = subprocess.Popen(
            # +B bit-preserving; +xa accepts JPEG-LS too (the uncompressed runs are unchanged)
            ["storescp", "+B", "+xa", "-aet", "STORESCP", "-od", str(work / "storescp"),
             str(scp_port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: port_open(scp_port), 30, "storescp to listen")
        config = {
            # --processes 0: no receive section (a checkout from before it existed)
            **(
                {"receive": {"processes": args.processes, "engine": args.engine}}
                if args.processes
                else {}
            ),  # fmt: skip
            "storage": {"dir": "var", "retention_hours": 0},
            "rules": [],
        }
        runs = iter(range(100))

        def fresh_node(old: NodeProcess | None) -> NodeProcess:
            """A node on an empty spool and index for every push, as storescp writes
            into an empty folder: every instance is new to both. The old one's files
            are removed only at the end: ext4 without a journal (this machine's disk)
            makes every new inode skip the ones deleted in the last minute, which
            would slow whichever push came next."""
            if old is not None:
                old.stop()
            fresh = NodeProcess(work / f"node{next(runs)}", dict(config), tree=args.tree).start()
            # Pushed only once it has settled: its embedded worker started (it imports
            # for seconds) and every receiving process listens.
            wait_for(lambda: " ready." in fresh.log(), 120, "the embedded worker")
            incoming = fresh.folder / "var" / "incoming"
            wait_for(lambda: len(list(incoming.glob("*.[0-9]*"))) >= max(1, args.processes), 60,
                     "the receiving processes")  # fmt: skip
            return fresh

        node: NodeProcess | None = None
        try:
            print(f"{args.instances} CT instances 512x512 16-bit; node receive.processes="
                  f"{args.processes}, engine {args.engine}; load average"
                  f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
            print(f"{'input':<18} {'assocs':>6} {'storescp/s':>11} {'node/s':>8} {'ratio':>6}"
                  f" {'floor ms':>8}")  # fmt: skip
            for name, (files, propose) in sets.items():
                for assocs in (1, 4):
                    ref = push(scp_port, "STORESCP", files, assocs, propose)
                    (work / "storescp").rename(work / f"storescp.{name}.{assocs}")
                    (work / "storescp").mkdir()  # kept till the end, as the nodes' files
                    node = fresh_node(node)
                    floor = durable_floor(node.folder / "var" / "floor")
                    got = push(node.port, "DICOM-NODE", files, assocs, propose)
                    rate_ref, rate = len(files) / ref, len(files) / got
                    print(f"{name:<18} {assocs:>6} {rate_ref:>11.0f} {rate:>8.0f}"
                          f" {rate / rate_ref:>6.2f} {floor:>8.2f}", flush=True)  # fmt: skip
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            if args.rss_push:
                node = fresh_node(node)
                assert node.proc is not None
                samples: list[int] = []
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        samples.append(node_tree_rss(node.proc.pid))  # type: ignore[union-attr]
                        done.wait(0.2)

                sampler = threading.Thread(target=sample)
                sampler.start()
                rounds = max(1, args.rss_push // len(paths))
                start = time.perf_counter()
                for _ in range(rounds):
                    push(node.port, "DICOM-NODE", paths, 4)
                elapsed = time.perf_counter() - start
                done.set()
                sampler.join()
                mb = [s / 2**20 for s in samples]
                tenth = max(1, len(mb) // 10)
                print(f"RSS over a {rounds * len(paths)}-instance push ({elapsed:.0f} s, 4 assocs):"
                      f" first 10% peak {max(mb[:tenth]):.0f} MB, overall peak {max(mb):.0f} MB,"
                      f" last {mb[-1]:.0f} MB (node + receiving processes)")  # fmt: skip
        finally:
            if node is not None and node.stop() != 0:
                print(node.log()[-3000:])
            scp.terminate()
            scp.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
