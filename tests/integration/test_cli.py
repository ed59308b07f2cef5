"""The command line as an operator meets it: config errors, status, retry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.peers import NodeProcess

REPO = Path(__file__).resolve().parents[2]


def dicom_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_serve_refuses_a_bad_config_naming_the_key_and_line(tmp_path):
    (tmp_path / "config.yaml").write_text("node:\n  port: 11112\n  ae_titel: X\n")
    result = dicom_node("serve", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "config.yaml:3: node.ae_titel: Extra inputs are not permitted" in result.stderr


def test_unknown_pipeline_in_a_rule_is_a_config_error_naming_its_line_and_rule(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("rules:\n  - name: r\n    match: {Modality: CT}\n    pipeline: liver-mr\n")
    result = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    expected = (f"{config.resolve()}:4: rules.0.pipeline: rule 'r' names unknown pipeline"
                " 'liver-mr' (known: brain-t1, lung-ct)")  # fmt: skip
    assert expected in result.stderr
    config.write_text(
        "rules:\n"
        "  - name: both\n"
        "    match: {Modality: CT}\n"
        "    pipeline: lung-ct\n"
        "    run:\n"
        "      - {pipeline: brain-t1}\n"
        "      - {pipeline: bone-fidner}\n"
    )
    result = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert (f"{config.resolve()}:7: rules.0.run.1.pipeline: rule 'both' names unknown pipeline"
            " 'bone-fidner'") in result.stderr  # fmt: skip


def test_shipped_config_checks_clean_when_copied_elsewhere(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    result = dicom_node("check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK (2 rule(s))" in result.stdout


def test_status_of_a_new_node_and_retry_of_an_unknown_job(tmp_path):
    node = NodeProcess(tmp_path, {"storage": {"dir": "data"}, "rules": []})
    node.write_config()  # the suite's PostgreSQL run adds its database
    status = node.cli("status")
    assert status.returncode == 0 and "instances 0" in status.stdout
    assert str(tmp_path / "data") in status.stdout
    retry = node.cli("retry", "--job", "42")
    assert retry.returncode == 1 and "job 42 does not exist" in retry.stderr


def test_serve_on_a_port_in_use_says_so_and_leaves_no_worker_behind(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "config.yaml").write_text(
            f"node: {{host: 127.0.0.1, port: {port}}}\nstorage: {{dir: var}}\nrules: []\n"
        )
        result = dicom_node("serve", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "in use" in result.stderr
    assert not (tmp_path / "var" / "broker" / "worker.pid").exists()


def test_check_config_echo_reports_each_destination(tmp_path):
    from tests.support.peers import Storescp, free_port

    archive = Storescp(tmp_path / "archive").start()
    try:
        (tmp_path / "config.yaml").write_text(
            "destinations:\n"
            f"  archive: {{ae_title: {archive.aet}, host: 127.0.0.1, port: {archive.port}}}\n"
            f"  down: {{ae_title: NOBODY, host: 127.0.0.1, port: {free_port()}}}\n"
        )
        result = dicom_node("check-config", "--config", "config.yaml", "--echo", cwd=tmp_path)
    finally:
        archive.stop()
    assert result.returncode == 1
    assert f"destination archive (ARCHIVE@127.0.0.1:{archive.port}): C-ECHO OK" in result.stdout
    assert "destination down (NOBODY@127.0.0.1:" in result.stdout
    assert "no answer" in result.stdout


def test_purge_deletes_a_failed_jobs_images_and_notes_it(tmp_path):
    from dicom_node.index import Index, InstanceRecord
    from dicom_node.jobs import Jobs, JobState, Move
    from dicom_node.spool import Spool

    node = NodeProcess(tmp_path, {"storage": {"dir": "var"}, "rules": []})
    node.write_config()  # the suite's PostgreSQL run adds its database
    spool = Spool(tmp_path / "var")
    spool.create()
    db = node.database()
    rel = spool.store_instance("1.2", "1.2.3", "1.2.3.1", b"x")
    Index(db).record(InstanceRecord("1.2", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", rel, 1))
    jobs = Jobs(db)
    job = jobs.create(study_uid="1.2", series_uid="1.2.3", rule="r", pipeline="lung-ct",
                      sop_uids=["1.2.3.1"], inputs=[rel], destinations=[])  # fmt: skip
    running = node.cli("purge", "--job", str(job))
    assert running.returncode == 1
    assert "job 1 is queued; purge it once it has ended" in running.stderr
    retry = node.cli("retry", "--job", str(job))
    assert retry.returncode == 1 and "only an ended job can be run again" in retry.stderr
    jobs.move(job, Move.FINISH, 1.0, to=JobState.FAILED, reason="pipeline error (ValueError)")
    result = node.cli("purge", "--job", str(job))
    assert result.returncode == 0, result.stderr
    assert "1 source image(s) of series 1.2.3 purged" in result.stdout
    assert not (spool.root / rel).exists()
    assert jobs.get(job).reason.endswith("[source images purged by operator]")
    db.close()


def test_status_shows_what_each_done_job_measured(tmp_path):
    from dicom_node.jobs import Jobs, JobState, Move
    from dicom_node.spool import Spool

    node = NodeProcess(tmp_path, {"storage": {"dir": "var"}, "rules": []})
    node.write_config()  # the suite's PostgreSQL run adds its database
    Spool(tmp_path / "var").create()
    db = node.database()
    jobs = Jobs(db)
    summaries = {
        "lung-ct": {"right": {"volume_ml": 2666.2, "emphysema_percent": 0.04},
                    "left": {"volume_ml": 2301.0, "emphysema_percent": 1.26}},
        "bone-finder": {"Bone": {"volume_ml": 812.44}, "peak_rss_mb": 900},
        "bright-lesion": {"Lesion": {"volume_ml": 4.2, "mean_intensity": 251.37,
                                     "max_diameter_mm": 20.96}},
        "nodule-score": {"finding_0": 0.8731},
    }  # fmt: skip
    for i, (pipeline, summary) in enumerate(summaries.items()):
        job = jobs.create(study_uid="1.2", series_uid=f"1.2.{i}", rule="r", pipeline=pipeline,
                          sop_uids=[f"1.2.{i}.1"], inputs=[], destinations=[])  # fmt: skip
        jobs.move(job, Move.FINISH, 1.0, to=JobState.DONE, summary=summary)
    db.close()
    result = node.cli("status")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[3]: line for line in result.stdout.splitlines()
             if line.startswith("  job ")}  # fmt: skip
    assert "right 2666 ml (LAA-950 0.0 %), left 2301 ml (LAA-950 1.3 %)" in lines["lung-ct"]
    assert lines["bone-finder"].endswith("1.2.1  Bone 812.4 ml")
    assert lines["bright-lesion"].endswith("Lesion 4.2 ml (mean 251.4, max diameter 21.0 mm)")
    assert lines["nodule-score"].endswith("finding_0 0.8731")
