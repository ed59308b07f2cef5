from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs, JobState, Move
from dicom_node.retention import purge_sources
from dicom_node.settings import StorageSettings
from dicom_node.spool import Spool


def stored(tmp_path, index, spool, series, now):
    rel = spool.store_instance("1.2", series, f"{series}.1", b"x")
    index.record(InstanceRecord("1.2", series, f"{series}.1", "1.2.840.10008.5.1.4.1.1.2", rel, 1),
                 now=now)  # fmt: skip
    return tmp_path / rel


def test_images_are_purged_after_retention_once_jobs_ended_but_failures_are_kept(tmp_path, open_db):
    db = open_db()
    index, jobs, spool = Index(db), Jobs(db), Spool(tmp_path)
    done = stored(tmp_path, index, spool, "1.2.3", now=0.0)
    failed = stored(tmp_path, index, spool, "1.2.4", now=0.0)
    [study] = index.studies_to_route()
    index.mark_routed(study.study_uid, study.revision)
    for series, state in (("1.2.3", "done"), ("1.2.4", "failed")):
        job = jobs.create(study_uid="1.2", series_uid=series, rule="r", pipeline="p",
                          sop_uids=[series], inputs=[], destinations=[])  # fmt: skip
        jobs.move(job, Move.FINISH, 0.0, to=JobState(state), reason="why")
    settings = StorageSettings(retention_hours=1)
    assert purge_sources(index, spool, settings, now=1800.0) == 0, "not yet an hour"
    assert purge_sources(index, spool, settings, now=3601.0) == 1
    assert not done.exists() and failed.exists()
    assert index.counts()["series"] == 1


def test_retention_zero_keeps_everything(tmp_path, open_db):
    db = open_db()
    index, spool = Index(db), Spool(tmp_path)
    path = stored(tmp_path, index, spool, "1.2.3", now=0.0)
    assert purge_sources(index, spool, StorageSettings(retention_hours=0), now=1e9) == 0
    assert path.exists()


def test_a_series_resent_while_it_is_picked_for_purging_is_kept_whole(tmp_path, open_db):
    """Retention picks a series, then an instance of it arrives again before the purge
    runs: the purge re-checks inside its transaction and leaves the series alone."""
    db = open_db()
    index, spool = Index(db), Spool(tmp_path)
    path = stored(tmp_path, index, spool, "1.2.3", now=0.0)
    [study] = index.studies_to_route()
    index.mark_routed(study.study_uid, study.revision)
    picked = index.purgeable_series(older_than=1.0)
    assert picked == ["1.2.3"]
    stored(tmp_path, index, spool, "1.2.3", now=5.0)  # the same instance, re-sent now
    assert index.forget_series("1.2.3", spool.remove, received_before=1.0) == 0
    assert path.exists() and index.counts()["instances"] == 1


def test_a_file_moved_in_and_indexed_in_one_transaction_is_never_purged_half_way(tmp_path, open_db):
    db = open_db()
    index, spool = Index(db), Spool(tmp_path)
    stored(tmp_path, index, spool, "1.2.3", now=0.0)
    incoming = spool.incoming(1) / "x.dcm"
    incoming.write_bytes(b"new")
    rel = spool.instance_relpath("1.2", "1.2.3", "1.2.3.2")
    new, _ = index.record(
        InstanceRecord("1.2", "1.2.3", "1.2.3.2", "1.2.840.10008.5.1.4.1.1.2", rel, 3),
        now=10.0, place=lambda: spool.place(incoming, rel), remove=spool.remove,
    )  # fmt: skip
    assert new and (tmp_path / rel).read_bytes() == b"new"
    assert index.unindexed(spool.instance_files()) == []
    (tmp_path / "spool/1.2/1.2.3/1.2.3.9.dcm").write_bytes(b"orphan")
    assert index.unindexed(spool.instance_files()) == ["spool/1.2/1.2.3/1.2.3.9.dcm"]
    import time

    assert index.unindexed(spool.instance_files(older_than=time.time() - 600)) == [], (
        "a file just moved in may belong to another node's open transaction"
    )
