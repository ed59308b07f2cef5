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


def test_result_names_must_be_plain_file_names(tmp_path):
    with pytest.raises(ValueError, match="not a safe file name"):
        Spool(tmp_path).outbox_relpath(1, "../x.dcm")
