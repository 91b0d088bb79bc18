"""A real single-host Ceph 16.2 (Debian packages) for the cold tier: mon + osd + radosgw.

Layout under the caller's data dir (everything loopback, cephx on, no mgr):

    ceph.conf             the one config file (mon port, rgw port, memory/thread limits)
    state.json            fsid, ports, OSD uuid, S3 credentials (reused on restart)
    keyrings/             mon., client.admin, osd.0, client.rgw.strata
    mon/ osd/             mon store; OSD with BlueStore on a sparse ``block`` file
    tls/                  self-signed CA and the radosgw server certificate (cached)
    run/ logs/            pid files and admin sockets; daemon logs (and each Proc's stdout)

``start`` formats on first use and reuses the formatted data afterwards, so a stop/start (or a
``kill -9`` of radosgw followed by ``start_rgw``) keeps every object. The OSD's own ports come
from a small range given by the caller (Ceph binds several per daemon); the mon and radosgw
ports are exact. Readiness is "S3 answers over HTTPS with the generated CA", nothing less.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strata.common.errors import Unavailable
from strata.stack.procs import Proc

BINARIES = (
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "radosgw-admin",
    "ceph",
    "ceph-authtool",
    "monmaptool",
)
DEBIAN_PACKAGES = "ceph-mon ceph-osd radosgw ceph-common ceph-base"
MON_ID = "a"
OSD_ID = 0
RGW_NAME = "client.rgw.strata"
S3_USER = "strata"
# A sparse file: only written blocks use disk. BlueStore needs room for its DB/WAL as well.
OSD_BLOCK_BYTES = 20 * 1024**3


# BlueStore's RocksDB with small memtables (the default is 4 x 256 MiB): a small archive's
# metadata fits, and the OSD stays around 100 MB resident.
_ROCKSDB_OPTIONS = ",".join(
    [
        "compression=kNoCompression",
        "max_write_buffer_number=2",
        "min_write_buffer_number_to_merge=1",
        "recycle_log_file_num=2",
        "write_buffer_size=16777216",
        "writable_file_max_buffer_size=0",
        "compaction_readahead_size=2097152",
        "max_background_compactions=1",
        "max_total_wal_size=67108864",
    ]
)


@dataclass(frozen=True)
class CephHandle:
    """A running Ceph: what a client needs to use its S3 API (and to stop it)."""

    data_dir: Path
    endpoint: str  # https://127.0.0.1:<rgw_port>
    access_key: str
    secret_key: str
    bucket: str
    ca_path: Path  # PEM of the CA that signed radosgw's certificate: boto3 verify=<this>
    region: str
    mon_port: int
    rgw_port: int

    @property
    def conf(self) -> Path:
        return self.data_dir / "ceph.conf"

    def procs(self) -> dict[str, Proc]:
        return procs(self.data_dir)

    def pids(self) -> dict[str, int | None]:
        return {name: p.pid() for name, p in self.procs().items()}

    @property
    def rgw_pid(self) -> int | None:
        return procs(self.data_dir)["ceph-rgw"].pid()

    def s3_env(self) -> dict[str, str]:
        """The archive's ``STRATA_S3_*`` settings pointing at this gateway."""
        return {
            "STRATA_S3_ENDPOINT": self.endpoint,
            "STRATA_S3_ACCESS_KEY": self.access_key,
            "STRATA_S3_SECRET_KEY": self.secret_key,
            "STRATA_S3_BUCKET": self.bucket,
            "STRATA_S3_CA_BUNDLE": str(self.ca_path),
            "STRATA_S3_REGION": self.region,
        }


def installed() -> bool:
    return all(shutil.which(b) for b in BINARIES)


def require_binaries() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise Unavailable(
            f"Ceph is not installed (missing: {', '.join(missing)}); the cold tier's local "
            f"object store needs Ceph 16.2 (Debian: apt-get install {DEBIAN_PACKAGES})"
        )


def procs(data_dir: Path) -> dict[str, Proc]:
    run, logs = data_dir / "run", data_dir / "logs"
    return {n: Proc(n, run, logs) for n in ("ceph-mon", "ceph-osd", "ceph-rgw")}


# --------------------------------------------------------------------------- start / stop


def start(
    data_dir: Path,
    mon_port: int,
    rgw_port: int,
    osd_ports: tuple[int, int] = (6800, 7300),
    bucket: str = "strata-cold",
    lc_debug_interval: int = 0,
    timeout: float = 180.0,
) -> CephHandle:
    """Start (formatting on first use) mon, osd and radosgw; return when S3 answers over TLS.

    ``osd_ports``: the range Ceph's messenger may bind the OSD's sockets in (it needs ~4).
    ``lc_debug_interval``: seconds per lifecycle "day" (tests only; 0 = real days).
    """
    require_binaries()
    data_dir = data_dir.resolve()
    running = {n for n, p in procs(data_dir).items() if p.pid()}
    try:
        return _start(data_dir, mon_port, rgw_port, osd_ports, bucket, lc_debug_interval, timeout)
    except BaseException:
        # Never leave half a cluster behind a failed start (what was already running stays).
        for name in ("ceph-rgw", "ceph-osd", "ceph-mon"):
            if name not in running:
                pid = procs(data_dir)[name].pid()
                procs(data_dir)[name].stop(grace=20.0)
                _reap(pid)
        raise


def _start(
    data_dir: Path,
    mon_port: int,
    rgw_port: int,
    osd_ports: tuple[int, int],
    bucket: str,
    lc_debug_interval: int,
    timeout: float,
) -> CephHandle:
    for d in ("keyrings", "mon", "osd", "run", "logs", "tls", "rgw"):
        (data_dir / d).mkdir(parents=True, exist_ok=True)
    state = _state(data_dir, mon_port, bucket)
    ca, cert, key = ensure_tls(data_dir / "tls")
    _write_conf(data_dir, state, rgw_port, osd_ports, cert, key, lc_debug_interval)
    deadline = time.monotonic() + timeout
    p = procs(data_dir)
    _ensure_keyrings(data_dir)
    if not (data_dir / "mon" / f"ceph-{MON_ID}" / "store.db").exists():
        _mkfs_mon(data_dir, state)
    p["ceph-mon"].start(_daemon(data_dir, "ceph-mon", "-i", MON_ID))
    _wait(lambda: _ceph_ok(data_dir, "mon", "stat"), p["ceph-mon"], deadline, "ceph-mon quorum")
    if not (data_dir / "osd" / f"ceph-{OSD_ID}" / "ready").exists():
        _mkfs_osd(data_dir, state)
    p["ceph-osd"].start(_daemon(data_dir, "ceph-osd", "-i", str(OSD_ID)))
    _wait(lambda: _osd_up(data_dir), p["ceph-osd"], deadline, "ceph-osd up")
    start_rgw(data_dir, timeout=max(1.0, deadline - time.monotonic()))
    h = handle(data_dir)
    _ensure_user_and_bucket(data_dir, h, state)
    return h


def start_rgw(data_dir: Path, timeout: float = 120.0) -> None:
    """(Re)start radosgw only, and wait until S3 answers over HTTPS."""
    data_dir = data_dir.resolve()
    p = procs(data_dir)["ceph-rgw"]
    p.start(_daemon(data_dir, "radosgw", "-n", RGW_NAME))
    h = handle(data_dir)
    _wait(lambda: _https_answers(h), p, time.monotonic() + timeout, "radosgw (S3 over HTTPS)")


def stop_rgw(data_dir: Path, kill: bool = False) -> None:
    """Stop radosgw: gracefully, or with SIGKILL (a crash, for fault tests)."""
    p = procs(data_dir.resolve())["ceph-rgw"]
    pid = p.pid()
    if pid and kill:
        os.kill(pid, 9)
        while p.pid():
            time.sleep(0.05)
    p.stop(grace=20.0)
    _reap(pid)


def stop(data_dir: Path) -> list[str]:
    """Stop radosgw, the OSD, then the mon. Returns the names stopped."""
    stopped = []
    p = procs(data_dir.resolve())
    for name in ("ceph-rgw", "ceph-osd", "ceph-mon"):
        pid = p[name].pid()
        if p[name].stop(grace=30.0):
            stopped.append(name)
        _reap(pid)
    return stopped


def _reap(pid: int | None) -> None:
    """Collect a stopped daemon's exit status when this process started it (no zombies)."""
    if pid:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def handle(data_dir: Path) -> CephHandle:
    """The handle of a (formatted) cluster in ``data_dir``, from its saved state."""
    data_dir = data_dir.resolve()
    s = json.loads((data_dir / "state.json").read_text())
    return CephHandle(
        data_dir=data_dir,
        endpoint=f"https://127.0.0.1:{s['rgw_port']}",
        access_key=s["access_key"],
        secret_key=s["secret_key"],
        bucket=s["bucket"],
        ca_path=data_dir / "tls" / "ca.pem",
        region="us-east-1",
        mon_port=int(s["mon_port"]),
        rgw_port=int(s["rgw_port"]),
    )


def rss_kib(data_dir: Path) -> dict[str, int]:
    """Resident memory of each running daemon (KiB), for docs and status."""
    out = {}
    for name, p in procs(data_dir.resolve()).items():
        pid = p.pid()
        if not pid:
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1])
        except FileNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- formatting


def _state(data_dir: Path, mon_port: int, bucket: str) -> dict[str, object]:
    f = data_dir / "state.json"
    if f.exists():
        s: dict[str, object] = json.loads(f.read_text())
        if int(str(s["mon_port"])) != mon_port:
            # The mon's address is baked into its monmap at mkfs: moving it means a new cluster.
            raise Unavailable(
                f"the Ceph data in {data_dir} was formatted with mon port {s['mon_port']}, "
                f"not {mon_port}: start it on the same port (or remove the directory)"
            )
        s["bucket"] = bucket
    else:
        s = {
            "fsid": str(uuid.uuid4()),
            "osd_uuid": str(uuid.uuid4()),
            "mon_port": mon_port,
            "bucket": bucket,
            # S3 access keys: 20 upper-case alphanumerics and a 40-char secret, as AWS issues.
            "access_key": "".join(
                secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(20)
            ),
            "secret_key": secrets.token_urlsafe(30)[:40],
        }
    _write_private(f, json.dumps(s, indent=1))
    return s


def _write_conf(
    data_dir: Path,
    state: dict[str, object],
    rgw_port: int,
    osd_ports: tuple[int, int],
    cert: Path,
    key: Path,
    lc_debug_interval: int,
) -> None:
    state["rgw_port"] = rgw_port
    _write_private(data_dir / "state.json", json.dumps(state, indent=1))
    d = data_dir
    conf = f"""\
# Generated by stack/ceph.py: a one-host Ceph on 127.0.0.1 for Strata's cold tier.
[global]
fsid = {state["fsid"]}
mon_host = v2:127.0.0.1:{state["mon_port"]}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
ms_bind_port_min = {osd_ports[0]}
ms_bind_port_max = {osd_ports[1]}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {d}/keyrings/$cluster.$name.keyring
run_dir = {d}/run
admin_socket = {d}/run/$cluster-$name.asok
pid_file = {d}/run/$cluster-$name.cephpid
log_file = {d}/logs/$cluster-$name.log
log_to_stderr = false
err_to_stderr = true
log_max_recent = 500
# one OSD: one replica, few placement groups, no cross-host placement
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_data_avail_crit = 1
mon_data_avail_warn = 2
# small: two shared cores, beside Kafka
ms_async_op_threads = 2
mon_osd_full_ratio = .97
mon_osd_nearfull_ratio = .95
mon_osd_backfillfull_ratio = .96

[mon]
mon_data = {d}/mon/$cluster-$id
mon_cluster_log_file = {d}/logs/$cluster.clog
mon_osd_down_out_interval = 0

[osd]
osd_data = {d}/osd/$cluster-$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = {OSD_BLOCK_BYTES}
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_memory_target = 939524096
bluestore_rocksdb_options = {_ROCKSDB_OPTIONS}
osd_op_num_shards_hdd = 1
osd_op_num_threads_per_shard_hdd = 2
osd_op_num_shards_ssd = 1
osd_op_num_threads_per_shard_ssd = 2
osd_max_backfills = 1
osd_scrub_during_recovery = false

[{RGW_NAME}]
rgw_data = {d}/rgw
rgw_frontends = beast ssl_endpoint=127.0.0.1:{rgw_port} ssl_certificate={cert} ssl_private_key={key}
rgw_thread_pool_size = 32
rgw_enable_usage_log = false
rgw_enable_ops_log = false
rgw_init_timeout = 300
rgw_lc_debug_interval = {lc_debug_interval if lc_debug_interval > 0 else -1}
rgw_dns_name = localhost
"""
    (data_dir / "ceph.conf").write_text(conf)


def _ensure_keyrings(data_dir: Path) -> None:
    k = data_dir / "keyrings"
    mon = k / "ceph.mon..keyring"
    if mon.exists():
        return
    tmp = k / "mon.keyring.partial"
    tmp.unlink(missing_ok=True)
    _run(["ceph-authtool", "--create-keyring", str(tmp), "--gen-key", "-n", "mon.",
          "--cap", "mon", "allow *"])  # fmt: skip
    caps = {
        "client.admin": ["mon", "allow *", "osd", "allow *", "mds", "allow *", "mgr", "allow *"],
        f"osd.{OSD_ID}": ["mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"],
        RGW_NAME: ["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"],
    }
    for name, c in caps.items():
        f = k / f"ceph.{name}.keyring"
        f.unlink(missing_ok=True)
        argv = ["ceph-authtool", "--create-keyring", str(f), "--gen-key", "-n", name]
        for i in range(0, len(c), 2):
            argv += ["--cap", c[i], c[i + 1]]
        _run(argv)
        _run(["ceph-authtool", str(tmp), "--import-keyring", str(f)])
        f.chmod(0o600)
    tmp.chmod(0o600)
    tmp.rename(mon)


def _mkfs_mon(data_dir: Path, state: dict[str, object]) -> None:
    mdir = data_dir / "mon" / f"ceph-{MON_ID}"
    shutil.rmtree(mdir, ignore_errors=True)
    monmap = data_dir / "run" / "monmap"
    monmap.unlink(missing_ok=True)
    _run(["monmaptool", "--create", "--fsid", str(state["fsid"]),
          "--addv", MON_ID, f"[v2:127.0.0.1:{state['mon_port']}]", str(monmap)])  # fmt: skip
    keyring = data_dir / "keyrings" / "ceph.mon..keyring"
    _run(["ceph-mon", "-c", str(data_dir / "ceph.conf"), "--mkfs", "-i", MON_ID,
          "--monmap", str(monmap), "--keyring", str(keyring)])  # fmt: skip


def _mkfs_osd(data_dir: Path, state: dict[str, object]) -> None:
    odir = data_dir / "osd" / f"ceph-{OSD_ID}"
    shutil.rmtree(odir, ignore_errors=True)
    odir.mkdir(parents=True)
    osd_uuid = str(state["osd_uuid"])
    # Register the OSD id with the mon (idempotent for the same uuid), its key is already known
    # to the mon (imported into the mon keyring at mkfs).
    osd_id = _ceph(data_dir, "osd", "new", osd_uuid, str(OSD_ID)).strip()
    if osd_id != str(OSD_ID):
        raise Unavailable(f"ceph osd new returned id {osd_id!r}, expected {OSD_ID}")
    shutil.copy(data_dir / "keyrings" / f"ceph.osd.{OSD_ID}.keyring", odir / "keyring")
    _run(["ceph-osd", "-c", str(data_dir / "ceph.conf"), "-i", str(OSD_ID), "--mkfs",
          "--osd-uuid", osd_uuid, "--no-mon-config"])  # fmt: skip
    # (mkfs writes "ready" itself; keep our own marker check on it.)
    if not (odir / "ready").exists():
        (odir / "ready").write_text("bluestore\n")


def _ensure_user_and_bucket(data_dir: Path, h: CephHandle, state: dict[str, object]) -> None:
    conf = str(data_dir / "ceph.conf")
    info = subprocess.run(
        ["radosgw-admin", "-c", conf, "-n", RGW_NAME, "user", "info", "--uid", S3_USER],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if info.returncode != 0:
        _run(["radosgw-admin", "-c", conf, "-n", RGW_NAME, "user", "create", "--uid", S3_USER,
              "--display-name", "Strata cold tier", "--access-key", str(state["access_key"]),
              "--secret-key", str(state["secret_key"])])  # fmt: skip
    from strata.archive.cold import s3_client

    client = s3_client(h.endpoint, h.access_key, h.secret_key, str(h.ca_path), h.region)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.head_bucket(Bucket=h.bucket)
            return
        except client.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                client.create_bucket(Bucket=h.bucket)
                return
            # A user just created may take a moment to be visible to radosgw's cache.
            if time.monotonic() > deadline:
                raise Unavailable(f"cannot reach bucket {h.bucket}: {exc}") from exc
            time.sleep(0.5)


# --------------------------------------------------------------------------- TLS


def ensure_tls(tls_dir: Path) -> tuple[Path, Path, Path]:
    """RGW's certificate: the project CA's server certificate for 127.0.0.1/localhost
    (common/pki.py, made once and cached in ``tls_dir``). Returns (ca.pem, server.pem,
    server.key); clients verify with ca.pem."""
    from strata.common.pki import ensure_pki

    pki = ensure_pki(tls_dir)
    return pki.ca, pki.server_cert, pki.server_key


# --------------------------------------------------------------------------- helpers


def _daemon(data_dir: Path, binary: str, *args: str) -> list[str]:
    # -f: stay in the foreground so the Proc's pid is the daemon's; logs go to log_file.
    return [binary, "-f", "-c", str(data_dir / "ceph.conf"), *args]


def _run(argv: list[str], timeout: float = 120.0) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{argv[0]} timed out after {timeout:.0f}s") from exc
    if r.returncode != 0:
        out = f"{r.stdout[-1500:]}{r.stderr[-1500:]}"
        raise Unavailable(f"{' '.join(argv[:3])} ... failed ({r.returncode}): {out}")
    return r.stdout


def _ceph(data_dir: Path, *args: str, timeout: int = 20) -> str:
    return _run(
        ["ceph", "-c", str(data_dir / "ceph.conf"), "--connect-timeout", str(timeout), *args],
        timeout=timeout + 10,
    )


def _ceph_ok(data_dir: Path, *args: str) -> bool:
    try:
        _ceph(data_dir, *args, timeout=5)
        return True
    except Unavailable:
        return False


def _osd_up(data_dir: Path) -> bool:
    try:
        st = json.loads(_ceph(data_dir, "osd", "stat", "-f", "json", timeout=5))
    except (Unavailable, ValueError):
        return False
    return int(st.get("num_up_osds", 0)) >= 1 and int(st.get("num_in_osds", 0)) >= 1


def _https_answers(h: CephHandle) -> bool:
    """True when radosgw answers an HTTPS request whose certificate verifies with our CA."""
    ctx = ssl.create_default_context(cafile=str(h.ca_path))
    try:
        with urllib.request.urlopen(h.endpoint + "/", timeout=3, context=ctx) as r:
            return r.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # 403 AccessDenied for an anonymous list: it is serving
    except (OSError, ssl.SSLError):
        return False


def _wait(ok: Callable[[], bool], proc: Proc, deadline: float, what: str) -> None:
    while True:
        if ok():
            return
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited while waiting for {what}; log tail:\n"
                              f"{proc.tail(30)}\n{_daemon_log_tail(proc)}")  # fmt: skip
        if time.monotonic() > deadline:
            tail = f"{proc.tail(30)}\n{_daemon_log_tail(proc)}"
            raise Unavailable(f"timed out waiting for {what}; log tail:\n{tail}")
        time.sleep(0.3)


def _daemon_log_tail(proc: Proc, lines: int = 30) -> str:
    name = {"ceph-mon": f"mon.{MON_ID}", "ceph-osd": f"osd.{OSD_ID}", "ceph-rgw": RGW_NAME}
    f = proc.log_dir / f"ceph-{name.get(proc.name, proc.name)}.log"
    try:
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
