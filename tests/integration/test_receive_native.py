"""The native upper layer (``receive.engine: native``) at the protocol level:
negotiation results, rejections and aborts a raw requestor provokes, timeouts,
fragmented data sets from dcmtk, no thread left behind; and a smoke test of the
pynetdicom fallback engine."""

from __future__ import annotations

import signal
import socket
import struct

import numpy as np
import psutil
import pytest

from dicom_node.header import meta_end
from dicom_node.ul import dimse, pdu
from tests.support.ct_series import SeriesOptions, write_ct_series
from tests.support.hostile import ct_dataset, encode, write_raw
from tests.support.peers import NodeProcess, echoscu, port_open, received_files, storescu
from tests.support.wait import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def node(tmp_path_factory, node_database):
    proc = NodeProcess(
        tmp_path_factory.mktemp("native"),
        {
            "receive": {"engine": "native", "max_pdu_bytes": 4096, "acse_timeout_seconds": 2,
                        "network_timeout_seconds": 3},
            "storage": {"dir": "var"},
            "rules": [],
        },
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    hu = np.full((4, 64, 64), -1000, np.int16)
    return write_ct_series(tmp_path_factory.mktemp("series"), hu, SeriesOptions())


def rq(contexts: tuple[pdu.ProposedContext, ...], **changes: object) -> bytes:
    fields: dict[str, object] = {
        "protocol_version": 1,
        "called_ae": "DICOM-NODE",
        "calling_ae": "RAW",
        "application_context": pdu.APPLICATION_CONTEXT,
        "contexts": contexts,
        "user": pdu.UserInfo(16384, "1.2.3.4", "RAW_1"),
    }
    fields.update(changes)
    return pdu.encode_associate_rq(pdu.AssociateRequest(**fields))  # type: ignore[arg-type]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU (type, body); (0, b"") when the connection closed."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return 0, b""
        header += chunk
    kind, length = struct.unpack(">BxL", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return 0, b""
        body += chunk
    return kind, body


def closes(sock: socket.socket) -> bool:
    try:
        while sock.recv(1024):
            pass
    except ConnectionResetError:
        pass
    return True


def associate(port: int, contexts: tuple[pdu.ProposedContext, ...]) -> socket.socket:
    sock = connect(port)
    sock.sendall(rq(contexts))
    kind, _ = read_pdu(sock)
    assert kind == pdu.ASSOCIATE_AC
    return sock


def test_contexts_are_accepted_in_the_requestor_order_or_refused_with_the_reason(node):
    sock = connect(node.port)
    sock.sendall(rq((
        pdu.ProposedContext(1, CT, ("1.2.840.10008.1.2.4.80", EXPLICIT)),  # JPEG-LS first
        pdu.ProposedContext(3, "1.2.3.4.5.6", (EXPLICIT,)),
        pdu.ProposedContext(5, CT, ("1.2.3.999",)),
        pdu.ProposedContext(7, VERIFICATION, (IMPLICIT,)),
    )))  # fmt: skip
    kind, body = read_pdu(sock)
    assert kind == pdu.ASSOCIATE_AC
    assert pdu.parse_associate_ac(body) == [
        pdu.ContextResult(1, pdu.ACCEPTANCE, "1.2.840.10008.1.2.4.80"),
        pdu.ContextResult(3, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, EXPLICIT),
        pdu.ContextResult(5, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, "1.2.3.999"),
        pdu.ContextResult(7, pdu.ACCEPTANCE, IMPLICIT),
    ]
    assert struct.pack(">L", 4096) in body, "the maximum PDU length we advertise"
    echo = dimse.encode_request(dimse.Command(dimse.C_ECHO_RQ, 5, VERIFICATION, "", False))
    sock.sendall(pdu.encode_p_data([(7, 0x03, echo)]))
    kind, body = read_pdu(sock)
    [(cx, control, data)] = pdu.parse_p_data(body)
    assert (cx, control) == (7, 0x03)
    assert dimse.response_status(data) == (0x8030, 0x0000, "")
    sock.sendall(pdu.encode_release_rq())
    assert read_pdu(sock)[0] == pdu.RELEASE_RP
    sock.close()


@pytest.mark.parametrize(
    ("changes", "answer"),
    [
        ({"application_context": "1.2.3"}, (0x01, 0x01, 0x02)),
        ({"protocol_version": 2}, (0x01, 0x02, 0x02)),
    ],
    ids=["application-context", "protocol-version"],
)
def test_an_unusable_request_is_rejected_with_the_reason(node, changes, answer):
    sock = connect(node.port)
    sock.sendall(rq((pdu.ProposedContext(1, VERIFICATION, (IMPLICIT,)),), **changes))
    kind, body = read_pdu(sock)
    assert kind == pdu.ASSOCIATE_RJ and tuple(body[1:4]) == answer
    assert closes(sock)


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"\x09\x00\x00\x00\x00\x00", pdu.REASON_UNRECOGNIZED_PDU),
        (pdu.encode_release_rq(), pdu.REASON_UNEXPECTED_PDU),
        (b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16, pdu.REASON_INVALID_PARAMETER),
    ],
    ids=["unknown-type", "release-before-associate", "short-rq"],
)
def test_a_malformed_or_unexpected_first_pdu_is_aborted(node, first, reason):
    sock = connect(node.port)
    sock.sendall(first)
    kind, body = read_pdu(sock)
    assert kind == pdu.ABORT and pdu.parse_abort(body) == (pdu.SOURCE_PROVIDER, reason)
    assert closes(sock)


def test_data_on_a_context_not_accepted_is_aborted_and_leaves_nothing(node):
    sock = associate(node.port, (pdu.ProposedContext(1, CT, (EXPLICIT,)),))
    sock.sendall(pdu.encode_p_data([(3, 0x00, b"\0" * 10)]))
    kind, body = read_pdu(sock)
    assert kind == pdu.ABORT and pdu.parse_abort(body)[1] == pdu.REASON_INVALID_PARAMETER
    assert closes(sock)


@pytest.mark.parametrize(
    ("request_class", "data_set_class", "status", "names"),
    [(MR, CT, 0x0122, "(0000,0002)"), (CT, MR, 0xA900, "(0008,0016)")],
    ids=["request-not-its-context", "data-set-not-the-request"],
)
def test_a_store_whose_sop_classes_disagree_is_refused_and_nothing_kept(
    node, request_class, data_set_class, status, names
):
    """PS3.4 / PS3.7: the request's Affected SOP Class is its context's abstract
    syntax, and the data set is of that class; the file's meta would otherwise
    name one class and its data set another."""
    uid = f"1.2.3.8.9.{status}"
    sock = associate(node.port, (pdu.ProposedContext(1, CT, (EXPLICIT,)),
                                 pdu.ProposedContext(3, MR, (EXPLICIT,))))  # fmt: skip
    ds = ct_dataset(uid)
    ds.SOPClassUID = data_set_class
    command = dimse.encode_request(dimse.Command(dimse.C_STORE_RQ, 7, request_class, uid, True))
    sock.sendall(pdu.encode_p_data([(1, 0x03, command)]))
    sock.sendall(pdu.encode_p_data([(1, 0x02, encode(ds))]))
    kind, body = read_pdu(sock)
    [(cx, control, data)] = pdu.parse_p_data(body)
    answer = dimse.response_status(data)
    assert (cx, answer[:2]) == (1, (0x8001, status)) and answer[2].startswith(names), answer
    sock.sendall(pdu.encode_release_rq())
    assert read_pdu(sock)[0] == pdu.RELEASE_RP
    assert not node.query("SELECT path FROM instances WHERE sop_uid = ?", (uid,))
    assert not list((node.folder / "var").rglob(f"{uid}.dcm"))
    assert echoscu(node.port).returncode == 0


def test_a_data_set_cut_by_an_a_abort_leaves_no_partial_file(node, tmp_path):
    sock = associate(node.port, (pdu.ProposedContext(1, CT, (EXPLICIT,)),))
    command = dimse.Command(dimse.C_STORE_RQ, 1, CT, "1.2.3.8.1", True)
    data = encode(ct_dataset("1.2.3.8.1", rows=64))
    sock.sendall(pdu.encode_p_data([(1, 0x03, dimse.encode_request(command))]))
    sock.sendall(pdu.encode_p_data([(1, 0x00, data[:3000])]))
    incoming = node.folder / "var" / "incoming"
    wait_for(lambda: received_files(incoming), 10, "a partial file")
    sock.sendall(pdu.encode_abort(pdu.SOURCE_USER, 0))
    assert closes(sock)
    wait_for(lambda: not received_files(incoming), 10, "the partial file removed")
    assert echoscu(node.port).returncode == 0


def test_a_store_in_small_fragments_is_kept_byte_for_byte(node, tmp_path):
    """Command and data set split over many PDVs and PDUs, as a requestor may."""
    uid = "1.2.3.8.2"
    data = encode(ct_dataset(uid, rows=64))
    sock = associate(node.port, (pdu.ProposedContext(1, CT, (EXPLICIT,)),))
    command = dimse.encode_request(dimse.Command(dimse.C_STORE_RQ, 9, CT, uid, True))
    sock.sendall(pdu.encode_p_data([(1, 0x01, command[:20]), (1, 0x03, command[20:])]))
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    for n, piece in enumerate(pieces):
        sock.sendall(pdu.encode_p_data([(1, 0x02 if n == len(pieces) - 1 else 0x00, piece)]))
    kind, body = read_pdu(sock)
    [(_, _, response)] = pdu.parse_p_data(body)
    assert dimse.response_status(response) == (0x8001, 0x0000, "")
    sock.sendall(pdu.encode_release_rq())
    assert read_pdu(sock)[0] == pdu.RELEASE_RP
    stored = next((node.folder / "var" / "spool").rglob(f"{uid}.dcm"))
    with open(stored, "rb") as fp:
        assert stored.read_bytes()[meta_end(fp) :] == data


def test_a_pdu_over_the_advertised_size_is_aborted_unread(node):
    sock = associate(node.port, (pdu.ProposedContext(1, CT, (EXPLICIT,)),))
    sock.sendall(struct.pack(">BxL", pdu.P_DATA_TF, 4096 + 2**17))
    kind, body = read_pdu(sock)
    assert kind == pdu.ABORT and pdu.parse_abort(body)[1] == pdu.REASON_INVALID_PARAMETER


def test_silent_connections_are_aborted_after_the_acse_and_network_timeouts(node):
    silent = connect(node.port)
    idle = associate(node.port, (pdu.ProposedContext(1, VERIFICATION, (IMPLICIT,)),))
    for sock in (silent, idle):
        kind, body = read_pdu(sock)  # within the test's 20 s socket timeout
        assert kind == pdu.ABORT and pdu.parse_abort(body)[0] == pdu.SOURCE_PROVIDER


@pytest.mark.parametrize("proposal", ["-xs", "-xe", "-xb", "-xi"])
def test_storescu_proposals_and_pdu_sizes(node, series, proposal):
    result = storescu(node.port, series.paths, extra=[proposal, "--max-pdu", "8192"])
    assert result.returncode == 0, result.stderr
    spool = node.folder / "var" / "spool" / series.study_uid / series.series_uid
    assert {p.name for p in spool.iterdir()} >= {f"{u}.dcm" for u in series.sop_uids}


def test_no_association_thread_outlives_its_association(node, tmp_path):
    process = psutil.Process(node.proc.pid)  # type: ignore[union-attr]
    assert echoscu(node.port).returncode == 0
    baseline = process.num_threads()
    path = write_raw(tmp_path / "x.dcm", encode(ct_dataset("1.2.3.8.3")), "1.2.3.8.3")
    for _ in range(5):
        sock = connect(node.port)
        sock.sendall(b"\x07\x00\x00\x00\x00\x04junk")
        sock.close()
        assert storescu(node.port, [path], extra=["-xs"]).returncode == 0
    wait_for(lambda: process.num_threads() <= baseline, 10, "association threads to end")


def test_the_pynetdicom_engine_still_receives(tmp_path, series):
    proc = NodeProcess(
        tmp_path / "n",
        {"receive": {"engine": "pynetdicom"}, "storage": {"dir": "var"}, "rules": []},
    ).start()
    try:
        assert echoscu(proc.port).returncode == 0
        assert storescu(proc.port, series.paths).returncode == 0
        assert proc.status()["index"]["instances"] == len(series.paths)
    finally:
        assert proc.stop() == 0, proc.log()


def _store_start(sock: socket.socket, uid: str, data: bytes, sent: int) -> None:
    command = dimse.Command(dimse.C_STORE_RQ, 1, CT, uid, True)
    sock.sendall(pdu.encode_p_data([(1, 0x03, dimse.encode_request(command))]))
    sock.sendall(pdu.encode_p_data([(1, 0x00, data[:sent])]))


def test_stopping_refuses_new_associations_and_lets_those_in_progress_finish(tmp_path):
    """SIGTERM while a PACS pushes: its data set in flight is received and
    answered, its association released; an idle association is closed at once;
    one that does not finish within receive.drain_seconds is closed then, its
    partial data set removed. The node then exits 0."""
    node = NodeProcess(
        tmp_path / "n",
        {"receive": {"drain_seconds": 5}, "storage": {"dir": "var"}, "rules": []},
    ).start()
    ct = (pdu.ProposedContext(1, CT, (EXPLICIT,)),)
    finishing, stalled = associate(node.port, ct), associate(node.port, ct)
    idle = associate(node.port, (pdu.ProposedContext(1, VERIFICATION, (IMPLICIT,)),))
    data = {uid: encode(ct_dataset(uid, rows=64)) for uid in ("1.2.3.9.1", "1.2.3.9.2")}
    _store_start(finishing, "1.2.3.9.1", data["1.2.3.9.1"], 3000)
    _store_start(stalled, "1.2.3.9.2", data["1.2.3.9.2"], 3000)
    incoming = node.folder / "var" / "incoming"
    wait_for(lambda: len(received_files(incoming)) == 2, 10, "both partial files")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: not port_open(node.port), 10, "new connections refused")
    assert closes(idle)  # within its 20 s socket timeout: long before the drain ends

    finishing.sendall(pdu.encode_p_data([(1, 0x02, data["1.2.3.9.1"][3000:])]))
    kind, body = read_pdu(finishing)
    [(_, _, response)] = pdu.parse_p_data(body)
    assert dimse.response_status(response) == (0x8001, 0x0000, "")
    finishing.sendall(pdu.encode_release_rq())
    assert read_pdu(finishing)[0] == pdu.RELEASE_RP
    finishing.close()

    assert closes(stalled)  # at the end of the drain
    assert node.proc.wait(60) == 0, node.log()
    spool = node.folder / "var" / "spool"
    assert [p.name for p in spool.rglob("*.dcm")] == ["1.2.3.9.1.dcm"]
    assert not received_files(incoming)
    assert "1 association(s) still in progress were closed" in node.log(), node.log()[-1500:]
