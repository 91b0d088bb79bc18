"""``strata``: the one command-line entry point.

strata up | down | status          the local stack (embedded default, loopback only)
strata send PATH...                send DICOM files/folders to the ingest SCP (C-STORE)
strata find [--patient-id ...]     search studies (C-FIND) and print a table
strata config                      list every setting with its env name and default
strata route list|show|redrive     routes: decisions, attempts, dead letters; re-drive
strata sql "SELECT ..."            read-only ClickHouse SQL on the live index (docs/analytics.md)
strata hold place|release|list     legal holds on studies (never deleted while held)
strata storage verify              check every object's bytes in its tier; --repair
strata outbox list|redrive         events Kafka refused for good (set aside); re-queue them
strata serve ingest|index|router   run one service in the foreground (used by ``up``)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from strata.cli import audit as cli_audit
from strata.common.errors import StrataError
from strata.common.settings import Settings


def _table(headers: list[str], rows: Iterable[Iterable[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in cells]
    return "\n".join(out)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import local

    print(f"starting the Strata stack (data in {settings.home}) ...", file=sys.stderr)
    print(_profile_line(settings), file=sys.stderr)
    local.up(settings)
    print(_table(["service", "state", "pid", "endpoint"], local.status(settings)))
    return 0


def _profile_line(settings: Settings) -> str:
    """Which security profile runs, and what it turns on (docs/security.md)."""
    from strata.dicomnet.tls import dicom_security

    sec = dicom_security(settings)
    if sec.tls:
        dicom = f"DICOM TLS on (client certificates {sec.client_certs}, CA {sec.ca or 'none'})"
    else:
        dicom = "DICOM TLS off"
    checks = "AE checks on" if sec.ae_checks else "AE checks off"
    from strata.common.kafka import security

    k = "Kafka SASL_SSL + ACLs" if security(settings).sasl else "Kafka plaintext"
    return (
        f"security profile: {sec.profile} ({dicom}; {checks}; {k}; "
        f"listeners on {settings.bind_host})"
    )


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import local

    stopped = local.down(settings)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import local

    rows = local.status(settings)
    print(_table(["service", "state", "pid", "endpoint"], rows))
    _cluster_status(settings)
    _balancer_status(settings)
    _nodes_status(settings)
    detail = local.log_status(settings)
    if detail:
        print()
        print(_table(["topic", "log end", "indexed", "lag", "ingest outbox"], detail))
    print()
    print(_ingest_state(settings))
    print()
    from strata.cli.glance import glance

    print(glance(settings))
    return 0 if all(r[1] == "running" for r in rows) else 3


def _cluster_status(settings: Settings) -> None:
    """On a Kafka cluster: brokers (up, leaderships, ISR membership) and every partition."""
    if settings.kafka_nodes <= 1:
        return
    from strata.stack import cluster

    state = cluster.cluster_state(settings)
    print()
    if state is None:
        print(f"Kafka cluster: no broker answers at {settings.kafka_bootstrap}")
        return
    print(f"Kafka cluster: {len(state.brokers)} brokers up, controller {state.controller}")
    print(
        _table(
            ["node", "address", "state", "leader of", "in ISR of"],
            cluster.broker_rows(settings, state),
        )
    )
    print()
    print(
        _table(
            ["topic", "partition", "leader", "replicas", "isr", "state"],
            cluster.partition_rows(state),
        )
    )


def _balancer_status(settings: Settings) -> None:
    """With replicas: each node as HAProxy sees it (UP, DOWN, ...) per public service."""
    from strata.stack import haproxy, nodes

    if not nodes.enabled(settings):
        return
    seen = haproxy.servers(settings)
    print()
    if not seen:
        print("HAProxy: not answering on its stats socket")
        return
    rows = [[fe, sv, st] for (fe, sv), st in sorted(seen.items())]
    print(_table(["balancer service", "node", "state"], rows))


def _nodes_status(settings: Settings) -> None:
    """With replicas: each index replica's position and lag against the log end, and each
    ingest node's outbox (depth, oldest unpublished event, set-aside events), read from the
    replica's /positions and the node's own outbox file."""
    from strata.stack import local, nodes

    if not nodes.enabled(settings):
        return
    from strata.ingest.outbox import Outbox
    from strata.processors.replay import end_positions

    topics = [settings.study_topic, settings.quarantine_topic]
    try:
        ends = end_positions(settings, topics)
    except Exception:  # noqa: BLE001 - the log is down: the broker rows above say so
        ends = {}
    end = sum(sum(parts.values()) for parts in ends.values())
    rows: list[list[object]] = []
    for node in nodes.recorded(settings):
        if node.kind == "index":
            at = local.index_positions(settings.bind_host, node.ports["http"], settings.token)
            if at is None or not ends:
                rows.append([node.name, "-", "-", "-", "", "", ""])
                continue
            done = sum(
                min(int(at.get(t, {}).get(str(p), 0)), o)
                for t, parts in ends.items()
                for p, o in parts.items()
            )
            rows.append([node.name, end, done, end - done, "", "", ""])
        else:
            path = node.dir / "ingest" / "outbox.sqlite"
            if not path.is_file():
                rows.append([node.name, "", "", "", "-", "-", "-"])
                continue
            box = Outbox(path)
            try:
                age = box.oldest_pending_age()
                rows.append(
                    [node.name, "", "", "", box.depth(), f"{age:.1f}", box.set_aside_count()]
                )
            finally:
                box.close()
    print()
    print(
        _table(
            ["node", "log end", "indexed", "lag", "outbox", "oldest (s)", "set aside"],
            rows,
        )
    )


def _ingest_state(settings: Settings) -> str:
    """Set-aside events and quarantine use, read from the node's files (no service needed)."""
    from strata.cli.serve import build_quarantine
    from strata.ingest.outbox import Outbox

    aside = Outbox(settings.outbox_path).set_aside_count() if settings.outbox_path.is_file() else 0
    use = build_quarantine(settings).sweep(delete=False)
    pct = 100.0 * use.bytes / settings.quarantine_max_bytes if settings.quarantine_max_bytes else 0
    hint = " (not published, not indexed: see 'strata outbox list', then 'redrive')"
    return (
        f"set-aside events: {aside}"
        + (hint if aside else "")
        + f"\nquarantine: {use.files} objects, {use.bytes / 1e6:.1f} MB of "
        f"{settings.quarantine_max_bytes / 1e6:.0f} MB ({pct:.1f}%)"
    )


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    """Events the relay set aside (Kafka refused them for good): list them, or re-drive them."""
    from datetime import UTC, datetime

    from strata.ingest.outbox import Outbox

    if not settings.outbox_path.is_file():
        raise StrataError(f"no ingest outbox at {settings.outbox_path}")
    outbox = Outbox(settings.outbox_path)
    if args.action == "list":
        rows = [
            [
                e.seq,
                e.sop_uid or "-",
                e.size,
                datetime.fromtimestamp(e.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e.error,
            ]
            for e in outbox.set_aside_events()
        ]
        print(_table(["seq", "sop instance uid", "bytes", "recorded (UTC)", "error"], rows))
        print(f"{len(rows)} set-aside events")
        return 0
    n = outbox.redrive([int(x) for x in args.seq] if args.seq else None)
    cli_audit.outbox_redriven(settings, args.seq, n)
    print(f"re-driven {n} events: the relay publishes them next")
    return 0


def _index_http(settings: Settings, path: str, timeout: float = 120) -> dict:
    return dict(_index_json(settings, path, timeout))


def _index_json(settings: Settings, path: str, timeout: float = 120) -> Any:
    import json
    import urllib.error
    import urllib.request

    url = f"http://{settings.bind_host}:{settings.index_http_port}{path}"
    try:
        with urllib.request.urlopen(admin_request(settings, url), timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise StrataError(f"the index node refused {path.split('?')[0]}: {_reason(exc)}") from exc
    except OSError as exc:
        raise StrataError(f"the index node does not answer at {url}: {exc}") from exc


def admin_request(settings: Settings, url: str) -> Any:
    """A request to an admin HTTP endpoint, with the bearer token of STRATA_TOKEN / --token
    when one is set (needed when the archive runs with STRATA_AUTH_MODE=oidc)."""
    from strata.common.auth import bearer_request

    return bearer_request(url, settings.token)


def _reason(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.read() or b"{}").get("error", exc.reason))
    except ValueError:
        return str(exc.reason)


def _positions(raw: dict) -> dict[str, dict[int, int]]:
    return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


def _fresh_index(path: Path, database: str):  # noqa: ANN202 - IndexStore, imported lazily
    import shutil

    from strata.processors.index.store import IndexStore

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    index = IndexStore(f"chdb://{path.resolve()}", database)
    index.migrate()
    return index


def _replay(settings: Settings, index, until, start=None, quiet=False):  # noqa: ANN001,ANN202
    from tqdm import tqdm

    from strata.processors.replay import replay

    total = sum(
        max(0, end - (start or {}).get(t, {}).get(p, 0))
        for t, parts in until.items()
        for p, end in parts.items()
    )
    with tqdm(total=total, unit="ev", unit_scale=True, disable=quiet, desc="replay") as bar:
        return replay(settings, index, until, start=start, on_progress=bar.update)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild the whole index from offset 0 into a fresh database."""
    from strata.processors.replay import end_positions

    if args.until:  # point in time: rebuilt by the index node, next to the live index
        from strata.cli.sql import replay_until

        return replay_until(settings, args.until, args.database)

    target = Path(args.into or settings.home / "rebuild" / "index")
    until = end_positions(settings, [settings.study_topic, settings.quarantine_topic])
    index = _fresh_index(target, settings.clickhouse_database)
    res = _replay(settings, index, until, quiet=args.quiet)
    print(
        f"replayed {res.events} events in {res.seconds:.1f} s ({res.rate:,.0f} events/s) "
        f"into chdb://{target.resolve()}"
    )
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild from the log and compare with the live index by deterministic checksums."""
    import shutil
    import time

    from strata.cli.glance import record_verify
    from strata.processors.index import checksum
    from strata.processors.replay import end_positions

    target = Path(args.into or settings.home / "verify" / "index")
    until = end_positions(settings, [settings.study_topic, settings.quarantine_topic])
    index = _fresh_index(target, settings.clickhouse_database)
    try:
        _replay(settings, index, until, quiet=args.quiet)
        # Compare at one log position: wait for the live index to reach what we rebuilt, and
        # extend the rebuild if the live index has read further meanwhile. The live snapshot
        # counts only if the live index stayed at that position while it was taken (an event,
        # e.g. a StudyStable, may be applied in between).
        deadline = time.monotonic() + args.wait
        while True:
            live_pos = _positions(_index_http(settings, "/positions"))
            mine = checksum.positions(index)
            if live_pos == mine:
                live = _index_http(settings, "/checksums")
                live["positions"] = _positions(live["positions"])
                after = _positions(_index_http(settings, "/positions"))
                if live["positions"] == mine == after:
                    break
                continue
            ahead = any(
                o > mine.get(t, {}).get(p, 0)
                for t, parts in live_pos.items()
                for p, o in parts.items()
            )
            if ahead:
                _replay(settings, index, live_pos, start=mine, quiet=True)
                continue
            if time.monotonic() > deadline:
                print(
                    f"the live index did not reach the rebuilt position within {args.wait}s",
                    file=sys.stderr,
                )
                record_verify(settings, "not compared (the live index did not catch up)")
                return 1
            time.sleep(0.5)
        rebuilt = checksum.snapshot(index)
        rebuilt = {
            "positions": rebuilt["positions"],
            "tables": {t: list(v) for t, v in rebuilt["tables"].items()},
            "studies": rebuilt["studies"],
        }
        diffs = checksum.compare(live, rebuilt)
        print(
            _table(
                ["table", "live rows", "rebuilt rows", "checksum"],
                [
                    [
                        t,
                        live["tables"][t][0],
                        rebuilt["tables"][t][0],
                        "equal" if live["tables"][t] == rebuilt["tables"][t] else "DIFFERENT",
                    ]
                    for t in sorted(rebuilt["tables"])
                ],
            )
        )
        print(f"studies compared: {len(rebuilt['studies'])}; log position: {mine}")
        if diffs:
            print("\n".join(["DIFFERENCES:"] + diffs[:50]))
            record_verify(settings, f"DIFFERENT ({len(diffs)} differences)", mine)
            return 1
        print("verify: the live index equals the index rebuilt from the log")
        record_verify(settings, "equal", mine)
        return 0
    finally:
        index.close()
        if not args.keep:
            shutil.rmtree(target, ignore_errors=True)


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise StrataError(f"no such file or directory: {p}")
    return out


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from pydicom import dcmread
    from pynetdicom import AE
    from tqdm import tqdm

    files = _files(args.paths)
    items = []
    skipped = 0
    for f in files:
        try:
            ds = dcmread(str(f), stop_before_pixels=True, specific_tags=["SOPClassUID"])
            meta = ds.file_meta
            items.append((f, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        except Exception:
            skipped += 1
    if not items:
        print(f"no DICOM files to send ({skipped} skipped)", file=sys.stderr)
        return 2
    contexts = sorted({(c, ts) for _, c, ts in items})
    if len(contexts) > 128:
        raise StrataError("more than 128 (SOP class, transfer syntax) pairs: send in batches")
    from pynetdicom import _config

    from strata.dicomnet.sockets import nodelay

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    ae = AE(ae_title=args.calling_ae)
    ae.maximum_pdu_size = 0
    for c, ts in contexts:
        ae.add_requested_context(c, ts)
    host = args.host or settings.bind_host
    port = args.port or settings.ingest_port
    called = args.called_ae or settings.ingest_ae_title

    from strata.common.pynet import open_association

    def connect() -> Any:
        a = open_association(ae, host, port, called)
        if a.is_established and a.dul.socket is not None:
            nodelay(a.dul.socket.socket)
        return a

    assoc = connect()
    if not assoc.is_established:
        print(f"association to {host}:{port} was not accepted", file=sys.stderr)
        return 1
    ok = failed = 0
    total_bytes = 0
    try:
        with tqdm(total=len(items), unit="inst", disable=args.quiet) as bar:
            for f, _, _ in items:
                # As a modality does: a lost association or a retryable status (A7xx) is
                # retried; the archive makes a repeated arrival an idempotent duplicate.
                code, comment = None, "association lost"
                for attempt in range(4):
                    if not assoc.is_established:
                        time.sleep(min(2**attempt, 5))
                        assoc = connect()
                        if not assoc.is_established:
                            continue
                    try:
                        st = assoc.send_c_store(f)
                    except (ValueError, AttributeError) as exc:
                        code, comment = None, f"cannot send ({exc})"
                        break
                    except (OSError, RuntimeError):
                        continue
                    code = getattr(st, "Status", None)
                    comment = str(getattr(st, "ErrorComment", ""))
                    if code is not None and not 0xA700 <= code <= 0xA7FF:
                        break
                    if code is not None:
                        time.sleep(min(2**attempt, 5))
                if code == 0:
                    ok += 1
                    total_bytes += f.stat().st_size
                else:
                    failed += 1
                    shown = f"0x{code:04X}" if code is not None else "no response"
                    tqdm.write(f"FAILED {f}: {shown} {comment}")
                bar.update(1)
    finally:
        if assoc.is_established:
            assoc.release()
    print(f"sent {ok} instances ({total_bytes / 1e6:.1f} MB), {failed} failed, {skipped} not DICOM")
    return 0 if failed == 0 else 1


def cmd_find(settings: Settings, args: argparse.Namespace) -> int:
    from pydicom import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = args.patient_id or ""
    ds.PatientName = args.name or ""
    ds.StudyDate = args.date or ""
    ds.ModalitiesInStudy = args.modality or ""
    ds.AccessionNumber = args.accession or ""
    ds.StudyDescription = ""
    ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedSeries = ""
    ds.NumberOfStudyRelatedInstances = ""
    ae = AE(ae_title=args.calling_ae)
    ae.add_requested_context(FIND)
    from strata.common.pynet import open_association

    assoc = open_association(ae, settings.bind_host, settings.qr_port, settings.qr_ae_title)
    if not assoc.is_established:
        print("query SCP did not accept the association", file=sys.stderr)
        return 1
    rows = []
    try:
        for status, ident in assoc.send_c_find(ds, FIND):
            if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
                mods = ident.get("ModalitiesInStudy") or []
                mods = [mods] if isinstance(mods, str) else list(mods)
                rows.append(
                    [
                        ident.get("PatientID", ""),
                        ident.get("PatientName", ""),
                        ident.get("StudyDate", ""),
                        "/".join(mods),
                        ident.get("AccessionNumber", ""),
                        ident.get("StudyDescription", ""),
                        ident.get("NumberOfStudyRelatedSeries", ""),
                        ident.get("NumberOfStudyRelatedInstances", ""),
                        ident.get("StudyInstanceUID", ""),
                    ]
                )
            elif status and status.Status not in (0x0000,):
                print(
                    f"C-FIND failed: 0x{status.Status:04X} {status.get('ErrorComment', '')}",
                    file=sys.stderr,
                )
                return 1
    finally:
        assoc.release()
    print(
        _table(
            [
                "patient id",
                "name",
                "date",
                "modalities",
                "accession",
                "description",
                "series",
                "instances",
                "study uid",
            ],
            rows,
        )
    )
    print(f"{len(rows)} studies")
    return 0


def cmd_viewer(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import viewer

    dist = viewer.install()
    print(
        f"OHIF {viewer.OHIF_VERSION} installed in {dist}; it is served at "
        f"http://{settings.bind_host}:{settings.dicomweb_port}/ after the next 'strata up'"
    )
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print(_table(["env", "default", "meaning"], Settings.describe()))
    return 0


def _emit(settings: Settings, study_uid: str, payload: Any) -> None:
    """Produce one study-scoped event (acks=all, idempotent) and wait for Kafka to confirm."""
    import uuid
    from datetime import UTC, datetime

    from strata.common import kafka
    from strata.processors.lifecycle import wrap

    env = wrap(payload, study_uid, str(uuid.uuid4()), settings.node_name, datetime.now(UTC))
    errors: list[str] = []
    producer = kafka.producer(settings, "durable", "cli")
    producer.produce(
        settings.study_topic,
        key=study_uid.encode(),
        value=env.SerializeToString(),
        on_delivery=lambda err, msg: errors.append(str(err)) if err else None,
    )
    if producer.flush(30) or errors:
        raise StrataError(f"the event was not confirmed by Kafka: {errors[:1] or 'timeout'}")


def _operator(args: argparse.Namespace) -> str:
    import getpass

    return str(args.by or getpass.getuser())


def cmd_hold(settings: Settings, args: argparse.Namespace) -> int:
    """Place or release a legal hold on a study (LegalHoldPlaced/Released events)."""
    from strata.archive.keys import instance_key
    from strata.proto.strata.v1 import events_pb2 as pb

    if args.action == "list":
        import urllib.parse

        q = f"?study={urllib.parse.quote(args.study)}" if args.study else ""
        holds = _index_json(settings, f"/holds{q}", timeout=30)
        rows = [
            [h["study_uid"], h["hold_id"], h["placed_by"], h["placed_at"], h["reason"]]
            for h in holds
        ]
        print(_table(["study uid", "hold", "by", "since", "reason"], rows))
        print(f"{len(rows)} active holds")
        return 0
    if not args.study:
        raise StrataError(f"hold {args.action} needs the StudyInstanceUID")
    instance_key(args.study, "1", "1", "0" * 64)  # validates the UID (precise error if not)
    if not args.reason:
        raise StrataError("--reason is required (it is recorded in the event)")
    from strata.cli.dr import require_primary

    require_primary(settings, f"hold {args.action}")
    if args.action == "place":
        payload: Any = pb.LegalHoldPlaced(
            hold_id=args.hold_id, reason=args.reason, placed_by=_operator(args)
        )
    else:
        payload = pb.LegalHoldReleased(
            hold_id=args.hold_id, reason=args.reason, released_by=_operator(args)
        )
    _emit(settings, args.study, payload)
    cli_audit.hold(settings, args.action, args.study, args.hold_id, _operator(args))
    done = "placed on" if args.action == "place" else "released from"
    print(f"legal hold {args.hold_id!r} {done} study {args.study}")
    return 0


def _with_embedded_s3(settings: Settings) -> Settings:
    """The settings with the S3 endpoint of the Ceph that ``strata up`` runs in the archive's
    home, when no endpoint is configured (``up`` hands it to its services, not to the CLI)."""
    import dataclasses

    if settings.s3_endpoint or not (settings.ceph_dir / "state.json").is_file():
        return settings
    from strata.stack import ceph

    h = ceph.handle(settings.ceph_dir)
    return dataclasses.replace(
        settings,
        s3_endpoint=h.endpoint,
        s3_access_key=h.access_key,
        s3_secret_key=h.secret_key,
        s3_bucket=h.bucket,
        s3_ca_bundle=str(h.ca_path),
        s3_region=h.region,
    )


def cmd_storage_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Check every indexed object (or a random sample) in its recorded tier by sha256."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from strata.archive.cold import build_cold_tier
    from strata.archive.hot import HotTier
    from strata.archive.lifecycle import load_policy, policy_path
    from strata.archive.verify import Recorded, Repairer, check
    from strata.proto.strata.v1 import events_pb2 as pb

    tiers: dict[str, Any] = {"hot": HotTier(settings.hot_dir)}
    cold = build_cold_tier(_with_embedded_s3(settings))
    if cold is not None:
        tiers["cold"] = cold
    policy = load_policy(
        policy_path(settings.home, {"STRATA_LIFECYCLE_POLICY": settings.lifecycle_policy})
    )
    cache = Path(policy.recall.cache_dir or settings.home / "recall-cache")
    repairer = Repairer(tiers, cache, settings.home / "repair")

    def pages():  # noqa: ANN202
        if args.sample:
            yield _index_json(settings, f"/storage/locations?sample={args.sample}")
            return
        after = ""
        while True:
            import urllib.parse

            page = _index_json(
                settings, f"/storage/locations?limit=5000&after={urllib.parse.quote(after)}"
            )
            if not page:
                return
            yield page
            last = page[-1]
            after = f"{last[0]}/{last[1]}/{last[2]}"

    findings = []
    checked = 0
    nbytes = 0
    t0 = time.monotonic()
    with (
        tqdm(unit="obj", disable=args.quiet, desc="verify", file=sys.stderr) as bar,
        ThreadPoolExecutor(args.parallel) as pool,
    ):
        for page in pages():
            objs = [Recorded(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6]) for r in page]
            for obj, f in zip(objs, pool.map(lambda o: check(tiers, o), objs), strict=True):
                checked += 1
                nbytes += obj.size_bytes
                bar.update(1)
                if f is None:
                    continue
                if args.repair:
                    f = repairer.repair(f)
                    if f.repaired_from:
                        _emit(
                            settings,
                            obj.study_uid,
                            pb.ObjectRepaired(
                                sop_instance_uid=obj.sop_uid,
                                sha256=obj.sha256,
                                location=pb.StorageLocation(tier=obj.tier, key=obj.key),
                                source=pb.StorageLocation(tier=f.repaired_from, key=obj.key),
                                problem=f.problem,
                            ),
                        )
                findings.append(f)
    secs = time.monotonic() - t0
    if findings:
        print(
            _table(
                ["sop instance uid", "tier", "problem", "repaired from", "detail"],
                [
                    [f.obj.sop_uid, f.obj.tier, f.problem, f.repaired_from or "-", f.detail]
                    for f in findings
                ],
            )
        )
    repaired = sum(1 for f in findings if f.repaired_from)
    by_problem: dict[str, int] = {}
    for f in findings:
        by_problem[f.problem] = by_problem.get(f.problem, 0) + 1
    print(
        f"checked {checked} objects ({nbytes / 1e6:.1f} MB) in {secs:.1f} s"
        f"{' (sample)' if args.sample else ''}: {checked - len(findings)} ok"
        + "".join(f", {n} {p}" for p, n in sorted(by_problem.items()))
        + (f", {repaired} repaired" if args.repair else "")
    )
    unrepaired = len(findings) - repaired
    return 1 if unrepaired or (findings and not args.repair) else 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from strata.cli import serve

    {
        "ingest": serve.serve_ingest,
        "ingest-worker": serve.serve_ingest_worker,
        "index": serve.serve_index,
        "router": serve.serve_router,
    }[args.service](settings)
    return 0


def parser() -> argparse.ArgumentParser:
    from strata.cli import dr, route, sql

    p = argparse.ArgumentParser(
        prog="strata", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--token",
        default=None,
        help="bearer token for the admin HTTP endpoints (default: STRATA_TOKEN)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the local stack").set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="show the local stack").set_defaults(fn=cmd_status)
    sub.add_parser("config", help="list settings").set_defaults(fn=cmd_config)
    s = sub.add_parser("send", help="send DICOM files (C-STORE)")
    s.add_argument("paths", nargs="+")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--called-ae")
    s.add_argument("--calling-ae", default="STRATA_CLI")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_send)
    f = sub.add_parser("find", help="search studies (C-FIND), wildcards * and ? allowed")
    f.add_argument("--patient-id")
    f.add_argument("--name", help="patient name, e.g. 'DOE*'")
    f.add_argument("--date", help="study date or range, e.g. 20240101-20240131")
    f.add_argument("--modality", help="modality in study, e.g. CT or CT\\MR")
    f.add_argument("--accession")
    f.add_argument("--calling-ae", default="STRATA_CLI")
    f.set_defaults(fn=cmd_find)
    r = sub.add_parser("replay", help="rebuild the index from offset 0 into a fresh database")
    r.add_argument("--into", help="chDB directory of the new index (default <home>/rebuild)")
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument(
        "--until",
        help="TIME (ISO 8601) or OFFSET: the index as it was then, rebuilt by the index node "
        "into database --database of the live engine, readable with strata sql",
    )
    r.add_argument("--database", help="with --until: asof_... (default asof_<until>)")
    r.set_defaults(fn=cmd_replay)
    v = sub.add_parser("verify", help="rebuild from the log and compare with the live index")
    v.add_argument("--into", help="chDB directory for the rebuild (default <home>/verify)")
    v.add_argument("--keep", action="store_true", help="keep the rebuilt index")
    v.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the live index to catch up"
    )
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(fn=cmd_verify)
    vw = sub.add_parser("viewer", help="install the OHIF web viewer (npm) served at DICOMweb /")
    vw.add_argument("action", choices=["install"])
    vw.set_defaults(fn=cmd_viewer)
    route.add_parser(sub)
    sql.add_parser(sub)
    dr.add_parser(sub)
    cli_audit.add_parser(sub)
    h = sub.add_parser("hold", help="legal holds: a held study is never deleted")
    h.add_argument("action", choices=["place", "release", "list"])
    h.add_argument("study", nargs="?", default="", help="StudyInstanceUID")
    h.add_argument("--reason", default="", help="why (recorded in the event)")
    h.add_argument("--hold-id", default="legal", help="name of the hold (several may coexist)")
    h.add_argument("--by", help="operator name (default: the login name)")
    h.set_defaults(fn=cmd_hold)
    ob = sub.add_parser("outbox", help="ingest outbox: events set aside by the relay")
    ob.add_argument("action", choices=["list", "redrive"])
    ob.add_argument("seq", nargs="*", help="outbox seq numbers to re-drive (default: all)")
    ob.set_defaults(fn=cmd_outbox)
    st = sub.add_parser("storage", help="storage tiers: verify objects")
    stsub = st.add_subparsers(dest="storage_cmd", required=True)
    sv_ = stsub.add_parser(
        "verify", help="check each indexed object's bytes (sha256) in its recorded tier"
    )
    mode = sv_.add_mutually_exclusive_group()
    mode.add_argument("--sample", type=int, default=0, help="check N random instances")
    mode.add_argument("--full", action="store_true", help="check every instance (default)")
    sv_.add_argument("--repair", action="store_true", help="restore from another good copy")
    sv_.add_argument("--parallel", type=int, default=4, help="objects checked at once")
    sv_.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sv_.set_defaults(fn=cmd_storage_verify)
    sv = sub.add_parser("serve", help="run one service in the foreground")
    sv.add_argument("service", choices=["ingest", "ingest-worker", "index", "router"])
    sv.set_defaults(fn=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["dr", "drill"]:  # every argument after is the drill's own (--help too)
        args = parser().parse_args(["dr", "drill"])
        args.drill_args = argv[2:]
    else:
        args = parser().parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    try:
        settings = Settings.from_env()
        if args.token is not None:
            settings = dataclasses.replace(settings, token=args.token)
        return int(args.fn(settings, args))
    except StrataError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
