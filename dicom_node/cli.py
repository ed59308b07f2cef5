"""``dicom-node`` command line: serve, worker, status, retry, check-config.

The console script is ``workers.entry:main``, which hands this module the
Celery backend; ``dicom_node`` itself never imports ``workers``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from dicom_node.settings import ConfigError, Settings, check_pipeline_names, load_settings

logger = logging.getLogger(__name__)

CONTEXT_KEYS = ("peer", "job", "study", "series", "destination")


class ContextFormatter(logging.Formatter):
    """Appends bound context (peer AE, job id, UIDs) as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if hasattr(record, k)]
        return f"{text} [{' '.join(extras)}]" if extras else text


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # The process id: a node with receive.processes > 1 logs from several processes.
    handler.setFormatter(
        ContextFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO/DEBUG, and C-FIND/MOVE identifiers
    # (patient names) unless told not to: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # highdicom narrates every module it copies; its warnings are what matter.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, root.level))
    _quiet_pynetdicom()
    _quiet_pydicom()


def _quiet_pydicom() -> None:
    """pydicom and highdicom quote the offending value when they meet a malformed one
    (``Invalid value for VR DA: '1970-01-01'``), as a warning or a log line: keep
    both out of the logs. Malformed demographics are reported by tag and keyword
    instead (``pipelines.sources``)."""
    from pydicom import config

    # pydicom's validation mode is a module global; set once here, in the entry point.
    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    for module in (r"pydicom(\..*)?", r"highdicom(\..*)?"):
        warnings.filterwarnings("ignore", module=module)


def _quiet_pynetdicom() -> None:
    # pynetdicom's options are module globals; set once here, in the entry point.
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicom-node",
        description="DICOM node: receive studies, run AI pipelines, send SEG/SR results.",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("--config", type=Path, help="config.yaml (default: embedded defaults)")
        return c

    cmd("serve", "run the node: SCP, routing, jobs, sender (and embedded workers)")
    w = cmd("worker", "run pipeline workers against the configured broker")
    w.add_argument(
        "--queues",
        help="comma-separated device classes to take jobs for, e.g. gpu,cpu (default: default)",
    )
    w.add_argument(
        "--lanes",
        help="comma-separated lanes to take, in order (default: urgent,normal,offpeak)",
    )
    w.add_argument(
        "--gpu", type=int, help="pin this worker to one GPU (CUDA_VISIBLE_DEVICES, memory growth)"
    )
    w.add_argument(
        "--concurrency", type=int, help="worker processes (default: workers.concurrency)"
    )
    s = cmd("status", "print studies, jobs and outbox state")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--limit", type=int, default=20, help="recent jobs to list")
    r = cmd("retry", "retry an ended job, or every dead-lettered send")
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", type=int, help="job id to run again")
    group.add_argument("--dead-letters", action="store_true", help="resend dead-lettered results")
    pg = cmd("purge", "delete the received images of an ended job's series now")
    pg.add_argument("--job", type=int, required=True, help="job id (failed, skipped or done)")
    s.add_argument("--study", help="why is this study waiting: each series, each rule")
    _rules_parser(sub)
    m = cmd("models", "list the loaded pipelines, or check a model folder")
    m.add_argument("action", choices=["list", "check"])
    m.add_argument("folder", nargs="?", type=Path, help="model folder (for check)")
    c = cmd("check-config", "validate a configuration file and exit")
    c.add_argument("--echo", action="store_true", help="also C-ECHO every destination")
    return p


def _worker_queues(queues: str | None, lanes: str | None) -> tuple[list[str], tuple[str, ...]]:
    from dicom_node.lanes import DEFAULT_DEVICE, LANES, check_device, check_lane

    devices = [check_device(d.strip()) for d in (queues or DEFAULT_DEVICE).split(",")]
    chosen = tuple(check_lane(x.strip()) for x in lanes.split(",")) if lanes else LANES
    return devices, chosen


def main(argv: list[str] | None = None, backend: Any = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config)
        if backend is not None and args.command in ("serve", "worker", "check-config", "rules"):
            check_pipeline_names(settings, backend.pipeline_names(settings))
    except ConfigError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    # Model folders are checked once where an operator reads the result: at the
    # node's start, by check-config, and by a worker of its own (an embedded worker
    # shares the node's log, which has them already). ``models list`` prints them.
    embedded_worker = args.command == "worker" and settings.broker.embedded
    if backend is not None and args.command in ("serve", "worker", "check-config"):
        if not embedded_worker:
            backend.check_models(settings)
    # Everything the node and its workers create (spool, database, results, broker
    # files) is for the node's user only, or its group when storage.group_access.
    os.umask(0o027 if settings.storage.group_access else 0o077)
    if args.command == "check-config":
        print(f"{args.config or 'embedded defaults'}: OK ({len(settings.rules)} rule(s))")
        return _echo_destinations(settings) if args.echo else 0
    if args.command == "rules":
        return _rules_test(settings, args)
    if args.command == "status" and args.study:
        return _explain(settings, args.study, args.json)
    if args.command == "status":
        return _status(settings, args.json, args.limit)
    if args.command == "purge":
        return _purge(settings, args.job)
    if args.command == "retry":
        return _retry(settings, args.job, args.dead_letters)
    if backend is None:
        print("dicom-node: run through the installed `dicom-node` command", file=sys.stderr)
        return 2
    if args.command == "models":
        if args.action == "check":
            if args.folder is None:
                print("dicom-node: models check needs a FOLDER", file=sys.stderr)
                return 2
            return int(backend.check_model(args.folder))
        return int(backend.list_models(settings))
    if args.command == "worker":
        try:
            devices, lanes = _worker_queues(args.queues, args.lanes)
        except ValueError as exc:
            print(f"dicom-node worker: {exc}", file=sys.stderr)
            return 2
        return int(backend.run_worker(settings, devices, args.concurrency, lanes, args.gpu) or 0)
    from dicom_node.node import Node
    from dicom_node.scu import configure_sending

    configure_sending()
    try:
        return Node(settings, backend, args.config).run_until_signal()
    except OSError as exc:  # port in use, storage not writable, ...
        print(f"dicom-node: cannot start: {exc}", file=sys.stderr)
        return 1


def _rules_parser(sub: Any) -> None:
    r = sub.add_parser("rules", help="try the routing rules without running anything")
    rsub = r.add_subparsers(dest="rules_command", required=True)
    text = "which rules match each series of DICOM files, folders or past studies, and why not"
    t = rsub.add_parser("test", help=text, description=text)
    t.add_argument("--config", type=Path, help="config.yaml (default: embedded defaults)")
    t.add_argument("paths", nargs="*", type=Path, help="DICOM files or folders (headers only)")
    t.add_argument("--recent", type=int, metavar="N", help="the last N studies in the index")
    t.add_argument("--json", action="store_true", help="one JSON object per series")
    t.add_argument("--at", type=datetime.fromisoformat, metavar="YYYY-MM-DDTHH:MM",
                   help="routing time for time_of_day/day_of_week (default: now)")  # fmt: skip
    t.add_argument("--calling-ae", default="", help="files: as if sent by this AE title")
    t.add_argument("--called-ae", default="", help="files: as if sent to this AE title")
    t.add_argument("--peer-address", default="", help="files: as if sent from this address")


def _rules_test(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node import dryrun, routing

    if bool(args.paths) == (args.recent is not None):
        print("dicom-node rules test: give DICOM files/folders or --recent N", file=sys.stderr)
        return 2
    if args.recent is not None:
        _, db, index, _, _ = _open(settings)
        keys = routing.needed_keys(settings.rules)
        studies, skipped = index.recent_studies(args.recent, keys), 0
        db.close()
    else:
        missing = [str(p) for p in args.paths if not p.exists()]
        if missing:
            print(f"dicom-node rules test: no such file or folder: {missing[0]}", file=sys.stderr)
            return 2
        context = {"calling_ae": args.calling_ae, "called_ae": args.called_ae,
                   "peer_address": args.peer_address}  # fmt: skip
        studies, skipped = dryrun.read_series(args.paths, context)
    n = dryrun.report(studies, settings, sys.stdout, args.json, args.at)
    skipped_text = f"; {skipped} file(s) skipped (not DICOM)" if skipped else ""
    print(f"{n} series in {len(studies)} study(ies){skipped_text}", file=sys.stderr)
    return 0


def _explain(settings: Settings, study_uid: str, as_json: bool) -> int:
    from dicom_node import waiting

    _, db, index, jobs, _ = _open(settings)
    try:
        report = waiting.explain(study_uid, settings, index, jobs, time.time())
    finally:
        db.close()
    if report is None:
        print(f"study {study_uid} is not in the index", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(waiting.as_text(report))
    return 0


def _echo_destinations(settings: Settings) -> int:
    from dicom_node import scu

    unreachable = 0
    for name, dest in sorted(settings.destinations.items()):
        ok = scu.echo(dest, settings.node.ae_title)
        unreachable += not ok
        where = f"{dest.ae_title}@{dest.host}:{dest.port}"
        print(f"destination {name} ({where}): {'C-ECHO OK' if ok else 'no answer'}")
    return 1 if unreachable else 0


def _open(settings: Settings) -> tuple[Any, Any, Any, Any, Any]:
    from dicom_node.index import Index
    from dicom_node.jobs import Jobs
    from dicom_node.outbox import Outbox
    from dicom_node.spool import Spool
    from dicom_node.state import open_database

    spool = Spool(settings.storage.dir)
    spool.create()
    db = open_database(settings.storage.database_target)
    return spool, db, Index(db), Jobs(db), Outbox(db)


def status_report(settings: Settings, limit: int) -> dict[str, Any]:
    """What ``status`` shows (``--json`` prints it as it is): counts, the ``limit``
    most recent jobs, and the results not yet stored."""
    _, db, index, jobs, outbox = _open(settings)
    try:
        return _report(settings, index, jobs, outbox, limit)
    finally:
        db.close()


def _report(settings: Settings, index: Any, jobs: Any, outbox: Any, limit: int) -> dict[str, Any]:
    return {
        "storage": str(settings.storage.dir),
        "index": index.counts(),
        "jobs": jobs.counts(),
        "outbox": outbox.counts(),
        "recent_jobs": [
            {
                "id": j.id,
                "state": j.state.value,
                "rule": j.rule,
                "pipeline": j.pipeline,
                "queue": j.queue,
                "lane": j.lane,
                "priority": j.priority,
                "study_uid": j.study_uid,
                "series_uid": j.series_uid,
                "ticket": j.ticket,
                "instances": len(j.inputs),
                "attempts": j.attempts,
                "reason": j.reason,
                "timings": j.timings,
                "summary": j.summary,
                "created_at": j.created_at,
                "enqueued_at": j.enqueued_at,
                "started_at": j.started_at,
                "finished_at": j.finished_at,
            }
            for j in jobs.recent(limit)
        ],
        "outbox_waiting": outbox.waiting(limit),
    }


def _status(settings: Settings, as_json: bool, limit: int) -> int:
    report = status_report(settings, limit)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"storage  {report['storage']}")
    print("index    " + ", ".join(f"{k} {v}" for k, v in report["index"].items()))
    print("jobs     " + (", ".join(f"{k} {v}" for k, v in report["jobs"].items()) or "none"))
    print("outbox   " + (", ".join(f"{k} {v}" for k, v in report["outbox"].items()) or "none"))
    for j in report["recent_jobs"]:
        reason = f"  {j['reason']}" if j["reason"] else _measured(j["summary"])
        print(f"  job {j['id']:>5} {j['state']:<8} {j['pipeline']:<12} {j['series_uid']}{reason}")
    for w in report["outbox_waiting"]:
        print(f"  result {w['path']} → {w['destination']}: {w['state']}, {w['attempts']} tries,"
              f" {w['last_error'] or 'not tried yet'}")  # fmt: skip
    return 0


def _measured(summary: dict[str, Any]) -> str:
    """What a job measured, e.g. "  right 2408 ml (LAA-950 0.8 %), left 1915 ml
    (LAA-950 0.7 %)" (lung-ct), "  Lesion 12.4 ml (mean 251.3, max diameter 31.0 mm)"
    (a manifest's segment), "  finding_0 0.8731" (a manifest's finding)."""
    parts = []
    for name, value in summary.items():
        if isinstance(value, dict) and "volume_ml" in value:
            parts.append(_segment_text(name, value))
        elif name.startswith("finding_") and isinstance(value, int | float):
            parts.append(f"{name} {value:g}")
    return "  " + ", ".join(parts) if parts else ""


def _segment_text(name: str, m: dict[str, Any]) -> str:
    if "emphysema_percent" in m:
        return f"{name} {m['volume_ml']:.0f} ml (LAA-950 {m['emphysema_percent']:.1f} %)"
    extra = []
    if "mean_intensity" in m:
        extra.append(f"mean {m['mean_intensity']:.1f}")
    if "max_diameter_mm" in m:
        extra.append(f"max diameter {m['max_diameter_mm']:.1f} mm")
    return f"{name} {m['volume_ml']:.1f} ml" + (f" ({', '.join(extra)})" if extra else "")


def _purge(settings: Settings, job_id: int) -> int:
    """State first, files second: only an ended job whose series no other job uses."""
    from functools import partial

    from dicom_node.epoch import ServerRestarted, deciding, epoch_for
    from dicom_node.index import Index
    from dicom_node.retention import purge_series
    from dicom_node.scp import reconcile_spool

    spool, db, index, jobs, _ = _open(settings)
    try:
        job = jobs.get(job_id)
        if job is None:
            print(f"job {job_id} does not exist", file=sys.stderr)
            return 1
        if not job.ended:
            print(f"job {job_id} is {job.state.value}; purge it once it has ended", file=sys.stderr)
            return 1
        if jobs.busy_on(job.series_uid):
            print(f"another job still uses series {job.series_uid}; not purged", file=sys.stderr)
            return 1
        # The series' files go by its index rows: first make sure the database
        # server lost none of them (``epoch``; as the leader does before it decides).
        epoch = epoch_for(db)
        refile = partial(reconcile_spool, spool, index, min_age=0.0, sweep=False,
                         max_inflated=int(settings.receive.max_inflated_mb * 2**20))  # fmt: skip
        try:
            epoch.check(refile)
            count = purge_series(Index(deciding(db, epoch)), spool, job.series_uid)
        except ServerRestarted:
            print("the database server restarted meanwhile; nothing was purged, try again",
                  file=sys.stderr)  # fmt: skip
            return 1
        jobs.note_purged(job_id)
        print(f"job {job_id}: {count} source image(s) of series {job.series_uid} purged")
        return 0
    finally:
        db.close()


def _retry(settings: Settings, job_id: int | None, dead_letters: bool) -> int:
    """State first, files second: the job moves back to queued on a new ticket (only
    from an ended state), and the node's dispatcher then makes its work folder."""
    _, db, _, jobs, outbox = _open(settings)
    try:
        if dead_letters:
            print(f"{outbox.retry_dead()} dead-lettered send(s) will be tried again")
            return 0
        assert job_id is not None
        job = jobs.get(job_id)
        if job is None:
            print(f"job {job_id} does not exist", file=sys.stderr)
            return 1
        if not jobs.retry(job_id):
            print(f"job {job_id} is {job.state.value}; only an ended job can be run again",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"job {job_id} queued again")
        return 0
    finally:
        db.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
