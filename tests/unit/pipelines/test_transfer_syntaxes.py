"""Pipelines decode every transfer syntax the node receives (pydicom + pylibjpeg):
lossless ones give back the source pixels exactly."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.runner import read_series
from pipelines.volume import load_ct_volume
from tests.support.compressed import BASELINE, SYNTAXES, convert
from tests.support.ct_series import SeriesOptions, write_ct_series


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    # A smooth picture (lossy codecs keep it) with noise (lossless ones must keep every bit).
    z, y, x = np.mgrid[0:3, 0:48, 0:40]
    smooth = 800 * np.sin(x / 6.0) * np.cos(y / 8.0) + 100 * z
    noise = np.random.default_rng(3).integers(-20, 20, smooth.shape)
    hu = (smooth + noise).astype(np.int16)
    return write_ct_series(tmp_path_factory.mktemp("src"), hu, SeriesOptions())


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.name for s in SYNTAXES])
def test_each_transfer_syntax_decodes_to_the_source_volume(source, tmp_path, syntax):
    files = [convert(syntax, p, tmp_path / p.name) for p in source.paths]
    assert str(pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID) == syntax.uid
    volume = load_ct_volume(read_series(files))
    expected = load_ct_volume(read_series(source.paths)).voxels
    if syntax.lossless:
        np.testing.assert_array_equal(volume.voxels, expected)
    else:
        assert volume.voxels.shape == expected.shape
        assert np.corrcoef(volume.voxels.ravel(), expected.ravel())[0, 1] > 0.5


def test_jpeg_baseline_8_bit_decodes(tmp_path):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    pixels = (ds.pixel_array // 16).clip(0, 255).astype(np.uint8)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "8bit.dcm", enforce_file_format=True)
    out = convert(BASELINE, tmp_path / "8bit.dcm", tmp_path / "baseline.dcm")
    decoded = pydicom.dcmread(out).pixel_array
    assert decoded.shape == pixels.shape
    assert np.corrcoef(decoded.ravel(), pixels.ravel())[0, 1] > 0.9
