"""Pipelines decode every transfer syntax the node receives (pydicom + pylibjpeg):
lossless ones give back the source pixels exactly."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from openjpeg import decode

from pipelines.base import SeriesNotUsable
from pipelines.runner import read_series
from pipelines.volume import load_ct_volume, load_image_stack
from tests.support.compressed import BASELINE, SYNTAXES, convert, htj2k_codestream, to_htj2k
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


@pytest.mark.parametrize("lossless", [True, False], ids=["htj2k-lossless", "htj2k-lossy"])
def test_htj2k_of_unsigned_images_decodes_to_the_source_volume(source, tmp_path, lossless):
    files = [to_htj2k(p, tmp_path / p.name, lossless) for p in source.paths]
    assert pydicom.dcmread(files[0]).PixelRepresentation == 0  # the CT's stored values
    volume = load_ct_volume(read_series(files))
    expected = load_ct_volume(read_series(source.paths)).voxels
    if lossless:
        np.testing.assert_array_equal(volume.voxels, expected)
    else:
        assert np.corrcoef(volume.voxels.ravel(), expected.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("load", [load_ct_volume, load_image_stack])
def test_a_signed_htj2k_image_is_refused_not_decoded_wrongly(tmp_path, load):
    hu = np.random.default_rng(4).integers(-1024, 2000, (3, 24, 24)).astype(np.int16)
    series = write_ct_series(tmp_path / "src", hu, SeriesOptions(signed=True))
    files = [to_htj2k(p, tmp_path / "htj2k" / p.name) for p in series.paths]
    with pytest.raises(SeriesNotUsable, match=r"\(7FE0,0010\) PixelData of .* is a signed image"):
        load(read_series(files))


def test_the_installed_decoder_still_gets_signed_htj2k_wrong(tmp_path):
    """Why the refusal above exists. When this fails, OpenJPEG decodes signed HTJ2K
    correctly: lift the refusal (pipelines.volume.refuse_unreliable_decoding)."""
    pixels = np.random.default_rng(5).integers(-1000, 3000, (32, 32)).astype(np.int16)
    stream = htj2k_codestream(pixels, 16)
    (tmp_path / "frame.j2c").write_bytes(stream)
    subprocess.run(["ojph_expand", "-i", str(tmp_path / "frame.j2c"), "-o",
                    str(tmp_path / "frame.yuv")], check=True, capture_output=True)  # fmt: skip
    by_openjph = np.fromfile(tmp_path / "frame.yuv", "<i2").reshape(pixels.shape)
    np.testing.assert_array_equal(by_openjph, pixels)  # the codestream is right
    assert not np.array_equal(decode(stream), pixels)
