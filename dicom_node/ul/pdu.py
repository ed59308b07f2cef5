"""PDUs of the DICOM upper layer (PS3.8 section 9.3): parse what an association
requestor sends, encode what the acceptor answers. Pure functions on bytes.

Errors: ``MalformedPDU`` (a ``ValueError``) carries the A-ABORT reason of the
service provider that fits (PS3.8 9.3.8): a PDU we cannot parse is aborted,
never guessed at. Nothing here reads a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# PDU types
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07
KNOWN_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT source and provider reasons (PS3.8 table 9-26)
SOURCE_USER = 0x00
SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_UNEXPECTED_PARAMETER = 0x05
REASON_INVALID_PARAMETER = 0x06

# Presentation context results (PS3.8 table 9-18)
ACCEPTANCE = 0x00
USER_REJECTION = 0x01
NO_REASON = 0x02
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
HEADER = struct.Struct(">BxL")  # type, reserved, length
ITEM = struct.Struct(">BxH")  # item type, reserved, length
PDV = struct.Struct(">LBB")  # item length, presentation context ID, control header


class MalformedPDU(ValueError):
    """A PDU that breaks PS3.8; ``reason`` is the A-ABORT reason to send."""

    def __init__(self, reason: int, what: str) -> None:
        super().__init__(what)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class UserInfo:
    max_pdu_length: int = 0  # 0: no limit
    implementation_class_uid: str = ""
    implementation_version: str = ""
    async_ops: tuple[int, int] | None = None  # (invoked, performed)
    # (SOP class, SCU role, SCP role); tolerated, never answered: default roles apply
    roles: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    user: UserInfo = field(default_factory=UserInfo)
    raw_fixed: bytes = b""  # the 64 bytes from called AE to the end of reserved, echoed


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str  # the accepted one; not significant when rejected


def parse_header(data: bytes) -> tuple[int, int]:
    """(PDU type, length of what follows) from the first six bytes."""
    pdu_type, length = HEADER.unpack(data)
    if pdu_type not in KNOWN_TYPES:
        raise MalformedPDU(REASON_UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
    return pdu_type, length


def _text(value: bytes) -> str:
    try:
        return value.decode("ascii").strip("\0 ")
    except UnicodeDecodeError:
        raise MalformedPDU(REASON_INVALID_PARAMETER, "a UID or AE title is not ASCII") from None


def _items(body: bytes, start: int) -> list[tuple[int, bytes]]:
    """The (type, value) items of ``body[start:]``; lengths must add up exactly."""
    items = []
    at = start
    while at < len(body):
        if at + 4 > len(body):
            raise MalformedPDU(REASON_INVALID_PARAMETER, "an item header is cut off")
        kind, length = ITEM.unpack_from(body, at)
        end = at + 4 + length
        if end > len(body):
            raise MalformedPDU(REASON_INVALID_PARAMETER, f"item 0x{kind:02X} runs past its PDU")
        items.append((kind, body[at + 4 : end]))
        at = end
    return items


def _context(value: bytes) -> ProposedContext:
    if len(value) < 4:
        raise MalformedPDU(REASON_INVALID_PARAMETER, "a presentation context item is too short")
    abstract: list[str] = []
    syntaxes: list[str] = []
    for kind, sub in _items(value, 4):
        if kind == 0x30:
            abstract.append(_text(sub))
        elif kind == 0x40:
            syntaxes.append(_text(sub))
        else:
            raise MalformedPDU(REASON_UNRECOGNIZED_PARAMETER,
                               f"sub-item 0x{kind:02X} in a presentation context")  # fmt: skip
    if len(abstract) != 1 or not syntaxes:
        what = "a presentation context needs one abstract syntax and a transfer syntax"
        raise MalformedPDU(REASON_INVALID_PARAMETER, what)
    return ProposedContext(value[0], abstract[0], tuple(syntaxes))


def _user_info(value: bytes) -> UserInfo:
    max_pdu, uid, version = 0, "", ""
    async_ops: tuple[int, int] | None = None
    roles: list[tuple[str, int, int]] = []
    for kind, sub in _items(value, 0):
        if kind == 0x51:
            if len(sub) != 4:
                raise MalformedPDU(REASON_INVALID_PARAMETER, "maximum length item is not 4 bytes")
            max_pdu = struct.unpack(">L", sub)[0]
        elif kind == 0x52:
            uid = _text(sub)
        elif kind == 0x55:
            version = _text(sub)
        elif kind == 0x53:
            if len(sub) != 4:
                raise MalformedPDU(REASON_INVALID_PARAMETER, "asynchronous operations item size")
            async_ops = struct.unpack(">HH", sub)
        elif kind == 0x54:
            if len(sub) < 4:
                raise MalformedPDU(REASON_INVALID_PARAMETER, "role selection item is too short")
            n = struct.unpack_from(">H", sub)[0]
            if len(sub) != n + 4:
                raise MalformedPDU(REASON_INVALID_PARAMETER, "role selection item size")
            roles.append((_text(sub[2 : 2 + n]), sub[2 + n], sub[3 + n]))
        # 0x56, 0x57 (extended negotiation), 0x58 (user identity) and others: ignored
    return UserInfo(max_pdu, uid, version, async_ops, tuple(roles))


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """An A-ASSOCIATE-RQ from the bytes after its six-byte header."""
    if len(body) < 68:
        raise MalformedPDU(REASON_INVALID_PARAMETER, "A-ASSOCIATE-RQ is too short")
    version = struct.unpack_from(">H", body)[0]
    called, calling = _text(body[4:20]), _text(body[20:36])
    app_context: list[str] = []
    contexts: list[ProposedContext] = []
    users: list[UserInfo] = []
    for kind, value in _items(body, 68):
        if kind == 0x10:
            app_context.append(_text(value))
        elif kind == 0x20:
            contexts.append(_context(value))
        elif kind == 0x50:
            users.append(_user_info(value))
        else:
            raise MalformedPDU(
                REASON_UNRECOGNIZED_PARAMETER, f"item 0x{kind:02X} in A-ASSOCIATE-RQ"
            )
    if len(app_context) != 1 or len(users) > 1 or not contexts:
        what = "A-ASSOCIATE-RQ needs one application context and a presentation context"
        raise MalformedPDU(REASON_INVALID_PARAMETER, what)
    ids = [cx.context_id for cx in contexts]
    if len(set(ids)) != len(ids) or any(i % 2 == 0 for i in ids):
        raise MalformedPDU(
            REASON_INVALID_PARAMETER, "presentation context IDs must be odd and unique"
        )
    return AssociateRequest(version, called, calling, app_context[0], tuple(contexts),
                            users[0] if users else UserInfo(), bytes(body[4:68]))  # fmt: skip


def _item(kind: int, value: bytes) -> bytes:
    return ITEM.pack(kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return HEADER.pack(kind, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def encode_associate_ac(
    rq: AssociateRequest,
    results: list[ContextResult],
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """A-ASSOCIATE-AC answering ``rq``: its AE titles and reserved field echoed."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for res in results:
        ts = _item(0x40, _uid(res.transfer_syntax))
        items.append(_item(0x21, bytes((res.context_id, 0, res.result, 0)) + ts))
    user = [_item(0x51, struct.pack(">L", max_pdu_length)),
            _item(0x52, _uid(implementation_class_uid))]  # fmt: skip
    if rq.user.async_ops is not None:
        user.append(_item(0x53, struct.pack(">HH", 1, 1)))  # one operation at a time
    user.append(_item(0x55, implementation_version.encode("ascii")[:16]))
    items.append(_item(0x50, b"".join(user)))
    fixed = rq.raw_fixed if len(rq.raw_fixed) == 64 else bytes(64)
    return _pdu(ASSOCIATE_AC, struct.pack(">HH", 1, 0) + fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rq() -> bytes:
    return _pdu(RELEASE_RQ, bytes(4))


def encode_release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def encode_abort(source: int, reason: int) -> bytes:
    return _pdu(ABORT, bytes((0, 0, source, reason)))


def encode_p_data(fragments: list[tuple[int, int, bytes]]) -> bytes:
    """P-DATA-TF of (presentation context ID, control header, payload) fragments."""
    body = b"".join(PDV.pack(len(data) + 2, cx, control) + data for cx, control, data in fragments)
    return _pdu(P_DATA_TF, body)


def parse_abort(body: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT body."""
    if len(body) != 4:
        raise MalformedPDU(REASON_INVALID_PARAMETER, "A-ABORT is not 4 bytes long")
    return body[2], body[3]


def parse_associate_ac(body: bytes) -> list[ContextResult]:
    """The presentation context results of an A-ASSOCIATE-AC (for tests)."""
    if len(body) < 68:
        raise MalformedPDU(REASON_INVALID_PARAMETER, "A-ASSOCIATE-AC is too short")
    results = []
    for kind, value in _items(body, 68):
        if kind == 0x21:
            syntax = [_text(sub) for k, sub in _items(value, 4) if k == 0x40]
            results.append(ContextResult(value[0], value[2], syntax[0] if syntax else ""))
    return results


def parse_p_data(body: bytes) -> list[tuple[int, int, bytes]]:
    """The (context ID, control header, payload) fragments of a P-DATA-TF body; the
    receiving path streams instead (``acceptor``), this is for tests and commands."""
    out = []
    at = 0
    while at < len(body):
        if at + 6 > len(body):
            raise MalformedPDU(REASON_INVALID_PARAMETER, "a PDV item header is cut off")
        length, cx, control = PDV.unpack_from(body, at)
        if length < 2 or at + 4 + length > len(body):
            raise MalformedPDU(REASON_INVALID_PARAMETER, "a PDV item length is wrong")
        out.append((cx, control, bytes(body[at + 6 : at + 4 + length])))
        at += 4 + length
    return out


def encode_associate_rq(rq: AssociateRequest) -> bytes:
    """An A-ASSOCIATE-RQ (for tests and the round trip of the parser)."""
    items = [_item(0x10, _uid(rq.application_context))]
    for cx in rq.contexts:
        subs = _item(0x30, _uid(cx.abstract_syntax))
        subs += b"".join(_item(0x40, _uid(ts)) for ts in cx.transfer_syntaxes)
        items.append(_item(0x20, bytes((cx.context_id, 0, 0, 0)) + subs))
    user = [_item(0x51, struct.pack(">L", rq.user.max_pdu_length))]
    if rq.user.implementation_class_uid:
        user.append(_item(0x52, _uid(rq.user.implementation_class_uid)))
    if rq.user.async_ops is not None:
        user.append(_item(0x53, struct.pack(">HH", *rq.user.async_ops)))
    for uid, scu, scp in rq.user.roles:
        user.append(_item(0x54, struct.pack(">H", len(uid)) + _uid(uid) + bytes((scu, scp))))
    if rq.user.implementation_version:
        user.append(_item(0x55, rq.user.implementation_version.encode("ascii")))
    items.append(_item(0x50, b"".join(user)))
    fixed = rq.called_ae.encode("ascii").ljust(16) + rq.calling_ae.encode("ascii").ljust(16)
    return _pdu(ASSOCIATE_RQ, struct.pack(">HH", rq.protocol_version, 0) + fixed + bytes(32)
                + b"".join(items))  # fmt: skip
