import threading

from dicom_node.index import Index, InstanceRecord
from dicom_node.jobs import Jobs, JobState, Move
from dicom_node.retention import purge_sources
from dicom_node.settings import StorageSettings
from dicom_node.spool import Spool
from tests.support.wait import wait_for


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
    assert index.forget_series("1.2.3", spool.remove_all, received_before=1.0) == 0
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


def test_a_purge_waits_for_an_instance_another_node_is_storing_in_its_series(tmp_path, open_db):
    """Node A is storing an instance of a series (its file moved in, its rows not yet
    committed) while node B purges that series: B waits for A's commit, then sees the
    new instance and leaves the series whole."""
    index, other = Index(open_db()), Index(open_db())
    spool = Spool(tmp_path)
    first = stored(tmp_path, index, spool, "1.2.3", now=0.0)
    [study] = index.studies_to_route()
    index.mark_routed(study.study_uid, study.revision)
    incoming = spool.incoming(1) / "x.dcm"
    incoming.write_bytes(b"new")
    rel = spool.instance_relpath("1.2", "1.2.3", "1.2.3.2")
    placed, go = threading.Event(), threading.Event()

    def place() -> None:
        spool.place(incoming, rel)
        placed.set()
        assert go.wait(30)

    record = threading.Thread(target=lambda: other.record(
        InstanceRecord("1.2", "1.2.3", "1.2.3.2", "1.2.840.10008.5.1.4.1.1.2", rel, 3),
        now=5.0, place=place))  # fmt: skip
    record.start()
    assert placed.wait(30)
    purged: list[int] = []
    purge = threading.Thread(target=lambda: purged.append(
        index.forget_series("1.2.3", spool.remove_all, received_before=1.0)))  # fmt: skip
    purge.start()
    if index.db.dialect == "postgresql":  # SQLite: the purge queues on the file lock
        wait_for(lambda: index.db.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                                        " AND NOT granted"), 30, "the purge to wait")  # fmt: skip
    go.set()
    record.join(30)
    purge.join(30)
    assert purged == [0]
    assert first.exists() and (tmp_path / rel).read_bytes() == b"new"
    [series] = index.series_of("1.2")
    assert series.instances == 2 and index.counts()["instances"] == 2
