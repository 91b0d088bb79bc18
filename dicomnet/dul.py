"""A lean DICOM upper layer (PS3.8) and DIMSE command codec (PS3.7) for the archive's hot paths.

pynetdicom is a complete, general toolkit, and the archive uses it for everything that is not
a hot path. Its per-message cost (a reactor thread polling every millisecond, events, dataset
objects, a state machine in Python) was measured as the ceiling of the receive path: ~7 ms of
CPU per C-STORE on this machine kind. This module is the few hundred lines a C-STORE/C-ECHO
acceptor needs, written so that a received PDU costs one read and a few slices:

- PDUs: A-ASSOCIATE-RQ (parsed) / -AC / -RJ, P-DATA-TF, A-RELEASE-RQ/-RP, A-ABORT (encoded).
- DIMSE command sets: implicit VR little endian group 0000 elements, decoded into a dict of
  raw values, encoded from (tag, value) pairs.

Everything here is pure bytes-in/bytes-out (unit-tested against pynetdicom's own encoder);
the socket loops live in ``acceptor.py`` and ``requestor.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_NO_REASON = 1
RJ_APP_CONTEXT_NOT_SUPPORTED = 2
RJ_CALLING_AE_NOT_RECOGNIZED = 3
RJ_CALLED_AE_NOT_RECOGNIZED = 7
RJ_PROTOCOL_VERSION = 2  # with source ACSE
RJ_LOCAL_LIMIT_EXCEEDED = 2  # with source presentation (transient)

# Presentation context results (PS3.8 9.3.3.2)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ABORT source / reason (PS3.8 9.3.8)
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER = 6

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
HAS_DATASET = 0x0001

# Command elements (group 0000), as 32-bit tags
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
COMMAND_DATASET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000
MOVE_ORIGINATOR_AE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031
REMAINING = 0x00001020
COMPLETED = 0x00001021
FAILED = 0x00001022
WARNING = 0x00001023

_US = {
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    COMMAND_DATASET_TYPE,
    STATUS,
    MOVE_ORIGINATOR_MESSAGE_ID,
    REMAINING,
    COMPLETED,
    FAILED,
    WARNING,
}
_UI = {AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID}

_HDR = struct.Struct(">BBL")
_PDV = struct.Struct(">LBB")
_ITEM = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The peer sent something PS3.8 does not allow; the association is aborted."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- PDU framing


def read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise ConnectionError("connection closed by the peer")
    return data


def read_pdu_header(f: BinaryIO, max_length: int, first: bytes = b"") -> tuple[int, int]:
    """The type and length of the next PDU (``first``: its first byte, already read). A
    P-DATA-TF is bounded by the maximum length this node announced (0 = unlimited; a little
    slack for requestors that count the PDV header differently); association PDUs are small."""
    pdu_type, _, length = _HDR.unpack(first + read_exact(f, 6 - len(first)))
    limit = 1 << 20
    if pdu_type == P_DATA_TF:
        limit = max_length + 1024 if max_length else 1 << 32
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes exceeds the maximum length")
    return pdu_type, length


def read_pdu(f: BinaryIO, max_length: int) -> tuple[int, bytes]:
    """One whole PDU from a buffered reader: (type, body). EOF -> ConnectionError."""
    pdu_type, length = read_pdu_header(f, max_length)
    return pdu_type, read_exact(f, length)


def read_pdv_header(f: BinaryIO) -> tuple[int, int, int]:
    """(data length, presentation context id, message control header) of the next PDV."""
    length, pc_id, mch = _PDV.unpack(read_exact(f, 6))
    if length < 2:
        raise ProtocolError("PDV item length out of range")
    return length - 2, pc_id, mch


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HDR.pack(pdu_type, 0, len(body)) + body


def iter_pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """The PDVs of a P-DATA-TF body: (presentation context id, message control header, data)."""
    out = []
    mv = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < 6:
            raise ProtocolError("truncated PDV item")
        length, pc_id, mch = _PDV.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError("PDV item length out of range")
        out.append((pc_id, mch, mv[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return out


def p_data(
    pc_id: int, data: bytes | bytearray | memoryview, command: bool, max_pdu: int, last: bool = True
) -> bytearray:
    """``data`` as P-DATA-TF PDUs of at most ``max_pdu`` bytes (0 = unlimited), the final one
    flagged last unless ``last`` is False (more fragments of the message follow). The data
    is copied once, into the returned buffer."""
    chunk = len(data) if max_pdu == 0 else max(1, max_pdu - 6)
    data = memoryview(data)
    out = bytearray()
    pos = 0
    while True:
        piece = data[pos : pos + chunk]
        pos += len(piece)
        final = pos >= len(data)
        mch = (0x01 if command else 0x00) | (0x02 if final and last else 0x00)
        out += _HDR.pack(P_DATA_TF, 0, len(piece) + 6)
        out += _PDV.pack(len(piece) + 2, pc_id, mch)
        out += piece
        if final:
            return out


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, b"\0\0\0\0")


def release_rp() -> bytes:
    return pdu(RELEASE_RP, b"\0\0\0\0")


def abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    return pdu(ABORT, bytes((0, 0, source, reason)))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


# --------------------------------------------------------------------------- association


@dataclass
class PresentationContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]
    result: int = PC_NO_REASON
    transfer_syntax: str = ""  # the accepted one


@dataclass
class AssociateRQ:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str = ""
    contexts: list[PresentationContext] = field(default_factory=list)
    max_length: int = 0  # the requestor's maximum P-DATA-TF length (0 = unlimited)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    # SOP class UID -> (SCU role, SCP role) proposed
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)
    async_ops: tuple[int, int] | None = None


def _uid(b: bytes | memoryview) -> str:
    return bytes(b).rstrip(b"\0 ").decode("ascii", "replace").strip()


def _ae(b: bytes | memoryview) -> str:
    return bytes(b).decode("ascii", "replace").strip(" \0")


def _variable_items(body: bytes, pdu_name: str) -> list[tuple[int, bytes]]:
    """(item type, value) of each variable item of an A-ASSOCIATE-RQ/-AC body (PS3.8 9.3.2,
    9.3.3: after the 68-byte fixed part)."""
    if len(body) < 68:
        raise ProtocolError(f"{pdu_name} too short")
    items = []
    pos, end = 68, len(body)
    while pos < end:
        if end - pos < 4:
            raise ProtocolError(f"truncated {pdu_name} item")
        item, _, length = _ITEM.unpack_from(body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if len(value) < length:
            raise ProtocolError(f"{pdu_name} item length out of range")
        pos += 4 + length
        items.append((item, value))
    return items


def parse_associate_rq(body: bytes) -> AssociateRQ:
    items = _variable_items(body, "A-ASSOCIATE-RQ")
    (version,) = struct.unpack_from(">H", body, 0)
    rq = AssociateRQ(version, _ae(body[4:20]), _ae(body[20:36]))
    for item, value in items:
        if item == 0x10:
            rq.application_context = _uid(value)
        elif item == 0x20:
            rq.contexts.append(_parse_context(value))
        elif item == 0x50:
            _parse_user_info(value, rq)
        else:
            raise ProtocolError(f"unknown A-ASSOCIATE-RQ item 0x{item:02X}", 4)
    return rq


def _parse_context(value: bytes) -> PresentationContext:
    if len(value) < 4:
        raise ProtocolError("truncated presentation context item")
    pc = PresentationContext(value[0], "", [])
    pos = 4
    while pos < len(value):
        if len(value) - pos < 4:
            raise ProtocolError("truncated presentation context sub-item")
        sub, _, length = _ITEM.unpack_from(value, pos)
        if pos + 4 + length > len(value):
            raise ProtocolError("presentation context sub-item length out of range")
        uid = _uid(value[pos + 4 : pos + 4 + length])
        pos += 4 + length
        if sub == 0x30:
            pc.abstract_syntax = uid
        elif sub == 0x40:
            pc.transfer_syntaxes.append(uid)
    return pc


def _parse_user_info(value: bytes, rq: AssociateRQ) -> None:
    pos = 0
    while pos < len(value):
        if len(value) - pos < 4:
            raise ProtocolError("truncated user information sub-item")
        sub, _, length = _ITEM.unpack_from(value, pos)
        if pos + 4 + length > len(value):
            raise ProtocolError(f"user information sub-item 0x{sub:02X} length out of range")
        v = value[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if sub == 0x51:
            if length != 4:
                raise ProtocolError("maximum length sub-item of the wrong length")
            (rq.max_length,) = struct.unpack(">L", v)
        elif sub == 0x52:
            rq.implementation_class_uid = _uid(v)
        elif sub == 0x55:
            rq.implementation_version_name = _ae(v)
        elif sub == 0x53:
            if length != 4:
                raise ProtocolError("asynchronous operations sub-item of the wrong length")
            rq.async_ops = struct.unpack(">HH", v)
        elif sub == 0x54:
            if length < 2:
                raise ProtocolError("role selection sub-item too short")
            (n,) = struct.unpack_from(">H", v, 0)
            if length != 4 + n:
                raise ProtocolError("role selection sub-item of the wrong length")
            rq.roles[_uid(v[2 : 2 + n])] = (v[2 + n], v[3 + n])
        # 0x56 / 0x57 extended negotiation, 0x58 user identity: not negotiated (ignored;
        # PS3.7 D.3.3: an acceptor that does not support them simply omits the reply)


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, 0, len(value)) + value


def _ascii(s: str) -> bytes:
    return s.encode("ascii")


def associate_ac(
    rq: AssociateRQ,
    max_length: int,
    implementation_uid: str,
    implementation_version: str,
    role_reply: Callable[[str, int, int], tuple[int, int]] | None = None,
) -> bytes:
    """The A-ASSOCIATE-AC for ``rq`` whose contexts carry their result / transfer syntax.

    ``role_reply(sop_class, scu, scp)`` answers each proposed SCP/SCU role selection of an
    accepted SOP class; by default the requestor may be SCU (it sends) and never SCP."""
    body = bytearray(struct.pack(">HH", 1, 0))
    body += rq.called_ae.encode("ascii", "replace")[:16].ljust(16)
    body += rq.calling_ae.encode("ascii", "replace")[:16].ljust(16)
    body += b"\0" * 32
    body += _item(0x10, _ascii(APPLICATION_CONTEXT))
    for pc in rq.contexts:
        ts = pc.transfer_syntax if pc.result == PC_ACCEPTANCE else ""
        body += _item(0x21, bytes((pc.id, 0, pc.result, 0)) + _item(0x40, _ascii(ts)))
    user = bytearray(_item(0x51, struct.pack(">L", max_length)))
    user += _item(0x52, _ascii(implementation_uid))
    accepted = {pc.abstract_syntax for pc in rq.contexts if pc.result == PC_ACCEPTANCE}
    for uid, (scu, scp) in rq.roles.items():
        if uid in accepted:
            reply = role_reply(uid, scu, scp) if role_reply else (scu & 1, 0)
            u = _ascii(uid)
            user += _item(0x54, struct.pack(">H", len(u)) + u + bytes(reply))
    user += _item(0x55, _ascii(implementation_version[:16]))
    body += _item(0x50, bytes(user))
    return pdu(ASSOCIATE_AC, bytes(body))


def associate_rq(
    called_ae: str,
    calling_ae: str,
    contexts: list[tuple[int, str, list[str]]],
    max_length: int,
    implementation_uid: str,
    implementation_version: str,
    roles: dict[str, tuple[int, int]] | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` ((id, abstract syntax, transfer syntaxes))."""
    body = bytearray(struct.pack(">HH", 1, 0))
    body += called_ae.encode("ascii", "replace")[:16].ljust(16)
    body += calling_ae.encode("ascii", "replace")[:16].ljust(16)
    body += b"\0" * 32
    body += _item(0x10, _ascii(APPLICATION_CONTEXT))
    for pc_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _ascii(abstract)) + b"".join(_item(0x40, _ascii(t)) for t in syntaxes)
        body += _item(0x20, bytes((pc_id, 0, 0, 0)) + sub)
    user = bytearray(_item(0x51, struct.pack(">L", max_length)))
    user += _item(0x52, _ascii(implementation_uid))
    for uid, (scu, scp) in (roles or {}).items():
        u = _ascii(uid)
        user += _item(0x54, struct.pack(">H", len(u)) + u + bytes((scu, scp)))
    user += _item(0x55, _ascii(implementation_version[:16]))
    body += _item(0x50, bytes(user))
    return pdu(ASSOCIATE_RQ, bytes(body))


@dataclass
class AssociateAC:
    contexts: dict[int, tuple[int, str]]  # id -> (result, transfer syntax)
    max_length: int = 0  # the acceptor's maximum P-DATA-TF length (0 = unlimited)
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)


def parse_associate_ac(body: bytes) -> AssociateAC:
    ac = AssociateAC({})
    for item, value in _variable_items(body, "A-ASSOCIATE-AC"):
        if item == 0x21 and len(value) >= 4:
            ts = ""
            sub = 4
            while sub + 4 <= len(value):
                sub_type, _, n = _ITEM.unpack_from(value, sub)
                if sub_type == 0x40:
                    ts = _uid(value[sub + 4 : sub + 4 + n])
                sub += 4 + n
            ac.contexts[value[0]] = (value[2], ts)
        elif item == 0x50:
            rq = AssociateRQ(1, "", "")
            _parse_user_info(value, rq)
            ac.max_length, ac.roles = rq.max_length, rq.roles
    return ac


# --------------------------------------------------------------------------- DIMSE commands


def decode_command(data: bytes | bytearray) -> dict[int, bytes]:
    """A command set (implicit VR little endian) as {tag: raw value}."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    mv = memoryview(data)
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("truncated command set")
        group, elem, length = struct.unpack_from("<HHL", data, pos)
        if group != 0 or pos + 8 + length > end:
            raise ProtocolError("malformed command set")
        out[elem] = bytes(mv[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return out


def us(cmd: dict[int, bytes], tag: int, default: int = -1) -> int:
    v = cmd.get(tag)
    return struct.unpack("<H", v[:2])[0] if v is not None and len(v) >= 2 else default


def text(cmd: dict[int, bytes], tag: int) -> str:
    v = cmd.get(tag)
    return _uid(v) if v is not None else ""


def encode_command(elements: list[tuple[int, int | str]]) -> bytes:
    """A command set from (tag, value) pairs (US ints, UI/AE/LO strings), group length first."""
    body = bytearray()
    for tag, value in sorted(elements):
        if tag in _US:
            v = struct.pack("<H", int(value))
        else:
            v = str(value).encode("ascii", "replace")
            if len(v) % 2:
                v += b"\0" if tag in _UI else b" "
        body += struct.pack("<HHL", 0, tag & 0xFFFF, len(v)) + v
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + bytes(body)


def response(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    status: int,
    sop_instance_uid: str = "",
    error_comment: str = "",
) -> bytes:
    """A C-STORE-RSP / C-ECHO-RSP command set."""
    elements: list[tuple[int, int | str]] = [
        (AFFECTED_SOP_CLASS_UID, sop_class_uid),
        (COMMAND_FIELD, command_field),
        (MESSAGE_ID_BEING_RESPONDED_TO, message_id),
        (COMMAND_DATASET_TYPE, NO_DATASET),
        (STATUS, status),
    ]
    if sop_instance_uid:
        elements.append((AFFECTED_SOP_INSTANCE_UID, sop_instance_uid))
    if error_comment:
        elements.append((ERROR_COMMENT, error_comment[:64]))
    return encode_command(elements)


# --------------------------------------------------------------------------- Part 10 meta

_PREAMBLE = b"\0" * 128 + b"DICM"


def file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_uid: str,
    implementation_version: str,
    source_ae: str,
) -> bytes:
    """Preamble, 'DICM' and the File Meta Information (PS3.10 7.1, explicit VR little endian)
    to put before a received dataset so that the stored object is a Part 10 file."""

    def short(elem: int, vr: bytes, value: str, pad: bytes) -> bytes:
        v = value.encode("ascii", "replace")
        if len(v) % 2:
            v += pad
        return struct.pack("<HH2sH", 2, elem, vr, len(v)) + v

    body = struct.pack("<HH2sHL", 2, 1, b"OB", 0, 2) + b"\0\1"
    body += short(0x0002, b"UI", sop_class_uid, b"\0")
    body += short(0x0003, b"UI", sop_instance_uid, b"\0")
    body += short(0x0010, b"UI", transfer_syntax_uid, b"\0")
    body += short(0x0012, b"UI", implementation_uid, b"\0")
    body += short(0x0013, b"SH", implementation_version[:16], b" ")
    if source_ae:
        body += short(0x0016, b"AE", source_ae[:16], b" ")
    return _PREAMBLE + struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body)) + body


# --------------------------------------------------------------------------- DIMSE messages


MAX_COMMAND_BYTES = 64 << 10  # a command set is a few hundred bytes; more is no command


class MessageAssembler:
    """Collects PDV fragments into whole DIMSE messages: (context id, command, dataset bytes
    or None). For services whose datasets are small (identifiers, not images)."""

    def __init__(self, max_dataset: int = 4 << 20) -> None:
        self.max_dataset = max_dataset
        self._cmd = bytearray()
        self._command: dict[int, bytes] | None = None
        self._data = bytearray()
        self._pc = 0

    def feed(
        self, pc_id: int, mch: int, data: memoryview | bytes
    ) -> tuple[int, dict[int, bytes], bytes | None] | None:
        if mch & 0x01:  # command fragment
            if self._command is not None:
                raise ProtocolError("command while a dataset was expected")
            self._cmd += data
            if len(self._cmd) > MAX_COMMAND_BYTES:
                raise ProtocolError("command set too large")
            if not mch & 0x02:
                return None
            cmd = decode_command(self._cmd)
            self._cmd = bytearray()
            if us(cmd, COMMAND_DATASET_TYPE, NO_DATASET) == NO_DATASET:
                return pc_id, cmd, None
            self._command, self._pc = cmd, pc_id
            return None
        if self._command is None or pc_id != self._pc:
            raise ProtocolError("dataset without a command on its presentation context")
        self._data += data
        if len(self._data) > self.max_dataset:
            raise ProtocolError("dataset too large for this service")
        if not mch & 0x02:
            return None
        cmd, self._command = self._command, None
        ds, self._data = bytes(self._data), bytearray()
        return pc_id, cmd, ds
