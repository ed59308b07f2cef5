"""Malformed demographics are emptied by tag; valid ones and non-demographic ones stay."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset

from pipelines.sources import clean_headers


def header(**values: object) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240305"
    ds.Modality = "CT"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_valid_values_are_kept_as_they_are():
    ds = header()
    assert clean_headers([ds]) == []
    assert (ds.PatientBirthDate, ds.PatientSex, str(ds.PatientName)) == (
        "19700101",
        "F",
        "Doe^Jane",
    )


def test_values_their_vr_does_not_allow_are_emptied_and_named_by_tag():
    ds = header(PatientBirthDate="1970-01-01", PatientSex="m", PatientAge="45",
                StudyDate="2024/03/05", PatientName="Doe^\x07Jane")  # fmt: skip
    emptied = clean_headers([ds])
    assert emptied == [
        "(0008,0020) StudyDate",
        "(0010,0010) PatientName",
        "(0010,0030) PatientBirthDate",
        "(0010,0040) PatientSex",
        "(0010,1010) PatientAge",
    ]
    assert all(ds[k].value in (None, "") for k in ("PatientBirthDate", "PatientSex", "StudyDate"))
    assert ds.PatientID == "12345", "a valid neighbour is untouched"


def test_items_of_demographic_sequences_are_checked_and_other_attributes_are_not():
    other = Dataset()
    other.PatientID = "X" * 80  # LO holds at most 64 characters
    ds = header(OtherPatientIDsSequence=[other], Modality="ct", SeriesDescription="x" * 80)
    assert clean_headers([ds]) == ["(0010,0020) PatientID"]
    assert ds.OtherPatientIDsSequence[0].PatientID in (None, "")
    assert ds.Modality == "ct", "not demographic: the pipeline's own checks speak for it"


def test_escape_sequences_are_kept_only_where_the_character_set_declares_iso_2022():
    plain = header(PatientName="Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")
    assert clean_headers([plain]) == ["(0010,0010) PatientName"]
    japanese = header(PatientName="Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    assert clean_headers([japanese]) == []


def _as_read(ds: Dataset) -> Dataset:
    """``ds`` written and read back: its elements raw until looked at, as a job reads them."""
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, force=True)


def test_every_slice_of_a_series_read_from_files_is_cleaned():
    slices = [_as_read(header(PatientBirthDate="1970-01-01", PatientSex="M")) for _ in range(3)]
    slices.append(_as_read(header(PatientBirthDate="19700101", PatientSex="m")))
    slices.append(_as_read(header(PatientBirthDate="1970-01-01", PatientSex="m")))

    emptied = clean_headers(slices)

    assert emptied == ["(0010,0030) PatientBirthDate", "(0010,0040) PatientSex"]
    assert [ds.PatientBirthDate for ds in slices] == [None, None, None, "19700101", None]
    assert [ds.PatientSex for ds in slices] == ["M", "M", "M", None, None]
    assert {str(ds.PatientName) for ds in slices} == {"Doe^Jane"}
