"""A SEG made from lossy sources names the compression method (Type 1C), even when the
source's writer left it out."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset

from pipelines.seg import _complete_lossy_compression


def source(syntax: str, method: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = 9.99
    if method is not None:
        ds.LossyImageCompressionMethod = method
    return ds


def lossy_seg() -> Dataset:
    seg = Dataset()
    seg.LossyImageCompression = "01"  # as highdicom copies it from the sources
    seg.LossyImageCompressionRatio = 9.99
    return seg


def test_method_from_the_transfer_syntax_when_the_source_left_it_out():
    seg = lossy_seg()
    _complete_lossy_compression(seg, [source("1.2.840.10008.1.2.4.91")] * 3)
    assert seg.LossyImageCompressionMethod == "ISO_15444_1"


def test_the_sources_own_method_comes_first():
    seg = lossy_seg()
    _complete_lossy_compression(seg, [source("1.2.840.10008.1.2.1", "ISO_10918_1")])
    assert seg.LossyImageCompressionMethod == "ISO_10918_1"


def test_nothing_is_made_up_when_no_source_tells():
    seg = lossy_seg()
    _complete_lossy_compression(seg, [source("1.2.840.10008.1.2.1")])
    assert "LossyImageCompressionMethod" not in seg


def test_a_lossless_seg_is_left_alone():
    seg = Dataset()
    seg.LossyImageCompression = "00"
    _complete_lossy_compression(seg, [source("1.2.840.10008.1.2.4.91")])
    assert "LossyImageCompressionMethod" not in seg
