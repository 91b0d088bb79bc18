"""Sending routed instances to a destination AE over one association (the archive's lean
requestor, ``dicomnet/requestor.py``).

Without a rule's ``transcode`` the stored dataset bytes go out unchanged, read from the file,
when the destination accepts the stored syntax, else converted to one it accepted (each object
is proposed in its stored syntax and in the uncompressed ones). With ``transcode`` the dataset
goes out in that syntax. Conversions are ``archive.transcode``'s (the one transcoding module of
retrieve and routing); a transcoded object keeps its SOP Instance UID (PS3.5 A.4, PS3.3
C.12.1.1.5: lossless conversion, a lossy source stays marked lossy).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from strata.archive import transcode
from strata.dicomnet import dul
from strata.dicomnet.requestor import Requestor
from strata.dicomnet.tls import client_context
from strata.processors.index.port import Located
from strata.processors.router.rules import Destination, Member
from strata.proto.strata.v1 import events_pb2 as pb

VERIFICATION = "1.2.840.10008.1.1"

log = logging.getLogger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Item:
    route_id: str
    inst: pb.RoutedInstance
    transcode_to: str


@dataclass
class Result:
    item: Item
    outcome: str  # "delivered" | "retry" | "rejected" | "unattempted"
    status: int
    detail: str
    transfer_syntax_uid: str = ""
    member: Member | None = None


def located(inst: pb.RoutedInstance) -> Located:
    """A routed instance as the retrieve code's Located (the study UID is not needed)."""
    return Located(
        "",
        inst.series_instance_uid,
        inst.sop_instance_uid,
        inst.sop_class_uid,
        inst.transfer_syntax_uid,
        inst.location.tier,
        inst.location.key,
        int(inst.size_bytes),
        inst.sha256,
    )


def classify(status: int) -> str:
    """C-STORE response status -> outcome (PS3.4 Annex B.2.3, PS3.7 C)."""
    if status == 0x0000 or status in (0xB000, 0xB006, 0xB007):
        return "delivered"  # success or warning: the destination kept the object
    if 0xA700 <= status <= 0xA7FF or status in (0x0213, 0x0210):  # out of resources, busy
        return "retry"
    return "rejected"  # 0xA9xx mismatch, 0xCxxx cannot understand, 0x0122 class unsupported...


def _contexts(items: list[Item]) -> list[tuple[str, list[str]]]:
    """One presentation context per (SOP class, syntax the object goes out in), so the peer
    can accept each on its own; for objects sent as stored also one offering both little
    endian syntaxes (converted then, if the peer takes neither the stored syntax)."""
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    for it in items:
        cls = it.inst.sop_class_uid
        if it.transcode_to:
            seen[(cls, (it.transcode_to,))] = None
        else:
            seen[(cls, (it.inst.transfer_syntax_uid,))] = None
            seen[(cls, tuple(str(t) for t in _UNCOMPRESSED))] = None
    # Verification too: the association then stands even when the peer accepts none of the
    # storage contexts, and each instance gets the precise reason instead of a failed association.
    return [(VERIFICATION, [str(ImplicitVRLittleEndian)])] + [
        (cls, list(ts)) for cls, ts in sorted(seen)
    ]


class Throttle:
    """Instances per second for one destination (shared by its associations)."""

    def __init__(self, per_second: float) -> None:
        import threading

        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(at - now)


_tls_contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}


def _tls(dest: Destination) -> ssl.SSLContext | None:
    """The destination's DICOM TLS client context (one per CA/certificate, reused)."""
    if not dest.tls:
        return None
    key = (dest.tls_ca, dest.tls_cert, dest.tls_key)
    ctx = _tls_contexts.get(key)
    if ctx is None:
        ctx = _tls_contexts[key] = client_context(*key)
    return ctx


def send(
    dest: Destination,
    member: Member,
    items: list[Item],
    local_path: Callable[[pb.RoutedInstance], Path],
    throttle: Throttle,
    report: Callable[[Result], None],
) -> bool:
    """Send ``items`` over one association; ``report`` is called once per item, as soon as its
    outcome is known. Returns False when the member could not be reached (for its cool-down)."""
    try:
        assoc = Requestor(
            member.host,
            member.port,
            dest.calling_ae,
            member.ae_title,
            _contexts(items)[:128],
            timeout=dest.timeout,
            tls=_tls(dest),
        )
    except dul.ProtocolError as exc:
        assoc, why = None, f"association with {member.ae_title}@{member.address} failed: {exc}"
    except ConnectionError as exc:
        assoc = None
        why = (
            f"association rejected by {member.ae_title}@{member.address}: {exc}"
            if "rejected" in str(exc)
            else f"association with {member.ae_title}@{member.address} failed: {exc}"
        )
    except OSError as exc:
        assoc, why = None, f"cannot connect to {member.address}: {exc}"
    if assoc is None:
        for it in items:
            report(Result(it, "retry", 0, why))
        return False
    ok = True
    try:
        for n, it in enumerate(items):
            if assoc.lost:
                for rest in items[n:]:
                    report(Result(rest, "unattempted", 0, "association lost"))
                ok = False
                break
            report(_send_one(assoc, it, local_path, throttle, member, n + 1))
    finally:
        if assoc.lost:
            assoc.abort()
        else:
            assoc.release()
    return ok


def _send_one(
    assoc: Requestor,
    it: Item,
    local_path: Callable[[pb.RoutedInstance], Path],
    throttle: Throttle,
    member: Member,
    msg_id: int,
) -> Result:
    inst = it.inst
    target = it.transcode_to or inst.transfer_syntax_uid
    try:
        path = local_path(inst)
    except Exception as exc:  # noqa: BLE001 - not readable now (e.g. cold tier down): retry
        return Result(it, "retry", 0, f"object not readable: {exc}")
    # accepted transfer syntax -> context id, for this SOP class (in proposal order)
    syntaxes: dict[str, int] = {}
    for pc, (a, ts) in sorted(assoc.accepted.items()):
        if a == inst.sop_class_uid:
            syntaxes.setdefault(ts, pc)
    if not syntaxes:
        return Result(
            it,
            "rejected",
            0,
            f"{member.ae_title} accepted no presentation context for SOP class "
            f"{inst.sop_class_uid} in {target}",
        )
    dataset: bytes | Path
    try:
        if it.transcode_to and target not in syntaxes:
            return Result(it, "rejected", 0, f"{member.ae_title} does not accept {target}")
        if not it.transcode_to:
            # the stored syntax when accepted, else one the object can be converted to
            chosen = transcode.choose(target, syntaxes)
            if chosen is None:
                accepted = ", ".join(sorted(syntaxes))
                return Result(it, "rejected", 0, f"{member.ae_title} accepts only {accepted}")
            target = chosen
        if target == inst.transfer_syntax_uid:
            dataset = path  # the stored dataset bytes, unchanged
        else:
            dataset = transcode.dataset_bytes(path, target)
    except Exception as exc:  # noqa: BLE001 - a codec failure is this object's problem
        return Result(it, "rejected", 0, f"cannot transcode to {target}: {exc}")
    throttle.wait()
    try:
        status, comment = assoc.store(
            syntaxes[target], inst.sop_class_uid, inst.sop_instance_uid, dataset, msg_id % 65536
        )
    except (OSError, dul.ProtocolError) as exc:
        assoc.lost = True
        return Result(
            it, "retry", 0, f"no C-STORE response (association aborted or timed out): {exc}", target
        )
    outcome = classify(status)
    detail = "" if outcome == "delivered" else f"C-STORE status 0x{status:04X}"
    if comment and outcome != "delivered":
        detail += f": {comment}"
    return Result(it, outcome, status, detail, target)
