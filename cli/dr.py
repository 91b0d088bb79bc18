"""`strata dr`: geo-redundancy by Kafka mirroring (docs/dr.md, docs/runbooks/).

follow    this site becomes the secondary: MirrorMaker 2 (peer -> here) and the object copier
unfollow  stop both (nothing else changes)
status    epoch, primary, mirror lag (events, seconds), events not yet examined by the copier
promote   this site becomes the primary: stop following, write a SiteEpoch (epoch+1) event
copier    run the object copier in the foreground (what `follow` starts)
drill     the DR drill on two throwaway sites on this machine (benchmarks/dr.py)
failback  at the fenced old primary: re-send what only it has (--resend); --all: the whole
          fail-back (re-send, rebuild, wait, switchover)
rebuild   at a fenced site: set its log and index aside, start empty, follow the peer
wait      until this follower is caught up (mirror lag 0, copier backlog 0)
switchover at the caught-up follower: the planned switch of primacy to it, through the
          current primary's log (RPO 0)
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strata.common import kafka
from strata.common.errors import StrataError, Unavailable
from strata.common.settings import Settings
from strata.stack.procs import Proc


def copier_proc(settings: Settings) -> Proc:
    return Proc("dr-copier", settings.run_dir, settings.log_dir)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}


def cmd_follow(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import mirror
    from strata.stack.kafka import security as kafka_security

    ep = current_epoch(settings, settings.dr_topic)
    if ep and ep.primary_site == settings.dr_site:
        raise StrataError(
            f"site {settings.dr_site} is the primary of epoch {ep.epoch}: a primary does not "
            "follow (fail back with 'strata dr failback' at the site that takes over)"
        )
    mirror.start(settings)
    copier_proc(settings).start(
        [sys.executable, "-m", "strata.cli.main", "dr", "copier"],
        env={
            **_base_env(),
            **settings.to_env(),
            **kafka_security.principal_env(settings, "dr-copier"),
        },
    )
    print(
        f"site {settings.dr_site or '-'} follows {settings.dr_peer_site or '-'} "
        f"({settings.dr_peer_bootstrap}): mirror and copier started"
    )
    return 0


def cmd_unfollow(settings: Settings, args: argparse.Namespace) -> int:
    from strata.stack import mirror

    stopped = [
        n
        for n, ok in (
            ("mirror", mirror.stop(settings)),
            ("dr-copier", copier_proc(settings).stop(grace=20.0)),
        )
        if ok
    ]
    print("stopped: " + (", ".join(stopped) or "nothing"))
    return 0


def cmd_drill(settings: Settings, args: argparse.Namespace) -> int:
    """The drill (docs/runbooks/dr-drill.md): ``benchmarks/dr.py`` of the source tree, which
    makes its own two sites on this machine (never touches the configured ones)."""
    import subprocess

    import strata

    root = Path(strata.__file__).resolve().parent.parent
    if not (root / "benchmarks" / "dr.py").is_file() or not (root / "tests" / "support").is_dir():
        raise StrataError(
            "the drill ships with the source repository (benchmarks/dr.py and tests/support/, "
            "DCMTK's storescu, findscu and getscu): run 'strata dr drill' from a checkout"
        )
    cmd = [sys.executable, "-m", "benchmarks.dr", *args.drill_args]
    return subprocess.run(cmd, cwd=root, env=_base_env()).returncode


def cmd_copier(settings: Settings, args: argparse.Namespace) -> int:
    from strata.processors.replicate import serve

    serve(settings)
    return 0


# ------------------------------------------------------------------ epochs (the fence)


def read_all(
    bootstrap: kafka.Cluster, topic: str, timeout: float = 10.0, strict: bool = False
) -> list[bytes]:
    """Every committed record of ``topic`` (``kafka.read_log``: to the partitions' ends, a
    mirrored topic's trailing transaction markers included). [] when unreachable; with
    ``strict``, Unavailable when unreachable or not read to every end within ``timeout`` (a
    caller deciding from what is absent must not take a part for the whole)."""
    quiet = {
        "socket.timeout.ms": int(timeout * 1000),
        "log_level": 0,  # an unreachable peer is an answer here, not a log line per retry
    }
    try:
        return kafka.read_log(bootstrap, topic, timeout, quiet)
    except Unavailable:
        if strict:
            raise
        return []


def current_epoch(bootstrap: kafka.Cluster, topic: str, timeout: float = 10.0) -> Any:
    """The SiteEpoch with the highest epoch in ``topic`` at ``bootstrap`` (None: none yet)."""
    from strata.common.events import decode

    best = None
    for raw in read_all(bootstrap, topic, timeout):
        try:
            env = decode(raw)
        except Exception:
            continue
        if env.WhichOneof("payload") == "site_epoch" and (
            best is None or env.site_epoch.epoch > best.epoch
        ):
            best = env.site_epoch
    return best


def latest_epoch(settings: Settings) -> Any:
    """The highest epoch known here or at the peer (a fenced old primary learns of the
    promotion from the peer even before the mirror runs back to it)."""
    eps = [current_epoch(settings, settings.dr_topic)]
    if settings.dr_peer_bootstrap:
        eps.append(current_epoch(kafka.peer(settings), settings.dr_topic, timeout=3.0))
    eps = [e for e in eps if e is not None]
    return max(eps, key=lambda e: e.epoch) if eps else None


def accepts_ingest(settings: Settings) -> tuple[bool, str]:
    """Whether this site may accept C-STORE: not configured for DR, or the primary of the
    latest epoch known here or at the peer."""
    if not settings.dr_site:
        return True, ""
    ep = latest_epoch(settings)
    if ep is None or ep.primary_site == settings.dr_site:
        return True, ""
    return (
        False,
        f"site {settings.dr_site} is fenced: {ep.primary_site} is primary (epoch {ep.epoch})",
    )


def require_primary(settings: Settings, what: str) -> None:
    """Refuse a decision an operator asks of a follower site: it would be written into the
    follower's log only, which the primary never reads (a legal hold placed at B would not stop
    A's retention; a re-driven route would wait for a router that runs only at the primary)."""
    from strata.common.errors import StrataError

    ok, reason = accepts_ingest(settings)
    if not ok:
        raise StrataError(f"{what} refused: {reason}; do it at the primary site")


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from strata.processors.replay import end_positions
    from strata.stack import mirror

    if not settings.dr_site:
        raise StrataError("STRATA_DR_SITE is not set: this archive is not part of a DR pair")
    t0 = time.monotonic()
    mirror.stop(settings)  # one direction at a time: nothing more arrives from the old primary
    t_mirror = time.monotonic()
    copier_proc(settings).stop(grace=20.0)
    t_copier = time.monotonic()
    ep = latest_epoch(settings)
    prev = ep.primary_site if ep else ""
    n = (ep.epoch if ep else 0) + 1
    ends = end_positions(settings, [settings.study_topic, settings.quarantine_topic])
    _write_epoch(settings, settings, n, prev, args.reason, args.by, ends)
    print(
        f"site {settings.dr_site} is primary from epoch {n} (was {prev or '-'}); "
        f"promoted in {time.monotonic() - t0:.1f}s (mirror stopped in {t_mirror - t0:.1f}s, "
        f"copier in {t_copier - t_mirror:.1f}s, epoch written in "
        f"{time.monotonic() - t_copier:.1f}s)"
    )
    return 0


# ------------------------------------------------------------------ status


def source_offset(key: bytes | None, value: bytes | None) -> tuple[str, int, int] | None:
    """(topic, partition, next offset) of one record of MirrorMaker 2's offsets topic, when it
    is the source connector's position in the peer's log; None otherwise. The checkpoint
    connector keeps its own records there under keys that also name a topic and partition
    (and a consumer group), with that group's offsets as values: read as the mirror's, they
    made a fully mirrored partition look behind (lag_events never 0)."""
    try:
        k = json.loads(key or b"null")
        v = json.loads(value or b"null")
        part = k[1]
        if k[0] != "MirrorSourceConnector" or v is None or "topic" not in part:
            return None
        return str(part["topic"]), int(part["partition"]), int(v["offset"]) + 1
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def mirrored_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset of the peer's log MirrorMaker 2 has mirrored here,
    from its source offsets (topic mm2-offsets.<peer>.internal at this site, written in
    transactions: ``kafka.read_keyed`` reads it to its ends, markers included). Not read
    within 15 s: {} (everything looks unmirrored, never caught up by mistake)."""
    topic = f"mm2-offsets.{settings.dr_peer_site or 'peer'}.internal"
    try:
        records = kafka.read_keyed(settings, topic, 15.0)
    except Unavailable:
        return {}
    out: dict[tuple[str, int], int] = {}
    for key, value in records:
        got = source_offset(key, value)
        if got is not None:
            out[(got[0], got[1])] = got[2]
    return out


def lag(settings: Settings) -> dict[str, Any]:
    """Events of the peer's log not yet mirrored here, and the age of the oldest of them."""
    from confluent_kafka import TopicPartition

    from strata.processors.replay import end_positions

    topics = [settings.study_topic, settings.quarantine_topic]
    mirrored = mirrored_offsets(settings)
    try:
        peer_ends = end_positions(kafka.peer(settings), topics)
        # A peer that once followed has transaction markers in its log (its own mirror's): a
        # partition ending with one ends one past its last record, which MirrorMaker 2's source
        # offset (last record + 1) never reaches. Count records, not markers.
        upto: kafka.Positions = {}
        for (t, p), o in mirrored.items():
            upto.setdefault(t, {})[p] = o
        tails = kafka.Tails(kafka.peer(settings), "dr-status")
        try:
            peer_ends = tails.lowered(peer_ends, upto)
        finally:
            tails.close()
    except Unavailable:
        return {"peer_log": "unreachable", "mirrored_events": sum(mirrored.values())}
    events = 0
    oldest: float | None = None
    c = kafka.consumer(kafka.peer(settings), kafka.fresh_group("strata-dr-status"), "dr-status")
    try:
        for t, parts in peer_ends.items():
            for p, end in parts.items():
                done = mirrored.get((t, p), 0)
                if end > done:
                    events += end - done
                    c.assign([TopicPartition(t, p, done)])
                    m = c.poll(5)
                    if m is not None and not m.error():
                        ts = m.timestamp()[1] / 1000.0
                        oldest = ts if oldest is None else min(oldest, ts)
    finally:
        c.close()
    return {
        "peer_log": "reachable",
        "lag_events": events,
        "lag_seconds": round(time.time() - oldest, 1) if oldest else 0.0,
        "mirrored_events": sum(mirrored.values()),
    }


def copier_backlog(settings: Settings) -> int:
    """Events of this site's study topic the copier has not examined yet."""
    from confluent_kafka import TopicPartition

    from strata.processors.replay import end_positions

    ends = end_positions(settings, [settings.study_topic])
    c = kafka.consumer(settings, settings.dr_copy_group, "dr-status")
    try:
        tps = [TopicPartition(t, p) for t, parts in ends.items() for p in parts]
        committed = c.committed(tps, timeout=10) if tps else []
    finally:
        c.close()
    done: kafka.Positions = {}
    for tp in committed:
        done.setdefault(tp.topic, {})[tp.partition] = max(tp.offset, 0)
    # a mirrored partition may end with a transaction marker, one past its last record
    tails = kafka.Tails(settings, "dr-status")
    try:
        ends = tails.lowered(ends, done)
    finally:
        tails.close()
    return sum(
        max(0, end - done.get(t, {}).get(p, 0))
        for t, parts in ends.items()
        for p, end in parts.items()
    )


def status(settings: Settings) -> dict[str, Any]:
    from strata.stack import mirror

    ep = current_epoch(settings, settings.dr_topic)
    out: dict[str, Any] = {
        "site": settings.dr_site,
        "peer": settings.dr_peer_site,
        "epoch": ep.epoch if ep else 0,
        "primary": ep.primary_site if ep else "",
        "mirror": "running" if mirror.proc(settings).pid() else "stopped",
        "copier": "running" if copier_proc(settings).pid() else "stopped",
    }
    ok, why = accepts_ingest(settings)
    out["accepts_ingest"] = ok
    if why:
        out["fenced"] = why
    out["mode"] = settings.dr_mode
    if settings.dr_mode == "sync":
        # from this site's ingest node (its /healthz): refusals since it started because the
        # peer did not confirm in time, and whether its watcher reads the peer's log
        from strata.stack.local import health

        h = health(settings.bind_host, settings.ingest_http_port) or {}
        out["unconfirmed"] = h.get("dr_unconfirmed", "ingest not answering")
        out["sync_peer_log"] = h.get("dr_peer_log", "unknown")
        # and STOW-RS, which the index node serves (its /healthz)
        hi = health(settings.bind_host, settings.index_http_port) or {}
        out["unconfirmed_stow"] = hi.get("dr_unconfirmed_stow", "index not answering")
    if out["mirror"] == "running" and settings.dr_peer_bootstrap:
        out.update(lag(settings))
    out["copier_backlog_events"] = copier_backlog(settings)
    return out


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    s = status(settings)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        for k, v in s.items():
            print(f"{k:24} {v}")
    return 0


def add_parser(sub: Any) -> None:
    d = sub.add_parser("dr", help="geo-redundancy: follow a peer site, promote, status")
    dsub = d.add_subparsers(dest="dr_cmd", required=True)
    dsub.add_parser("follow", help="become the secondary: mirror + object copier").set_defaults(
        fn=cmd_follow
    )
    dsub.add_parser("unfollow", help="stop the mirror and the copier").set_defaults(fn=cmd_unfollow)
    dsub.add_parser("copier", help="run the object copier in the foreground").set_defaults(
        fn=cmd_copier
    )
    dr = dsub.add_parser(
        "drill",
        help="the DR drill on two sites made on this machine (a test machine): ingest, kill -9 "
        "of site A, promote B, RPO and RTO; arguments as 'python -m benchmarks.dr'",
        add_help=False,  # --help is the drill's own
    )
    dr.set_defaults(drill_args=[])  # cli/main.py hands it every argument after 'dr drill'
    dr.set_defaults(fn=cmd_drill)
    s = dsub.add_parser("status", help="epoch, primary, lag, copier backlog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    p = dsub.add_parser("promote", help="this site becomes the primary (fences the old one)")
    p.add_argument("--reason", default="failover")
    p.add_argument("--by", help="operator name (default: the login name)")
    p.set_defaults(fn=cmd_promote)
    fb = dsub.add_parser(
        "failback", help="at the fenced old primary: what only it has, re-sent to the primary"
    )
    fb.add_argument("--resend", action="store_true", help="C-STORE them to --to")
    fb.add_argument("--to", default="", help="HOST:PORT of the new primary's ingest")
    fb.add_argument("--called-ae", default="STRATA")
    fb.add_argument(
        "--all",
        action="store_true",
        help="the whole fail-back: re-send, rebuild as follower, wait caught up, switch over",
    )
    fb.add_argument("--timeout", type=float, default=1800.0, help="seconds each wait may take")
    fb.add_argument("--reason", default="failback")
    fb.add_argument("--by", default="", help="operator name (default: the login name)")
    fb.set_defaults(fn=cmd_failback)
    rb = dsub.add_parser(
        "rebuild",
        help="at a fenced site: set its log and index aside, restart empty, follow the peer",
    )
    rb.add_argument("--force", action="store_true", help="even with instances only this site has")
    rb.set_defaults(fn=cmd_rebuild)
    w = dsub.add_parser("wait", help="until this follower is caught up (lag 0, copier backlog 0)")
    w.add_argument("--timeout", type=float, default=1800.0)
    w.set_defaults(fn=cmd_wait)
    so = dsub.add_parser(
        "switchover", help="at the caught-up follower: planned switch of primacy to it (RPO 0)"
    )
    so.add_argument("--reason", default="switchover")
    so.add_argument("--by", default="", help="operator name (default: the login name)")
    so.add_argument("--timeout", type=float, default=600.0, help="seconds each wait may take")
    so.set_defaults(fn=cmd_switchover)


class Fence:
    """The ingest node's view of the epoch: refreshed in a background thread every
    STRATA_DR_FENCE_CHECK_SECONDS; ``reason()`` is "" while this site may accept C-STORE."""

    def __init__(self, settings: Settings) -> None:
        import threading

        self.settings = settings
        self._reason = ""
        self._checked = threading.Event()
        threading.Thread(target=self._loop, name="dr-fence", daemon=True).start()
        self._checked.wait(15.0)  # the first answer before the first C-STORE (bounded)

    def _loop(self) -> None:
        import logging

        while True:
            try:
                ok, why = accepts_ingest(self.settings)
                if why != self._reason and why:
                    logging.getLogger(__name__).warning("refusing ingest: %s", why)
                self._reason = "" if ok else why
            except Exception:  # keep the last answer; the log may be briefly unreachable
                pass
            self._checked.set()
            time.sleep(self.settings.dr_fence_check_seconds)

    def reason(self) -> str:
        return self._reason


def takes_decisions(settings: Settings, epoch: Any, last: bool) -> bool:
    """Whether this site writes decisions (StudyStable, lifecycle moves and deletes, access
    records, routing) given the latest ``epoch`` read here or at the peer (None: none read).

    A stand-alone archive always does. A site of a DR pair does only while the latest epoch
    names it primary: a follower's log is the mirror of the primary's, and what it decided
    itself would be a second decision on the same facts (mirrored back on fail-back). No
    epoch read (none yet, or both logs unreachable for a moment) keeps the ``last`` answer:
    a follower whose reads fail does not start deciding, and before the first promote of the
    pair's life (set-up) no site decides."""
    if not settings.dr_site:
        return True
    if epoch is None:
        return last
    return bool(epoch.primary_site == settings.dr_site)


class Role:
    """The index node's (and the router's) view of the epoch for its decisions: refreshed in
    a background thread every STRATA_DR_FENCE_CHECK_SECONDS, so a promoted follower starts
    deciding without a restart, and an old primary that learns of a newer epoch stops."""

    def __init__(self, settings: Settings) -> None:
        import threading

        self.settings = settings
        self._primary = not settings.dr_site
        self._epoch = 0
        self._checked = threading.Event()
        if settings.dr_site:
            threading.Thread(target=self._loop, name="dr-role", daemon=True).start()
            self._checked.wait(15.0)  # the first answer before the first decision (bounded)

    def _loop(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        while True:
            try:
                ep = latest_epoch(self.settings)
            except Exception:  # keep the last answer; the logs may be briefly unreachable
                ep = None
            was = self._primary
            self._primary = takes_decisions(self.settings, ep, was)
            if ep is not None:
                self._epoch = ep.epoch
            if self._primary != was:
                log.warning(
                    "site %s %s decisions (epoch %d, primary %s)",
                    self.settings.dr_site,
                    "takes" if self._primary else "stops taking",
                    self._epoch,
                    ep.primary_site if ep is not None else "?",
                )
            self._checked.set()
            time.sleep(self.settings.dr_fence_check_seconds)

    def primary(self) -> bool:
        return self._primary

    def describe(self) -> str:
        """For /healthz: 'primary' (or 'standalone'), or 'follower (epoch n)'."""
        if not self.settings.dr_site:
            return "standalone"
        return "primary" if self._primary else f"follower (epoch {self._epoch})"


def orphans(settings: Settings, timeout: float = 60.0, mine: list[Any] | None = None) -> list[Any]:
    """InstanceStored events of this site's log whose instance the peer does not hold: the peer
    recorded no copy of it (no InstanceReplicated by the peer with that source event id) and
    has no arrival of its own of the same instance and bytes (an InstanceStored with the same
    SOP Instance UID and sha256 that is not one of this site's events mirrored there: what
    ``failback --resend`` C-STOREs to the peer is recorded so). What only this site has.
    ``mine``: this site's log as ``own_log`` read it (a fenced site's log does not change: a
    caller asking again reads only the peer's).

    Either log unreachable, or not read to its end within ``timeout``: Unavailable (a caller
    decides from this whether this site's log may be set aside)."""
    from strata.common.events import decode

    if mine is None:
        mine = own_log(settings, timeout)
    my_ids = {env.event_id for env in mine}
    copied: set[str] = set()
    arrived: set[tuple[str, str]] = set()
    for raw in read_all(kafka.peer(settings), settings.study_topic, timeout, strict=True):
        try:
            env = decode(raw)
        except Exception:
            continue
        kind = env.WhichOneof("payload")
        if kind == "instance_replicated":
            r = env.instance_replicated
            if not r.site or not settings.dr_peer_site or r.site == settings.dr_peer_site:
                copied.add(r.source_event_id)
        elif kind == "instance_stored" and env.event_id not in my_ids:
            st = env.instance_stored
            arrived.add((st.sop_instance_uid, st.sha256))
    return [
        env.instance_stored
        for env in mine
        if env.WhichOneof("payload") == "instance_stored"
        and env.event_id not in copied
        and (env.instance_stored.sop_instance_uid, env.instance_stored.sha256) not in arrived
    ]


def own_log(settings: Settings, timeout: float = 60.0) -> list[Any]:
    """Every decodable event of this site's study topic (Unavailable if it cannot be read to
    its end)."""
    from strata.common.events import decode

    out = []
    for raw in read_all(settings, settings.study_topic, timeout, strict=True):
        try:
            out.append(decode(raw))
        except Exception:
            continue
    return out


def cmd_failback(settings: Settings, args: argparse.Namespace) -> int:
    """At the old primary, fenced: re-send to the new primary what only this site has; with
    ``--all`` the whole fail-back: re-send, rebuild as the peer's follower, wait until caught
    up, switch over (docs/runbooks/dr-failback.md)."""
    if args.all and not args.to:
        raise StrataError("failback --all needs --to HOST:PORT (the new primary's ingest)")
    rc = resend(settings, args.resend or args.all, args.to, args.called_ae)
    if rc != 0 or not args.all:
        return rc
    say = _say
    say("fail-back 1/4 done: waiting until the peer's log holds what was re-sent")
    # seconds (the peer's relay); bounded apart from --timeout: an instance that could not be
    # re-sent (its file not in the hot tier) would otherwise be waited for until the timeout
    limit = min(args.timeout, 120.0)
    deadline = time.monotonic() + limit
    mine = own_log(settings)  # fenced: this site's log does not change meanwhile
    left = orphans(settings, mine=mine)
    while left and time.monotonic() < deadline:
        say(f"  {len(left)} instances not at the peer yet")
        time.sleep(2.0)
        left = orphans(settings, mine=mine)
    if left:
        raise StrataError(
            f"{len(left)} instances only this site has are still not in the peer's log after "
            f"{limit:.0f}s (first: {left[0].sop_instance_uid}); nothing was set aside "
            "(see 'strata dr failback': files missing from the hot tier are not re-sent)"
        )
    say("fail-back 2/4: rebuilding this site as the peer's follower")
    rebuild(settings, force=False)
    say("fail-back 3/4: waiting until caught up with the peer")
    wait_caught_up(settings, args.timeout)
    say("fail-back 4/4: switching over")
    switchover(settings, reason=args.reason, operator=args.by, timeout=args.timeout)
    say(
        f"fail-back done: site {settings.dr_site} is primary. Next, at site "
        f"{settings.dr_peer_site}: 'strata dr rebuild' (it becomes this site's follower)"
    )
    return 0


def resend(settings: Settings, send_them: bool, to: str, called_ae: str) -> int:
    """List (and with ``send_them`` C-STORE to ``to``) what only this fenced site has."""
    from strata.archive.hot import HotTier
    from strata.cli.main import cmd_send

    ok, why = accepts_ingest(settings)
    if ok:
        raise StrataError("this site is not fenced: fail back starts at an old primary")
    print(why)
    # What this site acknowledged but had not published when it died is in its outbox: the
    # relay publishes it after the restart; wait (bounded) until it has.
    from strata.stack.local import health

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        h = health(settings.bind_host, settings.ingest_http_port) or {}
        if h.get("outbox_depth") == 0:
            break
        time.sleep(0.5)
    hot = HotTier(settings.hot_dir)
    found = orphans(settings)
    # Sent as their sender's AE: the stored file's meta names the calling AE (Source AE),
    # so the peer then stores the same bytes (same sha256, same key) as this site did, and
    # records an arrival of this very instance (what orphans() and rebuild look for).
    by_ae: dict[str, list[str]] = {}
    for st in found:
        f = hot.path(st.location.key)
        if st.location.tier == "hot" and f.is_file():
            by_ae.setdefault(st.calling_ae_title or settings.ingest_ae_title, []).append(str(f))
    n = sum(len(v) for v in by_ae.values())
    print(f"{len(found)} instances only this site has; {n} files in the hot tier")
    if not send_them or not n:
        return 0
    host, _, port = to.rpartition(":")
    rc = 0
    for ae, files in sorted(by_ae.items()):
        send = argparse.Namespace(
            paths=files,
            host=host,
            port=int(port),
            called_ae=called_ae,
            calling_ae=ae,
            quiet=True,
        )
        rc = max(rc, cmd_send(settings, send))
    return rc


# ------------------------------------------------------------------ fail-back: rebuild, switch


def _say(msg: str) -> None:
    print(msg, flush=True)


def require_fenced(settings: Settings, what: str) -> Any:
    """The latest epoch (here or at the peer), which must name the peer as primary: ``what``
    is done only at a fenced site. Refused (StrataError, exit 2) otherwise."""
    if not settings.dr_site or not settings.dr_peer_bootstrap:
        raise StrataError(
            f"{what} refused: STRATA_DR_SITE and STRATA_DR_PEER_BOOTSTRAP must be set "
            "(this archive is not part of a DR pair)"
        )
    ep = latest_epoch(settings)
    if ep is None:
        raise StrataError(f"{what} refused: no epoch here or at the peer (no primary yet)")
    if ep.primary_site == settings.dr_site:
        raise StrataError(
            f"{what} refused: site {settings.dr_site} is the primary of epoch {ep.epoch} "
            f"(or the peer {settings.dr_peer_site} cannot be reached to read a newer one); "
            "only a fenced site is rebuilt or switched over to"
        )
    return ep


def _data_dirs(settings: Settings) -> list[Path]:
    """What ``rebuild`` sets aside: every local Kafka node's data (its log) and the index
    (the embedded chDB of the index node, or of each index replica). Kafka's cluster id,
    credentials and TLS material, the hot tier and the ingest outbox stay in place."""
    from strata.stack import nodes
    from strata.stack.kafka import broker

    if settings.clickhouse_dsn:
        raise StrataError(
            "rebuild sets aside the embedded chDB index; with STRATA_CLICKHOUSE_DSN set, drop "
            "that database by hand and rebuild with 'strata reindex' (not automated)"
        )
    dirs = [n.dir / "data" for n in broker.nodes(settings)]
    if nodes.enabled(settings):
        dirs += [n.dir / "index" for n in nodes.nodes(settings) if n.kind == "index"]
    else:
        dirs.append(settings.node_home / "index")
    return [d for d in dirs if d.exists()]


def set_aside(settings: Settings, stamp: str | None = None) -> Path:
    """Move this site's Kafka data and index into ``<home>/set-aside/<UTC time>/`` (same
    relative paths). Never deleted: the hospital may need the old log."""
    import shutil

    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = settings.home / "set-aside" / stamp
    for d in _data_dirs(settings):
        try:
            rel = d.resolve().relative_to(settings.home.resolve())
        except ValueError:
            rel = Path(*d.resolve().parts[1:])  # outside the home: keep its full path below
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(d), str(target))
    return dest


def rebuild(settings: Settings, force: bool = False) -> Path:
    """This fenced site becomes a fresh follower of its peer: stop the stack, set its log and
    index aside, start the stack on empty topics, follow. Returns the set-aside directory."""
    from strata.ingest.outbox import Outbox
    from strata.stack import local

    say = _say
    ep = require_fenced(settings, "rebuild")
    say(
        f"rebuild: site {settings.dr_site} is fenced "
        f"({ep.primary_site} is primary, epoch {ep.epoch})"
    )
    if not force:
        say("rebuild: looking for instances only this site has (orphans) ...")
        left = orphans(settings)
        if left:
            raise StrataError(
                f"rebuild refused: {len(left)} instances of this site's log are not at "
                f"{settings.dr_peer_site} (first: {left[0].sop_instance_uid}); re-send them "
                f"first with 'strata dr failback --resend --to <{settings.dr_peer_site} "
                "ingest HOST:PORT>' (or --force to set them aside with the log)"
            )
        if settings.outbox_path.exists():
            ob = Outbox(settings.outbox_path)
            try:
                depth = ob.depth()
            finally:
                ob.close()
            if depth:
                raise StrataError(
                    f"rebuild refused: {depth} events in this site's ingest outbox are not in "
                    "its log yet (they would be published into the rebuilt log); start the "
                    "stack and let the relay publish them, then re-send with 'strata dr "
                    "failback --resend' (or --force)"
                )
        say("rebuild: none; the peer has every instance of this site's log")
    say("rebuild: stopping the stack ...")
    stopped = local.down(settings)
    say("rebuild: stopped " + (", ".join(stopped) or "nothing"))
    dest = set_aside(settings)
    say(f"rebuild: Kafka data and index set aside in {dest} (the hot tier stays)")
    say("rebuild: starting the stack on empty topics ...")
    local.up(settings)
    say("rebuild: stack up")
    cmd_follow(settings, argparse.Namespace())
    return dest


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    dest = rebuild(settings, force=args.force)
    print(
        f"site {settings.dr_site} is a fresh follower of {settings.dr_peer_site}; old log in "
        f"{dest}. Wait until caught up: 'strata dr wait'"
    )
    return 0


def caught_up(settings: Settings) -> tuple[bool, dict[str, Any]]:
    """(lag_events == 0 and copier_backlog_events == 0, the figures) at this following site."""
    from strata.stack import mirror

    if not mirror.proc(settings).pid():
        raise StrataError(
            f"the mirror is not running at site {settings.dr_site}: it does not follow "
            "('strata dr follow' or 'strata dr rebuild')"
        )
    out = lag(settings)
    out["copier_backlog_events"] = copier_backlog(settings)
    ok = out.get("lag_events") == 0 and out["copier_backlog_events"] == 0
    return ok, out


def wait_caught_up(settings: Settings, timeout: float, every: float = 5.0) -> dict[str, Any]:
    """Until this site has mirrored the peer's whole log and the copier examined all of it
    (progress every ``every`` s); StrataError after ``timeout`` s."""
    t0 = time.monotonic()
    last = -every
    while True:
        ok, fig = caught_up(settings)
        took = time.monotonic() - t0
        if ok:
            _say(
                f"caught up with {settings.dr_peer_site} in {took:.0f}s: lag_events 0, "
                f"copier_backlog_events 0 ({fig.get('mirrored_events', 0)} events mirrored)"
            )
            return fig
        if took - last >= every:
            last = took
            _say(
                f"  {took:4.0f}s  lag_events {fig.get('lag_events', fig.get('peer_log'))}  "
                f"lag_seconds {fig.get('lag_seconds', '-')}  "
                f"copier_backlog_events {fig['copier_backlog_events']}"
            )
        if took > timeout:
            raise StrataError(
                f"not caught up with {settings.dr_peer_site} after {timeout:.0f}s: {fig}"
            )
        time.sleep(1.0)


def cmd_wait(settings: Settings, args: argparse.Namespace) -> int:
    wait_caught_up(settings, args.timeout)
    return 0


def _write_epoch(
    cluster: kafka.Cluster,
    settings: Settings,
    n: int,
    previous: str,
    reason: str,
    operator: str | None,
    ends: kafka.Positions,
) -> None:
    """SiteEpoch{n, primary: this site} into the control topic of ``cluster`` (this site's at
    a promote, the current primary's at a switchover); ``ends``: where that log ended before
    it (``diverged_at``). Confirmed by Kafka, else StrataError."""
    from strata.common.events import envelope
    from strata.proto.strata.v1 import events_pb2 as pb

    epoch = pb.SiteEpoch(
        epoch=n,
        primary_site=settings.dr_site,
        previous_primary=previous,
        reason=reason,
        operator=operator or getpass.getuser(),
        diverged_at={f"{t}:{p}": o for t, parts in ends.items() for p, o in parts.items()},
    )
    env = envelope(
        epoch, study_uid="", service="dr", node=settings.node_name, occurred_at=datetime.now(UTC)
    )
    errors: list[str] = []
    p = kafka.producer(cluster, "durable", "dr")
    p.produce(
        settings.dr_topic,
        key=b"epoch",
        value=env.SerializeToString(),
        on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
    )
    if p.flush(30) or errors:
        raise StrataError(f"the epoch event was not confirmed by Kafka: {errors[:1] or 'timeout'}")


def switchover(
    settings: Settings, reason: str = "switchover", operator: str = "", timeout: float = 600.0
) -> int:
    """Planned switch of primacy to this caught-up follower, through the current primary's log
    (RPO 0): SiteEpoch{n+1, primary: here} written into the PEER's control topic (its fence and
    Role read it there), then wait until the peer's log stops growing and all of it is mirrored
    and examined here, then stop following. Returns the new epoch.

    ``diverged_at`` of this epoch: the peer's log ends (``topic:partition`` -> offset, offsets
    of the PEER's log) just before the epoch was written. What the peer appended after them
    is the window's tail (acknowledged before its fence noticed), which still reaches this site
    because the mirror runs until the peer's log is quiet; this site's own writes start after
    all of it. Run again after a failure, it resumes (the epoch is written once)."""
    from strata.processors.replay import end_positions

    say = _say
    peer = kafka.peer(settings)
    topics = [settings.study_topic, settings.quarantine_topic]
    at_peer = current_epoch(peer, settings.dr_topic)
    if at_peer is not None and at_peer.primary_site == settings.dr_site:
        n = at_peer.epoch  # written by an earlier run that stopped half-way: resume
        before: kafka.Positions = {}
        for tp, o in at_peer.diverged_at.items():
            t, _, part = tp.rpartition(":")
            before.setdefault(t, {})[int(part)] = o
        say(
            f"switchover: epoch {n} naming {settings.dr_site} is already in the peer's log; "
            "resuming"
        )
    else:
        ep = require_fenced(settings, "switchover")
        say(
            f"switchover: {ep.primary_site} is primary (epoch {ep.epoch}); "
            "waiting until this site is caught up"
        )
        wait_caught_up(settings, timeout)
        try:
            before = end_positions(peer, topics)
        except Unavailable as exc:
            raise StrataError(f"switchover: the peer's log cannot be read: {exc}") from exc
        n = ep.epoch + 1
        _write_epoch(peer, settings, n, ep.primary_site, reason, operator, before)
        say(
            f"switchover: epoch {n} (primary {settings.dr_site}) written to "
            f"{settings.dr_peer_site}'s log; it refuses ingest and stops deciding within "
            f"{settings.dr_fence_check_seconds:g}s"
        )
    # The peer's log stops growing once its fence and Role have read the epoch (and its relay
    # has published what its ingest acknowledged before): unchanged for a few fence periods.
    quiet = max(3.0, 3 * settings.dr_fence_check_seconds)
    say(f"switchover: waiting until {settings.dr_peer_site}'s log is unchanged for {quiet:g}s ...")
    t0 = time.monotonic()
    last = end_positions(peer, topics)
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() - t0 > timeout:
            raise StrataError(
                f"switchover: {settings.dr_peer_site}'s log still grows after {timeout:.0f}s "
                "(is its ingest fenced? 'strata dr status' there); run switchover again to resume"
            )
        time.sleep(min(1.0, quiet / 3))
        now = end_positions(peer, topics)
        if now != last:
            last, since = now, time.monotonic()
    tail = sum(
        max(0, o - before.get(t, {}).get(p, 0))
        for t, parts in last.items()
        for p, o in parts.items()
    )
    say(
        f"switchover: {settings.dr_peer_site}'s log is quiet; "
        f"{tail} offsets written after the epoch"
    )
    while True:  # the epoch itself mirrored here, and everything before it
        here = current_epoch(settings, settings.dr_topic)
        if here is not None and here.epoch >= n:
            break
        if time.monotonic() - t0 > timeout:
            raise StrataError(f"switchover: epoch {n} not mirrored here after {timeout:.0f}s")
        time.sleep(1.0)
    wait_caught_up(settings, max(30.0, timeout - (time.monotonic() - t0)))
    cmd_unfollow(settings, argparse.Namespace())
    say(
        f"site {settings.dr_site} is primary from epoch {n}; {settings.dr_peer_site} is fenced "
        f"(next, at {settings.dr_peer_site}: 'strata dr rebuild')"
    )
    return int(n)


def cmd_switchover(settings: Settings, args: argparse.Namespace) -> int:
    switchover(settings, reason=args.reason, operator=args.by or "", timeout=args.timeout)
    return 0
