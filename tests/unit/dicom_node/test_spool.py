import pytest

from dicom_node.spool import Spool, UnsafeUid, check_uid


def test_instance_is_written_below_the_spool_under_its_uids(tmp_path):
    spool = Spool(tmp_path)
    rel = spool.store_instance("1.2", "1.2.3", "1.2.3.4", b"DICM")
    assert rel == "spool/1.2/1.2.3/1.2.3.4.dcm"
    assert (tmp_path / rel).read_bytes() == b"DICM"
    assert not [p for p in (tmp_path / "spool/1.2/1.2.3").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "uid", ["../../etc", "1.2/../../x", "1.2.3\\4", "", "1." + "2" * 70, "1.2.a", "/abs"]
)
def test_unsafe_uids_are_refused_before_any_path_is_built(tmp_path, uid):
    with pytest.raises(UnsafeUid, match=r"\(0008,0018\) SOPInstanceUID"):
        Spool(tmp_path).store_instance("1.2", "1.2.3", uid, b"x")
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").rglob("*.dcm"))


def test_missing_uid_is_named():
    with pytest.raises(UnsafeUid, match=r"\(0020,000D\) StudyInstanceUID is missing"):
        check_uid(None, "StudyInstanceUID", "(0020,000D)")


def test_paths_from_the_database_cannot_leave_the_storage_folder(tmp_path):
    with pytest.raises(UnsafeUid, match="leaves the storage folder"):
        Spool(tmp_path).resolve("../outside.dcm")


@pytest.mark.parametrize("name", ["../x.dcm", ".hidden", "a/b.dcm", "", "x" * 65, "seg\n.dcm"])
def test_result_names_must_be_plain_file_names(tmp_path, name):
    with pytest.raises(ValueError, match="not a plain file name"):
        Spool(tmp_path).outbox_entry(1, name)


@pytest.mark.parametrize("path", ["outbox", "outbox/1", "outbox/../x", "spool/1/2/3.dcm"])
def test_outbox_rows_cannot_name_other_paths(tmp_path, path):
    with pytest.raises(UnsafeUid, match="is not outbox/<job>/<file>"):
        Spool(tmp_path).outbox_entry_at(path)


def test_removing_the_last_result_of_a_job_keeps_the_outbox_folder(tmp_path):
    spool = Spool(tmp_path)
    spool.create()
    entry = spool.outbox_entry(3, "seg-1.dcm")
    source = tmp_path / "work-file"
    source.write_bytes(b"x")
    entry.take(source)
    assert entry.exists() and not source.exists()
    entry.remove()
    assert not (tmp_path / "outbox/3").exists() and (tmp_path / "outbox").is_dir()


def test_a_worker_never_recreates_a_withdrawn_ticket_folder(tmp_path):
    folder = Spool(tmp_path).job_folder(5)
    ticket = folder.open_ticket(1)
    claim = ticket.claim("w")
    folder.open_ticket(2)  # the node re-issued the job: ticket 1 is withdrawn
    for write in (lambda: ticket.beat(f"{claim}:1"), lambda: ticket.write_output("seg-1.dcm", b"x"),
                  lambda: ticket.claim("w")):  # fmt: skip
        with pytest.raises(FileNotFoundError):
            write()
    assert sorted(p.name for p in folder.path.iterdir()) == ["claims", "t2"]


def test_concurrent_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    import threading

    from dicom_node.spool import write_atomic

    target = tmp_path / "x.dcm"
    versions = [bytes([n]) * 200_000 for n in range(8)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(20):
                write_atomic(target, data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from dicom_node.spool import write_atomic

    (tmp_path / "x.dcm").mkdir()  # the rename onto a folder fails
    with pytest.raises(OSError):
        write_atomic(tmp_path / "x.dcm", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


def test_a_batch_write_places_every_file_and_leaves_no_temporary_file(tmp_path):
    from dicom_node.spool import write_atomic_batch

    (tmp_path / "out" / "old.dcm").parent.mkdir()
    (tmp_path / "out" / "old.dcm").write_bytes(b"old")
    write_atomic_batch([(tmp_path / "out" / "old.dcm", b"seg"),
                        (tmp_path / "out" / "sr.dcm", memoryview(b"sr"))])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.dcm", "sr.dcm"]
    assert (tmp_path / "out" / "old.dcm").read_bytes() == b"seg"
    with pytest.raises(FileNotFoundError):
        write_atomic_batch([(tmp_path / "gone" / "x.dcm", b"x")], make_parents=False)
    (tmp_path / "out" / "dir.dcm").mkdir()  # the rename onto a folder fails
    with pytest.raises(OSError):
        write_atomic_batch(
            [(tmp_path / "out" / "a.dcm", b"a"), (tmp_path / "out" / "dir.dcm", b"")]
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.dcm", "dir.dcm", "old.dcm",
                                                                    "sr.dcm"]  # fmt: skip


def test_a_ticket_writes_its_outputs_in_one_batch_and_never_recreates_its_folder(tmp_path):
    folder = Spool(tmp_path).job_folder(5)
    ticket = folder.open_ticket(1)
    ticket.write_outputs([("seg-1.dcm", b"seg"), ("sr-2.dcm", b"sr")])
    assert sorted(p.name for p in ticket.out.iterdir()) == ["seg-1.dcm", "sr-2.dcm"]
    with pytest.raises(UnsafeUid, match="not a plain file name"):
        ticket.write_outputs([("../x.dcm", b"x")])
    folder.open_ticket(2)  # withdrawn
    with pytest.raises(FileNotFoundError):
        ticket.write_outputs([("seg-1.dcm", b"x")])
