"""The audit exporter: the audit topic, as DICOM audit messages (PS3.15 A.5), to a syslog
receiver over TLS (RFC 5424 messages in RFC 5425 octet-counting frames).

At least once: a consumer group (STRATA_AUDIT_EXPORT_GROUP) commits its offset only after the
messages before it were written to the receiver's TLS connection; a failed connection or a
crash re-sends from the last commit (a receiver may then see a message twice: each carries its
event id as the syslog MSGID's companion, ``EventID`` plus the ``strata@event`` SD-ID, so a
collector can drop duplicates).

Mapping of the archive's actions to PS3.15 A.5.3 messages (EventID, EventActionCode):
store -> DICOM Instances Transferred (110104, C); retrieve -> DICOM Instances Transferred
(110104, R); view -> DICOM Instances Accessed (110103, R); query -> Query (110112, E);
delete -> DICOM Study Deleted (110105, D); hold place/release -> DICOM Instances Accessed
(110103, U); outbox redrive -> Application Activity (110100, E); auth failure -> User
Authentication (110114, E, type Login 110122); association rejected -> Security Alert
(110113, E, type Node Authentication 110126); audit read -> Audit Log Used (110101, R).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import select
import signal
import socket
import ssl
import threading
import time
from datetime import UTC
from typing import Any
from xml.etree import ElementTree as ET

from strata.common.events import decode, event_time
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# action -> (EventID code, its meaning, EventActionCode, EventTypeCode or None)
EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "store": ("110104", "DICOM Instances Transferred", "C", None),
    "retrieve": ("110104", "DICOM Instances Transferred", "R", None),
    "view": ("110103", "DICOM Instances Accessed", "R", None),
    "query": ("110112", "Query", "E", None),
    "delete": ("110105", "DICOM Study Deleted", "D", None),
    "hold-place": ("110103", "DICOM Instances Accessed", "U", None),
    "hold-release": ("110103", "DICOM Instances Accessed", "U", None),
    "outbox-redrive": ("110100", "Application Activity", "E", None),
    "auth-failure": ("110114", "User Authentication", "E", ("110122", "Login")),
    "association-rejected": ("110113", "Security Alert", "E", ("110126", "Node Authentication")),
    "audit-read": ("110101", "Audit Log Used", "R", None),
}
OUTCOMES = {"success": "0", "minor-failure": "4", "serious-failure": "8"}
SOURCE, DESTINATION = ("110153", "Source Role ID"), ("110152", "Destination Role ID")


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def _host(peer: str) -> str:
    """ "ip:port", "ipv4:ip:port" (gRPC), "[v6]:port" -> the address."""
    p = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if p.startswith("["):
        return p[1 : p.find("]")]
    return p.rsplit(":", 1)[0] if p.count(":") == 1 else p


def audit_message(env: pb.Envelope) -> bytes:
    """The PS3.15 A.5 AuditMessage XML of an AuditEvent envelope (UTF-8)."""
    a = env.audit_event
    event_id, meaning, action_code, type_code = EVENTS.get(
        a.action, ("110100", "Application Activity", "E", None)
    )
    root = ET.Element("AuditMessage")
    ev = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": event_time(env.occurred_at).astimezone(UTC).isoformat(),
            "EventOutcomeIndicator": OUTCOMES.get(a.outcome, "8"),
        },
    )
    _code(ev, "EventID", event_id, "DCM", meaning)
    if type_code is not None:
        _code(ev, "EventTypeCode", type_code[0], "DCM", type_code[1])
    status = (
        f"DIMSE status 0x{a.dicom_status:04X}"
        if a.dicom_status
        else f"HTTP {a.http_status}"
        if a.http_status
        else f"gRPC {a.grpc_code}"
        if a.grpc_code and a.grpc_code != "OK"
        else ""
    )
    description = "; ".join(x for x in (status, a.what.detail) if x)
    if description:
        ET.SubElement(ev, "EventOutcomeDescription").text = description

    # the requestor; then the archive's process
    who = a.who
    requestor = {
        "UserID": who.user or who.calling_ae_title or who.cert_subject or "unknown",
        "UserIsRequestor": "true",
    }
    alt = who.client_id or who.cert_fingerprint
    if alt:
        requestor["AlternativeUserID"] = alt
    if who.cert_subject:
        requestor["UserName"] = who.cert_subject
    elif who.user and who.calling_ae_title:
        requestor["UserName"] = who.calling_ae_title
    if a.where.peer_address:
        requestor["NetworkAccessPointID"] = _host(a.where.peer_address)
        requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
    ap = ET.SubElement(root, "ActiveParticipant", requestor)
    archive = {
        "UserID": who.called_ae_title or f"{env.producer.service}@{a.where.node}",
        "AlternativeUserID": f"{env.producer.service}@{a.where.node}",
        "UserIsRequestor": "false",
        "NetworkAccessPointID": a.where.node,
        "NetworkAccessPointTypeCode": "1",  # machine name
    }
    ap2 = ET.SubElement(root, "ActiveParticipant", archive)
    if a.action == "store":
        _code(ap, "RoleIDCode", *SOURCE[:1], "DCM", SOURCE[1])
        _code(ap2, "RoleIDCode", *DESTINATION[:1], "DCM", DESTINATION[1])
    elif a.action in ("retrieve", "view"):
        _code(ap, "RoleIDCode", *DESTINATION[:1], "DCM", DESTINATION[1])
        _code(ap2, "RoleIDCode", *SOURCE[:1], "DCM", SOURCE[1])

    src = ET.SubElement(
        root, "AuditSourceIdentification", {"AuditSourceID": a.where.node or "strata"}
    )
    _code(src, "AuditSourceTypeCode", "4", "DCM", "Application Server")

    if a.action == "query":
        q = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": a.what.sop_class_uid or a.what.method or "query",
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(q, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        keys = {"QueryRetrieveLevel": a.what.query_level, **dict(a.what.query_keys)}
        ET.SubElement(q, "ParticipantObjectQuery").text = base64.b64encode(
            json.dumps(keys, sort_keys=True).encode()
        ).decode()
        ET.SubElement(
            q, "ParticipantObjectDetail", {"type": "interface", "value": _b64(a.where.interface)}
        )
    for study in a.what.study_instance_uids:
        so = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(so, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        desc = ET.SubElement(so, "ParticipantObjectDescription")
        if a.what.instances:
            attrs = {"NumberOfInstances": str(a.what.instances)}
            if a.what.sop_class_uid and a.action != "query":
                attrs["UID"] = a.what.sop_class_uid
            ET.SubElement(desc, "SOPClass", attrs)
    for patient in a.what.patient_ids:
        po = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": patient,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _code(po, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    # one line: syslog receivers escape control characters (a newline becomes "#012")
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="utf-8")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def syslog_frame(env: pb.Envelope, hostname: str = "") -> bytes:
    """One RFC 5424 message in an RFC 5425 frame: ``MSG-LEN SP SYSLOG-MSG``. Facility 10
    (security/authorization), severity 5 (notice) or 4 (warning) when the outcome is a failure."""
    a = env.audit_event
    pri = 10 * 8 + (5 if a.outcome == "success" else 4)
    ts = event_time(env.occurred_at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    host = _sd_safe(hostname or a.where.node or "-", 255)
    sd = f'[strata@32473 eventId="{_sd_escape(env.event_id)}"]'
    header = f"<{pri}>1 {ts} {host} strata - IHE+RFC-3881 {sd} ".encode()
    msg = header + b"\xef\xbb\xbf" + audit_message(env)
    return str(len(msg)).encode() + b" " + msg


def _sd_safe(text: str, most: int) -> str:
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:most]
    return out or "-"


def _sd_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


# ------------------------------------------------------------------------------ the exporter


def tls_context(settings: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=settings.audit_syslog_ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.audit_syslog_cert:
        ctx.load_cert_chain(settings.audit_syslog_cert, settings.audit_syslog_key or None)
    return ctx


class Exporter:
    """Audit topic -> syslog receiver. ``run_once`` sends what is there and commits."""

    def __init__(self, settings: Any, consumer: Any = None) -> None:
        from strata.common import kafka

        if not settings.audit_syslog:
            raise ValueError("STRATA_AUDIT_SYSLOG (host:port of the receiver) is not set")
        host, _, port = settings.audit_syslog.rpartition(":")
        self.address = (host.strip("[]"), int(port))
        self.ctx = tls_context(settings)
        self.consumer = consumer or kafka.consumer(
            settings,
            settings.audit_export_group,
            "audit-export",
            {"auto.offset.reset": "earliest"},
        )
        self.consumer.subscribe([settings.audit_topic])
        self.hostname = settings.node_name
        self.sock: ssl.SSLSocket | None = None
        self.sent = 0

    def _connect(self) -> ssl.SSLSocket:
        if self.sock is not None and not self._alive(self.sock):
            self._drop_connection()  # the receiver closed it (restart): a new one
        if self.sock is None:
            raw = socket.create_connection(self.address, timeout=10)
            self.sock = self.ctx.wrap_socket(raw, server_hostname=self.address[0])
        return self.sock

    @staticmethod
    def _alive(sock: ssl.SSLSocket) -> bool:
        """Whether the receiver has not closed the connection (RFC 5425 has no
        acknowledgements: a write into a connection the peer already closed would succeed
        locally and be lost, so a closed one is detected before writing)."""
        if not select.select([sock], [], [], 0)[0]:
            return True
        sock.setblocking(False)
        try:
            return sock.recv(1024) != b""  # a receiver has nothing to say but may close
        except ssl.SSLWantReadError:
            return True  # TLS records without data (session tickets)
        except OSError:
            return False
        finally:
            sock.setblocking(True)
            sock.settimeout(10)

    def _drop_connection(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def run_once(self, max_records: int = 500, timeout: float = 1.0) -> int:
        """Send up to ``max_records`` and commit them; returns how many were sent. A send that
        fails raises OSError after rewinding the consumer to its last commit."""
        msgs = self.consumer.consume(max_records, timeout)
        frames = []
        for m in msgs:
            if m.error():
                continue
            try:
                env = decode(m.value() or b"")
            except Exception:  # noqa: BLE001 - undecodable: kept in the log, not exported
                log.error("undecodable audit record at offset %d skipped", m.offset())
                continue
            if env.WhichOneof("payload") == "audit_event":
                frames.append(syslog_frame(env, self.hostname))
        if not msgs:
            return 0
        try:
            if frames:
                self._connect().sendall(b"".join(frames))
        except OSError:
            self._drop_connection()
            self._rewind()
            raise
        self.consumer.commit(asynchronous=False)
        self.sent += len(frames)
        return len(frames)

    def _rewind(self) -> None:
        """Back to the committed offsets (what was read since is read and sent again)."""
        from confluent_kafka import OFFSET_BEGINNING

        parts = self.consumer.assignment()
        for tp in self.consumer.committed(parts, timeout=10):
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
            self.consumer.seek(tp)

    def close(self) -> None:
        self._drop_connection()
        self.consumer.close()


def run(settings: Any, stop: threading.Event | None = None) -> int:
    """``strata audit export``: until SIGTERM/SIGINT (or ``stop``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    exporter = Exporter(settings)
    log.info("exporting the audit trail to %s:%d", *exporter.address)
    backoff = 1.0
    try:
        while not stop.is_set():
            try:
                exporter.run_once()
                backoff = 1.0
            except OSError as exc:
                log.warning("syslog receiver %s:%d: %s (retrying)", *exporter.address, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        exporter.close()
    log.info("audit export stopped after %d messages", exporter.sent)
    return 0


def wait_sent(exporter: Exporter, n: int, timeout: float = 60.0) -> int:
    """Run the exporter until ``n`` messages were sent (tests)."""
    deadline = time.monotonic() + timeout
    while exporter.sent < n and time.monotonic() < deadline:
        exporter.run_once(timeout=0.5)
    return exporter.sent
