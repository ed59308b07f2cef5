"""Result files: ``pipelines.dicomfile`` writes pydicom's bytes, byte for byte."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, TM, DSfloat

from pipelines.dicomfile import file_bytes, with_encoded_sequences
from pipelines.lung import LungCT, measure_lungs
from pipelines.uids import DerivedUids
from tests.support.ct_series import SeriesOptions, lung_phantom, make_ct_datasets
from tests.support.enhanced import FrameOptions, enhanced


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _lung_results(labels: np.ndarray, hu: np.ndarray, instances: int = 0) -> list[Dataset]:
    pipeline = LungCT()
    series = make_ct_datasets(hu, SeriesOptions(flip_y=True))
    sources = series.datasets
    if instances:
        sources = enhanced(sources, FrameOptions(instances=instances, shuffle=True, seed=2))
    volume = pipeline.prepare(sources)
    uids = DerivedUids(series.sop_uids, pipeline.spec.name, pipeline.spec.version)
    return pipeline.encode(volume, measure_lungs(volume, labels), uids)


def _assert_fast_and_equal(ds: Dataset) -> None:
    assert with_encoded_sequences(ds) is not None, "written by pydicom alone"
    ours = bytes(file_bytes(ds))  # first: it must disambiguate Pixel Data's VR itself
    assert ours == _pydicom_bytes(ds)


@pytest.mark.parametrize(
    ("lungs", "instances"),
    [((2, 3), 0), ((2,), 0), ((2, 3), 1), ((2, 3), 2)],
    ids=["two-segments", "one-segment", "one-multiframe-source", "two-multiframe-sources"],
)
def test_lung_seg_and_sr_are_pydicoms_bytes(lungs: tuple[int, ...], instances: int) -> None:
    hu, labels = lung_phantom()
    labels = np.where(np.isin(labels, lungs), labels, 0).astype(labels.dtype)

    seg, sr = _lung_results(labels, hu, instances)

    assert len(seg.PerFrameFunctionalGroupsSequence) >= 8
    for ds in (seg, sr):
        _assert_fast_and_equal(ds)
    read = pydicom.dcmread(io.BytesIO(bytes(file_bytes(seg))))
    np.testing.assert_array_equal(read.pixel_array, seg.pixel_array)


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _every_kind_of_element(charset: str) -> Dataset:
    """A data set whose sequence items hold each kind of element the encoder meets,
    and the kinds it hands to pydicom (dates as objects, names, non-ASCII text,
    values too long for a 16-bit length)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = charset
    ds.PatientName = "Name^Given"
    inner = _item(
        CodeValue="T-1234",  # odd length: space pad
        CodingSchemeDesignator="SCT",
        CodeMeaning="Müller-Lyer" if charset != "ISO_IR 6" else "Mueller",
        ReferencedSOPInstanceUID=generate_uid(),  # odd or even: NUL pad
        ReferencedFrameNumber=[1, 3, 5],
        ImagePositionPatient=[DSfloat("-12.5", auto_format=False), 3, DSfloat(0.1)],
        SliceThickness=DSfloat("1.250"),
        InstanceNumber="7",
        ContentDate=DA("20240102"),
        ContentTime=TM("101112.5"),
        StudyDate="20240102",
        SeriesTime="",
        PersonName="Doe^Jane",
        RecommendedDisplayCIELabValue=[65535, 0, 1],
        FloatPixelPaddingValue=1.5,
        SpacingBetweenSlices=None,
        TextValue="x" * 70001,
        PatientComments="z" * 70001 if charset == "ISO_IR 6" else "short",  # LT: 16-bit length
        LongCodeValue="y" * 65,
        DimensionIndexPointer=0x00209157,
        ImageType=["DERIVED", "PRIMARY"],
        UnformattedTextValue="a\\b",
    )
    inner.add_new(0x00180000, "UL", 8)  # a group length: left out, as pydicom does
    inner.add_new(0x00091010, "OB", b"\x01\x02\x03")  # odd: NUL pad
    inner.add_new(0x00091011, "SS", [-1, 2])
    inner.add_new(0x00091012, "SV", -(2**40))
    undefined = _item(CodeValue="1", ConceptNameCodeSequence=Sequence([inner]))
    undefined.is_undefined_length_sequence_item = True
    ds.ContentSequence = [undefined, _item(ContentSequence=[]), Dataset()]
    ds["ContentSequence"].is_undefined_length = True
    ds.ReferencedSeriesSequence = [_item(SeriesInstanceUID=generate_uid())]
    return ds


@pytest.mark.parametrize("charset", ["ISO_IR 6", "ISO_IR 100", "ISO_IR 192"])
def test_every_kind_of_element_in_items_is_pydicoms_bytes(charset: str) -> None:
    with pytest.warns(UserWarning) if charset == "ISO_IR 6" else _nothing():  # too long for LT
        _assert_fast_and_equal(_every_kind_of_element(charset))


def test_an_item_with_its_own_character_set_is_encoded_in_it() -> None:
    ds = _every_kind_of_element("ISO_IR 100")
    ds.ReferencedSeriesSequence[0].SpecificCharacterSet = "ISO_IR 192"
    ds.ReferencedSeriesSequence[0].SeriesDescription = "Ωmega"

    _assert_fast_and_equal(ds)


def test_what_pydicom_must_read_or_decide_first_is_written_by_pydicom(tmp_path: Path) -> None:
    hu, labels = lung_phantom()
    seg, sr = _lung_results(labels, hu)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    read_back = pydicom.dcmread(tmp_path / "sr.dcm")  # items of raw elements
    implicit = _every_kind_of_element("ISO_IR 100")
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ambiguous = _every_kind_of_element("ISO_IR 100")
    ambiguous.ReferencedSeriesSequence[0].add_new(0x00280106, "US or SS", 3)
    ambiguous.ReferencedSeriesSequence[0].PixelRepresentation = 0

    for ds in (read_back, implicit, ambiguous):
        assert with_encoded_sequences(ds) is None
        assert bytes(file_bytes(ds)) == _pydicom_bytes(ds)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
