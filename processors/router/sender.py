"""Sending routed instances to a destination AE over one association (pynetdicom SCU).

Without transcoding the stored bytes go out unchanged (query.retrieve's raw send). With
transcoding the dataset is decoded and re-encoded losslessly in the target syntax (pydicom with
the pylibjpeg / pyjpegls codecs); a transcoded object keeps its SOP Instance UID, as the
lossless conversion leaves the image unchanged (PS3.5 A.4, PS3.3 C.12.1.1.5 lossy only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from processors.router.rules import Destination, Member
from proto.strata.v1 import events_pb2 as pb
from query.retrieve import Located, StoredInstance

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


def transcode(path: Path, target: str) -> Dataset:
    ds = dcmread(path)
    current = ds.file_meta.TransferSyntaxUID
    if current == target:
        return ds
    # Lossless: the same instance, so the SOP Instance UID is kept (pydicom's default for both
    # decompress and compress is a new one).
    if current.is_compressed and "PixelData" in ds:
        ds.decompress(generate_instance_uid=False)
    if "PixelData" in ds and target not in (*_UNCOMPRESSED, DeflatedExplicitVRLittleEndian):
        ds.compress(UID(target), generate_instance_uid=False)
        return ds
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def _contexts(items: list[Item]) -> list[object]:
    seen: dict[str, set[str]] = {}
    for it in items:
        syntaxes = seen.setdefault(it.inst.sop_class_uid, set())
        if it.transcode_to:
            syntaxes.add(it.transcode_to)
        else:
            syntaxes.add(it.inst.transfer_syntax_uid)
            if it.inst.transfer_syntax_uid in (*_UNCOMPRESSED, ExplicitVRBigEndian):
                syntaxes.update(_UNCOMPRESSED)
    # Verification too: the association then stands even when the peer accepts none of the
    # storage contexts, and each instance gets the precise reason instead of a failed association.
    return [build_context(Verification)] + [
        build_context(cls, sorted(ts)) for cls, ts in sorted(seen.items())
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
    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout
    ae.connection_timeout = min(dest.timeout, 10.0)
    ae.maximum_pdu_size = 0  # no limit on what we receive; the peer's limit applies to sends
    ae.requested_contexts = _contexts(items)[:128]
    try:
        assoc = ae.associate(member.host, member.port, ae_title=member.ae_title)
    except Exception as exc:  # noqa: BLE001 - any socket failure is a failed attempt
        assoc = None
        why = f"cannot connect to {member.address}: {exc}"
    else:
        why = (
            f"association rejected by {member.ae_title}@{member.address}"
            if assoc.is_rejected
            else f"association with {member.ae_title}@{member.address} failed (aborted or refused)"
        )
    if assoc is None or not assoc.is_established:
        for it in items:
            report(Result(it, "retry", 0, why))
        return False
    ok = True
    try:
        for n, it in enumerate(items):
            if not assoc.is_established:
                for rest in items[n:]:
                    report(Result(rest, "unattempted", 0, "association lost"))
                ok = False
                break
            report(_send_one(assoc, it, local_path, throttle, member))
    finally:
        if assoc.is_established:
            assoc.release()
    return ok


def _send_one(
    assoc: object,
    it: Item,
    local_path: Callable[[pb.RoutedInstance], Path],
    throttle: Throttle,
    member: Member,
) -> Result:
    inst = it.inst
    target = it.transcode_to or inst.transfer_syntax_uid
    try:
        path = local_path(inst)
    except Exception as exc:  # noqa: BLE001 - not readable now (e.g. cold tier down): retry
        return Result(it, "retry", 0, f"object not readable: {exc}")
    accepted = [
        cx
        for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
        if cx.abstract_syntax == inst.sop_class_uid
    ]
    if not accepted:
        return Result(
            it,
            "rejected",
            0,
            f"{member.ae_title} accepted no presentation context for SOP class "
            f"{inst.sop_class_uid} in {target}",
        )
    syntaxes = {cx.transfer_syntax[0] for cx in accepted}
    try:
        if it.transcode_to:
            if target not in syntaxes:
                return Result(it, "rejected", 0, f"{member.ae_title} does not accept {target}")
            dataset: Dataset = transcode(path, target)
        else:
            dataset = StoredInstance(located(inst), path)
            if target not in syntaxes:
                target = sorted(syntaxes)[0]  # uncompressed <-> uncompressed: pynetdicom converts
    except Exception as exc:  # noqa: BLE001 - a codec failure is this object's problem
        return Result(it, "rejected", 0, f"cannot transcode to {target}: {exc}")
    throttle.wait()
    try:
        status_ds = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        return Result(it, "retry", 0, f"send failed: {exc}", target)
    status = getattr(status_ds, "Status", None)
    if status is None:
        return Result(
            it, "retry", 0, "no C-STORE response (association aborted or timed out)", target
        )
    outcome = classify(int(status))
    detail = "" if outcome == "delivered" else f"C-STORE status 0x{int(status):04X}"
    comment = getattr(status_ds, "ErrorComment", "")
    if comment and outcome != "delivered":
        detail += f": {comment}"
    return Result(it, outcome, int(status), detail, target)
