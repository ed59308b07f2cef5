"""The native upper layer's codec: PDUs and command sets round-trip, malformed
input is a MalformedPDU / BadCommand with the A-ABORT reason that fits, and the
parser never fails any other way on arbitrary bytes."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicom_node.ul import dimse, pdu
from dicom_node.ul.acceptor import negotiate
from dicom_node.ul.meta import IMPLEMENTATION_CLASS_UID, file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def request(**changes: object) -> pdu.AssociateRequest:
    fields: dict[str, object] = {
        "protocol_version": 1,
        "called_ae": "DICOM-NODE",
        "calling_ae": "STORESCU",
        "application_context": pdu.APPLICATION_CONTEXT,
        "contexts": (
            pdu.ProposedContext(1, "1.2.840.10008.1.1", (IMPLICIT,)),
            pdu.ProposedContext(3, CT, (EXPLICIT, IMPLICIT)),
        ),
        "user": pdu.UserInfo(16384, "1.2.3.4", "SCU_1", (2, 1), ((CT, 1, 0),)),
    }
    fields.update(changes)
    return pdu.AssociateRequest(**fields)  # type: ignore[arg-type]


def _body(data: bytes) -> bytes:
    kind, length = pdu.parse_header(data[:6])
    assert length == len(data) - 6
    return data[6:]


def test_associate_rq_round_trips():
    rq = request()
    parsed = pdu.parse_associate_rq(_body(pdu.encode_associate_rq(rq)))
    assert parsed.contexts == rq.contexts
    assert parsed.user == rq.user
    assert (parsed.called_ae, parsed.calling_ae) == ("DICOM-NODE", "STORESCU")
    assert parsed.application_context == pdu.APPLICATION_CONTEXT


def test_associate_ac_names_each_result_and_echoes_the_ae_titles():
    rq = pdu.parse_associate_rq(_body(pdu.encode_associate_rq(request())))
    results = [pdu.ContextResult(1, pdu.ACCEPTANCE, IMPLICIT),
               pdu.ContextResult(3, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, EXPLICIT)]  # fmt: skip
    ac = pdu.encode_associate_ac(rq, results, 1 << 20, IMPLEMENTATION_CLASS_UID, "X")
    assert ac[0] == pdu.ASSOCIATE_AC
    body = _body(ac)
    assert body[4:20] == b"DICOM-NODE      " and body[20:36] == b"STORESCU        "
    assert pdu.parse_associate_ac(body) == results
    assert struct.pack(">L", 1 << 20) in body and IMPLEMENTATION_CLASS_UID.encode() in body


def test_fixed_size_pdus():
    assert pdu.encode_associate_rj(1, 1, 3) == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"
    assert pdu.encode_release_rp() == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.parse_abort(_body(pdu.encode_abort(2, 6))) == (2, 6)


def test_p_data_round_trips():
    fragments = [(1, 3, b"command"), (1, 0, b"data"), (1, 2, b"")]
    assert pdu.parse_p_data(_body(pdu.encode_p_data(fragments))) == fragments


@pytest.mark.parametrize(
    ("data", "reason", "match"),
    [
        (b"\x09\x00\x00\x00\x00\x00", pdu.REASON_UNRECOGNIZED_PDU, "unknown PDU type"),
    ],
)
def test_an_unknown_pdu_type_is_unrecognized(data, reason, match):
    with pytest.raises(pdu.MalformedPDU, match=match) as info:
        pdu.parse_header(data)
    assert info.value.reason == reason


def _mangle(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


@pytest.mark.parametrize(
    ("make", "reason", "match"),
    [
        (lambda b: b[:40], pdu.REASON_INVALID_PARAMETER, "too short"),
        (lambda b: b[:-3], pdu.REASON_INVALID_PARAMETER, "runs past|cut off"),
        (lambda b: b + b"\x99\x00\x00\x00", pdu.REASON_UNRECOGNIZED_PARAMETER, "item 0x99"),
        (lambda b: b[:68] + b"\x10\x00\x00\x01x" + b[68:], pdu.REASON_INVALID_PARAMETER,
         "one application context"),
        (lambda b: _mangle(b, 4, b"\xff" * 16), pdu.REASON_INVALID_PARAMETER, "not ASCII"),
    ],
    ids=["short", "cut", "unknown-item", "two-app-contexts", "binary-ae"],
)  # fmt: skip
def test_malformed_associate_rq_names_the_abort_reason(make, reason, match):
    body = _body(pdu.encode_associate_rq(request()))
    with pytest.raises(pdu.MalformedPDU, match=match) as info:
        pdu.parse_associate_rq(make(body))
    assert info.value.reason == reason


def test_even_context_ids_are_invalid():
    rq = request(contexts=(pdu.ProposedContext(2, CT, (EXPLICIT,)),))
    with pytest.raises(pdu.MalformedPDU, match="odd and unique"):
        pdu.parse_associate_rq(_body(pdu.encode_associate_rq(rq)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.lists(st.tuples(st.integers(0, 600), st.binary(max_size=6)),
                                         max_size=4))  # fmt: skip
def test_the_rq_parser_either_parses_or_raises_malformed(junk, edits):
    """Arbitrary bytes, and a valid request with bytes overwritten: a request or
    MalformedPDU, nothing else (no IndexError, struct.error, UnicodeError)."""
    for body in (junk, _body(pdu.encode_associate_rq(request()))):
        data = bytearray(body)
        for at, new in edits:
            at = at % (len(data) or 1)
            data[at : at + len(new)] = new
        try:
            pdu.parse_associate_rq(bytes(data))
        except pdu.MalformedPDU:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_the_p_data_and_command_parsers_never_fail_otherwise(junk):
    try:
        pdu.parse_p_data(junk)
    except pdu.MalformedPDU:
        pass
    try:
        dimse.decode_command(junk)
    except dimse.BadCommand:
        pass


def test_command_sets_round_trip_with_their_group_length():
    rq = dimse.Command(dimse.C_STORE_RQ, 7, CT, "1.2.3.4", True)
    data = dimse.encode_request(rq)
    assert struct.unpack_from("<HHLL", data) == (0, 0, 4, len(data) - 12)
    assert dimse.decode_command(data) == rq
    rsp = dimse.encode_response(rq, 0xA700, "out of resources")
    assert dimse.response_status(rsp) == (0x8001, 0xA700, "out of resources")
    echo = dimse.Command(dimse.C_ECHO_RQ, 1, "1.2.840.10008.1.1", "", False)
    assert dimse.decode_command(dimse.encode_request(echo)) == echo
    assert dimse.response_status(dimse.encode_response(echo, 0)) == (0x8030, 0, "")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x08\x00\x00\x00\x02\x00\x00\x00ab", "outside group 0000"),
        (b"\x00\x00\x00\x01\x10\x00\x00\x00ab", "runs past"),
        (b"\x00\x00\x00\x01", "cut off"),
        (dimse.encode_command([(0x0110, b"\x01\x00")]), "CommandField"),
    ],
)
def test_bad_command_sets_say_what_is_wrong(data, match):
    with pytest.raises(dimse.BadCommand, match=match):
        dimse.decode_command(data)


def test_file_meta_is_read_back_by_pydicom():
    fp = io.BytesIO(file_meta(CT, "1.2.3", EXPLICIT, "STORESCU"))
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    assert meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert meta.TransferSyntaxUID == EXPLICIT
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "STORESCU"
    assert fp.tell() == len(fp.getvalue())


def test_negotiation_takes_the_requestors_first_syntax_among_ours():
    ours = {CT: frozenset({EXPLICIT, IMPLICIT, "1.2.840.10008.1.2.4.80"})}
    proposed = (
        pdu.ProposedContext(1, CT, ("1.2.840.10008.1.2.4.80", EXPLICIT)),
        pdu.ProposedContext(3, CT, ("1.2.3.999", IMPLICIT)),
        pdu.ProposedContext(5, "1.2.3.4", (EXPLICIT,)),
        pdu.ProposedContext(7, CT, ("1.2.3.999",)),
    )
    assert negotiate(proposed, ours) == [
        pdu.ContextResult(1, pdu.ACCEPTANCE, "1.2.840.10008.1.2.4.80"),
        pdu.ContextResult(3, pdu.ACCEPTANCE, IMPLICIT),
        pdu.ContextResult(5, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, EXPLICIT),
        pdu.ContextResult(7, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, "1.2.3.999"),
    ]
