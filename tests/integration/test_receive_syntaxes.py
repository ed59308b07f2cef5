"""Compressed images as PACS hold them: sent as they are by storescu and by an
Orthanc that never transcodes, stored by the node exactly as received."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest

from tests.support.compressed import HTJ2K_LOSSLESS, SYNTAXES, convert, to_htj2k
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.peers import REPO, NodeProcess, Orthanc, storescu


@pytest.fixture(scope="module")
def node(tmp_path_factory, node_database):
    proc = NodeProcess(
        tmp_path_factory.mktemp("syntaxes"), {"storage": {"dir": "var"}, "rules": []}
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def pixel_bytes(path) -> bytes:
    """Pixel Data as encoded in the file (fragments included for compressed syntaxes)."""
    return bytes(pydicom.dcmread(path).PixelData)


def profile(folder, uid: str):
    """A storescu configuration proposing CT Image Storage in ``uid`` only."""
    path = folder / "storescu.cfg"
    path.write_text(
        f"[[TransferSyntaxes]]\n[TS]\nTransferSyntax1 = {uid}\n"
        "[[PresentationContexts]]\n[PC]\nPresentationContext1 = CTImageStorage\\TS\n"
        "[[Profiles]]\n[P]\nPresentationContexts = PC\n"
    )
    return path


def stored(node, series) -> list:
    folder = node.folder / "var" / "spool" / series.study_uid / series.series_uid
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.name for s in SYNTAXES])
def test_storescu_sends_each_syntax_as_it_is_and_it_is_stored_as_received(node, tmp_path, syntax):
    z, y, x = np.mgrid[0:2, 0:64, 0:64]
    hu = (600 * np.sin(x / 5.0) + 50 * z).astype(np.int16)
    series = write_ct_series(tmp_path / "src", hu, SeriesOptions())
    files = [convert(syntax, p, tmp_path / "c" / p.name) for p in series.paths]
    # Propose exactly the files' own transfer syntax, as a PACS sending what it holds
    # (storescu would otherwise propose an uncompressed one and try to convert)
    result = storescu(node.port, files, extra=["-xf", str(profile(tmp_path, syntax.uid)), "P"])
    assert result.returncode == 0, result.stderr
    kept = {p.stem: p for p in stored(node, series)}
    for sent in files:
        sop = str(pydicom.dcmread(sent).SOPInstanceUID)  # lossy encoders give a new UID
        assert str(pydicom.dcmread(kept[sop]).file_meta.TransferSyntaxUID) == syntax.uid
        if syntax.name == "deflated":  # storescu deflates again: the same data, other bytes
            assert np.array_equal(pydicom.dcmread(kept[sop]).pixel_array,
                                  pydicom.dcmread(sent).pixel_array)  # fmt: skip
        else:  # the pixel data exactly as sent, never decoded or re-encoded
            assert pixel_bytes(kept[sop]) == pixel_bytes(sent)


def test_htj2k_is_received_as_it_is(node, tmp_path):
    # Debian's dcmtk does not know HTJ2K: a client that sends the file's own syntax.
    z, y, x = np.mgrid[0:2, 0:64, 0:64]
    series = write_ct_series(tmp_path / "src", (300 * np.cos(y / 7.0) + 9 * z).astype(np.int16),
                             SeriesOptions())  # fmt: skip
    files = [to_htj2k(p, tmp_path / "htj2k" / p.name) for p in series.paths]
    sent = subprocess.run([sys.executable, "-m", "tests.support.raw_scu", str(node.port),
                           *map(str, files)], capture_output=True, text=True, timeout=120,
                          cwd=REPO)  # fmt: skip
    assert sent.stdout.split("\n")[:2] == ["status 0x0000"] * 2, sent.stdout + sent.stderr
    kept = stored(node, series)
    assert [str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in kept] == [
        HTJ2K_LOSSLESS
    ] * 2
    assert sorted(map(pixel_bytes, kept)) == sorted(map(pixel_bytes, files))


def test_orthanc_that_never_transcodes_pushes_jpeg_ls_and_j2k(node, tmp_path):
    hu = (np.arange(3 * 32 * 32).reshape(3, 32, 32) % 900).astype(np.int16)
    series = write_ct_series(tmp_path / "src", hu, SeriesOptions())
    jls, j2k = SYNTAXES[7], SYNTAXES[9]
    files = [convert(jls, series.paths[0], tmp_path / "c" / "a.dcm")]
    files += [convert(j2k, p, tmp_path / "c" / p.name) for p in series.paths[1:]]
    modality = {"AET": "DICOM-NODE", "Host": "127.0.0.1", "Port": node.port,
                "AllowTranscoding": False}  # fmt: skip
    pacs = Orthanc(tmp_path / "orthanc").start({"node": modality})
    try:
        study = None
        for path in files:
            study = pacs.upload(path)["ParentStudy"]
        pacs.push("node", study)
    finally:
        pacs.stop()
    kept = {p.stem: p for p in stored(node, series)}
    assert str(pydicom.dcmread(kept[series.sop_uids[0]]).file_meta.TransferSyntaxUID) == jls.uid
    assert str(pydicom.dcmread(kept[series.sop_uids[2]]).file_meta.TransferSyntaxUID) == j2k.uid
    for sop, sent in zip(series.sop_uids, files, strict=True):
        assert np.array_equal(
            pydicom.dcmread(kept[sop]).pixel_array, pydicom.dcmread(sent).pixel_array
        )


def test_results_go_out_in_the_transfer_syntax_the_archive_accepted(tmp_path):
    """An archive that takes implicit VR little endian only gets the (explicit VR)
    result file converted to it, not refused and not sent in a syntax it refused."""
    from dicom_node import scu
    from dicom_node.settings import Destination
    from tests.support.peers import DCMTK_ENV, free_port, port_open, require
    from tests.support.wait import wait_for

    series = write_ct_series(tmp_path / "src", np.zeros((1, 8, 8), np.int16), SeriesOptions())
    port = free_port()
    archive = subprocess.Popen(
        [require("storescp"), "+xi", "-aet", "ARCHIVE", "-od", str(tmp_path / "out"), str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    try:
        wait_for(lambda: port_open(port), 30, "storescp to listen")
        dest = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=port)
        conn = scu.connect(dest, "DICOM-NODE", ["1.2.840.10008.5.1.4.1.1.2"])
        try:
            assert conn.store(series.paths[0]).status == 0
        finally:
            conn.close()
    finally:
        archive.terminate()
        archive.wait()
    [kept] = list((tmp_path / "out").iterdir())
    assert str(pydicom.dcmread(kept).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2"
