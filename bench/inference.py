"""Inference throughput of the built-in models, and the time spent outside them.

    .venv/bin/python bench/inference.py [--runs 3] [--slices 300]

For the brain-t1 pipeline (deepbrain's graph through its manifest) on the real
T1 head MR of Debian's ITK examples (62 slices), and for the lung-ct pipeline
on a 512 x 512 chest CT phantom of ``--slices`` slices, in this process:

- first call: loading the model (checksum, import, graph) and the first run,
  which traces its function, printed apart;
- then ``--runs`` warm runs, each timed end to end: read the files and build
  the volume ("load"), pre- and post-processing around the model, the model
  call itself, encoding SEG + SR, writing them as the worker does (each file
  fsync'ed, then their folder once; automatic garbage collection paused for the
  run and the writes, one young collection after them), and sending them with
  the node's own C-STORE sender (``dicom_node.scu``, one association) to dcmtk
  ``storescp`` on loopback;
- slices/s of the model call alone and of the whole run, and the share of the
  run spent outside the model call (target: under 30 %);
- the CPU seconds of each stage (``time.process_time``, this process, all its
  threads), which a loaded machine inflates far less than wall seconds.

The peer measured in the same run is TensorFlow itself: the model call is timed
where the pipeline makes it, so "outside" is everything the node adds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom.config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicom_node.scu import configure_sending, connect, sop_class_of  # noqa: E402
from dicom_node.settings import Destination  # noqa: E402
from dicom_node.spool import write_atomic_batch  # noqa: E402
from pipelines.runner import encoded, run_series  # noqa: E402
from pipelines.uids import DerivedUids  # noqa: E402
from tests.support import brain_mr  # noqa: E402
from tests.support.ct_series import SeriesOptions, write_ct_series  # noqa: E402
from tests.support.peers import Storescp  # noqa: E402
from tests.support.phantom import make_chest_phantom  # noqa: E402
from workers.execute import collection_deferred  # noqa: E402
from workers.models import ModelCache  # noqa: E402

OUTSIDE = ("load", "pre/post", "encode", "write", "send")


class TimedModel:
    """The loaded model, with the time spent inside its calls added up."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self.cpu = 0.0  # CPU seconds of the whole process (TensorFlow's threads too)
        self.manifest = model.manifest

    def run(self, batch: Any) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return self.model.run(batch)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu += time.process_time() - cpu

    def __call__(self, **inputs: Any) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return self.model(**inputs)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu += time.process_time() - cpu


class CpuTimedPipeline:
    """The pipeline, with the CPU seconds of this process (all its threads) taken
    where ``run_series`` takes its wall-clock stages: "load" from the call until
    ``prepare`` returns, then "infer" and "encode"."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.spec
        self.cpu: dict[str, float] = {}
        self.started = 0.0

    def prepare(self, datasets: Any) -> Any:
        try:
            return self.pipeline.prepare(datasets)
        finally:
            self.cpu["load"] = time.process_time() - self.started

    def infer(self, model: Any, volume: Any) -> Any:
        started = time.process_time()
        try:
            return self.pipeline.infer(model, volume)
        finally:
            self.cpu["infer"] = time.process_time() - started

    def encode(self, volume: Any, prediction: Any, uids: Any) -> Any:
        started = time.process_time()
        try:
            return self.pipeline.encode(volume, prediction, uids)
        finally:
            self.cpu["encode"] = time.process_time() - started


def _run_and_write(
    timed: CpuTimedPipeline, model: TimedModel, paths: list[Path], uids: DerivedUids, out: Path
) -> tuple[dict[str, float], float, float, list[Path]]:
    """``run_series``, then the results written as the worker writes them (each file
    fsync'ed, one fsync of their folder). Returns the stage timings, the wall and CPU
    clocks when writing began, and the files."""
    result = run_series(timed, model, paths, uids)  # type: ignore[arg-type]
    written, cpu_written = time.perf_counter(), time.process_time()
    files = [out / f"result-{n}.dcm" for n in range(len(result.datasets))]
    write_atomic_batch([(f, encoded(ds)) for f, ds in zip(files, result.datasets, strict=True)])
    return result.timings, written, cpu_written, files


def one_run(
    pipeline: Any, model: TimedModel, paths: list[Path], out: Path, archive: Storescp
) -> dict[str, float]:
    model.seconds = model.cpu = 0.0
    started = time.perf_counter()
    uids = DerivedUids([p.stem for p in paths], pipeline.spec.name, pipeline.spec.version)
    timed = CpuTimedPipeline(pipeline)
    timed.started = time.process_time()
    # As the worker runs a job: automatic garbage collection paused, one young
    # collection once the results are written (counted in "write").
    with collection_deferred():
        timings, written, cpu_written, files = _run_and_write(timed, model, paths, uids, out)
    sent, cpu_sent = time.perf_counter(), time.process_time()
    destination = Destination(ae_title=archive.aet, host="127.0.0.1", port=archive.port)
    # as the node's sender sends them: one association, each file as it is
    connection = connect(destination, "DICOM-NODE", {sop_class_of(f) for f in files})
    try:
        results = [connection.store(f) for f in files]
    finally:
        connection.close()
    assert [r.status for r in results] == [0] * len(files), results
    done, cpu_done = time.perf_counter(), time.process_time()
    cpu = timed.cpu
    return {
        "load": timings["load"],
        "pre/post": timings["infer"] - model.seconds,
        "model": model.seconds,
        "encode": timings["encode"],
        "write": sent - written,
        "send": done - sent,
        "total": done - started,
        "cpu load": cpu["load"],
        "cpu pre/post": cpu["infer"] - model.cpu,
        "cpu model": model.cpu,
        "cpu encode": cpu["encode"],
        "cpu write": cpu_sent - cpu_written,
        "cpu send": cpu_done - cpu_sent,
    }


def bench(
    name: str, paths: list[Path], runs: int, slices: int, out: Path, archive: Storescp
) -> None:
    models = ModelCache()  # the worker's: loads once per process
    pipeline = models.catalog.get(name)
    started = time.perf_counter()
    model = TimedModel(models.get(pipeline))
    loaded = time.perf_counter() - started
    first = one_run(pipeline, model, paths, out, archive)
    warm = [one_run(pipeline, model, paths, out, archive) for _ in range(runs)]
    median = {key: statistics.median(r[key] for r in warm) for key in warm[0]}
    outside = (median["total"] - median["model"]) / median["total"]
    print(f"\n## {name}: {slices} slices, {runs} warm runs (median seconds)")
    print(f"first call: model load {loaded:.2f} s, first run {first['total']:.2f} s "
          f"(model call incl. tracing {first['model']:.2f} s)")  # fmt: skip
    print("| stage | seconds | CPU seconds |\n|---|---|---|")
    for key, value in median.items():
        if not key.startswith("cpu "):
            cpu = median.get(f"cpu {key}")
            print(f"| {key} | {value:.2f} | {'' if cpu is None else f'{cpu:.3f}'} |")
    outside_cpu = [sum(r[f"cpu {k}"] for k in OUTSIDE) for r in warm]
    print(f"outside the model, CPU seconds (median of the runs' sums): "
          f"{statistics.median(outside_cpu):.3f}")  # fmt: skip
    print(f"model slices/s: {slices / median['model']:.1f}; "
          f"end-to-end slices/s: {slices / median['total']:.1f}")  # fmt: skip
    print(f"outside the model: {100 * outside:.1f} % of the run (target < 30 %); "
          f"run / model call = {median['total'] / median['model']:.2f}")  # fmt: skip
    tracing = getattr(model.model, "tracing_count", None)
    if tracing is not None and name != "lung-ct":
        print(f"traced {tracing} time(s) over {runs + 1} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a failed send says why (pynetdicom logs it)
    # As the node's entry point (dicom_node.cli) sets them up in every process:
    # files sent as they are, and no value validation when reading headers.
    configure_sending()
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    started = time.perf_counter()
    import tensorflow  # noqa: F401  - its import is a cost of the first model of a process

    print(f"import tensorflow: {time.perf_counter() - started:.2f} s (once per worker process)")
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = Path(tmp)
        archive = Storescp(root / "archive").start()
        try:
            brain = brain_mr.write_brain_series(root / "brain")
            bench("brain-t1", brain.paths, args.runs, len(brain.paths), root, archive)
            phantom = make_chest_phantom((args.slices, 512, 512), (1.0, 0.7, 0.7), seed=3)
            ct = write_ct_series(root / "ct", phantom.hu, SeriesOptions(spacing=phantom.spacing))
            del phantom
            bench("lung-ct", ct.paths, args.runs, args.slices, root, archive)
        finally:
            archive.stop()


if __name__ == "__main__":
    main()
