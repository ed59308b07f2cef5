"""Reading a received file's header: UIDs, routing keys, structure checks, limits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_node.header import BadInstance, read_header
from tests.support.hostile import (
    DEFLATED,
    JPEG_LS_LOSSLESS,
    ct_dataset,
    deflate,
    deflate_bomb,
    element,
    encode,
    nested_sequences,
    write_raw,
)

EXPLICIT = "1.2.840.10008.1.2.1"
MiB = 2**20


def read(tmp_path, data: bytes, syntax: str = EXPLICIT, max_inflated: int = 64 * MiB):
    path = write_raw(tmp_path / "in.dcm", data, "1.2.3.4", syntax)
    return read_header(path, syntax, max_inflated)[0]


def test_a_valid_instance_gives_its_uids_and_routing_keys(tmp_path):
    ds = ct_dataset("1.2.3.4")
    ds.BodyPartExamined = "CHEST"
    header = read(tmp_path, encode(ds))
    assert header.sop_uid == "1.2.3.4"
    assert header.series_uid == ds.SeriesInstanceUID
    assert header.keys["Modality"] == "CT" and header.keys["BodyPartExamined"] == "CHEST"


@pytest.mark.parametrize(
    "value",
    ["", "1.2." + "3" * 70, "1.2/../3", "1.2/3", "1.2\\3", "1.2\x003", "1.2.3\n", "1.2.abc"],
    ids=["empty", "over-64", "dotdot", "slash", "backslash", "nul", "newline", "letters"],
)
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_unsafe_or_missing_uids_are_refused_naming_the_attribute(tmp_path, keyword, value):
    ds = ct_dataset("1.2.3.4")
    placeholder = "7" * len(value)  # pydicom would clean some values while writing
    setattr(ds, keyword, placeholder)
    data = encode(ds).replace(placeholder.encode(), value.encode()) if value else encode(ds)
    with pytest.raises(BadInstance, match=keyword) as err:
        read(tmp_path, data)
    assert err.value.status == 0xC211
    assert value.strip() == "" or value not in err.value.comment


def test_missing_uid_is_refused(tmp_path):
    ds = ct_dataset("1.2.3.4")
    del ds.StudyInstanceUID
    with pytest.raises(BadInstance, match=r"\(0020,000D\) StudyInstanceUID is missing"):
        read(tmp_path, encode(ds))


def test_truncated_pixel_data_is_refused(tmp_path):
    data = encode(ct_dataset("1.2.3.4", rows=64))
    with pytest.raises(BadInstance, match="PixelData is truncated") as err:
        read(tmp_path, data[:-100])
    assert err.value.status == 0xC210


def test_a_declared_length_of_2_gb_is_refused_without_reading_it(tmp_path):
    data = encode(ct_dataset("1.2.3.4"))
    lie = element(0x0008, 0x0070, b"UT", b"x" * 8, length=0x7FFFFFF0)
    cut = data.index(b"\x08\x00\x16\x00")  # before SOPClassUID: the lie comes first
    with pytest.raises(BadInstance, match=r"\(0008,0070\) declares 2147483632 bytes"):
        read(tmp_path, data[:cut] + lie + data[cut:])


def test_ten_thousand_nested_sequences_are_refused(tmp_path):
    data = encode(ct_dataset("1.2.3.4"))
    cut = data.index(b"\x20\x00\x0d\x00")  # (0008,1140) sorts before (0020,000D)
    with pytest.raises(BadInstance) as err:
        read(tmp_path, data[:cut] + nested_sequences(10_000) + data[cut:])
    assert err.value.status == 0xC210


def test_file_meta_inside_the_data_set_is_refused(tmp_path):
    data = element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2\0") + encode(ct_dataset("1.2.3.4"))
    with pytest.raises(BadInstance, match=r"\(0002,0010\) File Meta Information inside"):
        read(tmp_path, data)


def test_native_pixels_under_a_compressed_transfer_syntax_are_refused(tmp_path):
    with pytest.raises(BadInstance, match="PixelData is native"):
        read(tmp_path, encode(ct_dataset("1.2.3.4")), JPEG_LS_LOSSLESS)


def test_a_deflated_data_set_is_read(tmp_path):
    header = read(tmp_path, deflate(encode(ct_dataset("1.2.3.4"))), DEFLATED)
    assert header.sop_uid == "1.2.3.4"


def test_a_deflate_bomb_stops_at_the_inflated_limit(tmp_path):
    ds = ct_dataset("1.2.3.4")
    del ds.PixelData
    bomb = deflate_bomb(encode(ds), 40)
    assert len(bomb) < 100_000
    with pytest.raises(BadInstance, match="inflates past 8 MiB") as err:
        read(tmp_path, bomb, DEFLATED, max_inflated=8 * MiB)
    assert err.value.status == 0xA700


VALID = encode(ct_dataset("1.2.3.4", rows=8))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.tuples(st.integers(0, len(VALID)), st.binary(max_size=12)), max_size=4),
    syntax=st.sampled_from(
        [EXPLICIT, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", JPEG_LS_LOSSLESS]
    ),
)
def test_fuzzed_data_sets_get_a_header_or_a_failure_status_never_a_crash(tmp_path, cuts, syntax):
    data = bytearray(VALID)
    for at, junk in cuts:
        data[at : at + len(junk)] = junk
    try:
        header = read(tmp_path, bytes(data), syntax)
    except BadInstance as exc:
        assert exc.status in (0xA700, 0xC210, 0xC211)
        assert "SENTINEL" not in exc.comment
    else:
        assert header.sop_uid and header.study_uid and header.series_uid
