"""DIMSE command sets (PS3.7 section 9.3 and annex E): group 0000, always
implicit VR little endian, led by (0000,0000) CommandGroupLength.

``decode_command`` reads the few elements the acceptor needs from a received
command set; ``encode_response`` writes the C-ECHO / C-STORE response.
``BadCommand`` (a ``ValueError``) for a command set that cannot be read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101
ELEMENT = struct.Struct("<HHL")  # group, element, length (implicit VR)

# element numbers in group 0000
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000


class BadCommand(ValueError):
    """A command set that is not one: wrong group, lengths past its end, a required
    element missing."""


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    sop_class: str
    sop_instance: str
    has_data_set: bool


def _elements(data: bytes) -> dict[int, bytes]:
    values: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        if at + 8 > len(data):
            raise BadCommand("a command element header is cut off")
        group, element, length = ELEMENT.unpack_from(data, at)
        if group != 0x0000:
            raise BadCommand(f"element ({group:04X},{element:04X}) outside group 0000")
        if at + 8 + length > len(data):
            raise BadCommand(f"(0000,{element:04X}) runs past the command set")
        values[element] = data[at + 8 : at + 8 + length]
        at += 8 + length
    return values


def _us(values: dict[int, bytes], element: int, keyword: str) -> int:
    raw = values.get(element)
    if raw is None or len(raw) != 2:
        raise BadCommand(f"(0000,{element:04X}) {keyword} missing or not US")
    return int(struct.unpack("<H", raw)[0])


def _ui(values: dict[int, bytes], element: int) -> str:
    return values.get(element, b"").decode("ascii", "replace").strip("\0 ")


def decode_command(data: bytes) -> Command:
    values = _elements(data)
    return Command(
        command_field=_us(values, _COMMAND_FIELD, "CommandField"),
        message_id=_us(values, _MESSAGE_ID, "MessageID"),
        sop_class=_ui(values, _AFFECTED_SOP_CLASS),
        sop_instance=_ui(values, _AFFECTED_SOP_INSTANCE),
        has_data_set=_us(values, _DATA_SET_TYPE, "CommandDataSetType") != NO_DATA_SET,
    )


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set of (element, value) in group 0000, sorted, with its group length."""
    body = b"".join(ELEMENT.pack(0, element, len(value)) + value
                    for element, value in sorted(elements))  # fmt: skip
    return ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def _uid(value: str) -> bytes:
    return _even(value.encode("ascii", "replace")[:64], b"\0")


def encode_response(request: Command, status: int, comment: str = "") -> bytes:
    """The response to ``request`` (C-ECHO-RSP, C-STORE-RSP, or the response
    field of any other request), with ErrorComment when one is given."""
    elements = [
        (_AFFECTED_SOP_CLASS, _uid(request.sop_class)),
        (_COMMAND_FIELD, struct.pack("<H", request.command_field | 0x8000)),
        (_MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id)),
        (_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        (_STATUS, struct.pack("<H", status)),
    ]
    if request.sop_instance:
        elements.append((_AFFECTED_SOP_INSTANCE, _uid(request.sop_instance)))
    if comment and status != 0:
        elements.append((_ERROR_COMMENT, _even(comment.encode("ascii", "replace")[:64], b" ")))
    return encode_command(elements)


def encode_request(command: Command, priority: int = 0) -> bytes:
    """A C-ECHO-RQ or C-STORE-RQ command set (for tests)."""
    elements = [
        (_AFFECTED_SOP_CLASS, _uid(command.sop_class)),
        (_COMMAND_FIELD, struct.pack("<H", command.command_field)),
        (_MESSAGE_ID, struct.pack("<H", command.message_id)),
        (_DATA_SET_TYPE, struct.pack("<H", 0x0000 if command.has_data_set else NO_DATA_SET)),
    ]
    if command.command_field == C_STORE_RQ:
        elements.append((_PRIORITY, struct.pack("<H", priority)))
    if command.sop_instance:
        elements.append((_AFFECTED_SOP_INSTANCE, _uid(command.sop_instance)))
    return encode_command(elements)


def response_status(data: bytes) -> tuple[int, int, str]:
    """(command field, status, error comment) of a response (for tests)."""
    values = _elements(data)
    comment = values.get(_ERROR_COMMENT, b"").decode("ascii", "replace").strip()
    return _us(values, _COMMAND_FIELD, "CommandField"), _us(values, _STATUS, "Status"), comment
