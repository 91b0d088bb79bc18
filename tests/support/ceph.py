"""A real Ceph (mon + osd + radosgw, S3 over HTTPS) for the tests, started once per session.

Use the session fixture ``ceph_rgw`` (registered in tests/conftest.py). Its value, a
``CephRGW``, has:

    endpoint       "https://127.0.0.1:<port>" (radosgw, beast frontend, TLS)
    access_key     S3 access key id of the test user
    secret_key     S3 secret key
    bucket         a bucket created at start ("strata-cold"); tests may make their own
    ca_path        Path of the CA PEM that signed radosgw's certificate (boto3 verify=)
    region         "us-east-1"
    data_dir       Path of the cluster's data (ceph.conf, logs/, run/, ...)
    env            {"STRATA_S3_ENDPOINT": ..., ...}: the archive's settings for this gateway
    rgw_pid        pid of radosgw (None while it is down)
    pids()         {"ceph-mon": pid, "ceph-osd": pid, "ceph-rgw": pid}

    cold_tier(bucket=None, **kw) -> archive.cold.ColdTier   (kw: multipart_threshold,
                   part_size, max_attempts, connect_timeout, read_timeout)
    client(**kw)   a boto3 S3 client with the project's settings (archive.cold.s3_client)
    make_bucket(prefix="t") -> str      a fresh, empty bucket for one test
    kill_rgw()     SIGKILL radosgw (a crash); start_rgw() restarts it and waits for HTTPS
    stop_rgw()     graceful stop
    rgw_down(kill=True)   context manager: radosgw down inside, always restarted after

Ceph is never skipped: if its binaries are missing the fixture fails with the apt-get line.
Radosgw has ``rgw_lc_debug_interval=10`` (one bucket-lifecycle "day" is 10 s).
A test that stops radosgw must restart it (``rgw_down`` does): the cluster is shared.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from strata.archive.cold import ColdTier, s3_client
from strata.stack import ceph
from tests.support.stack import free_port

LC_DEBUG_INTERVAL = 10


@dataclass
class CephRGW:
    handle: ceph.CephHandle
    _buckets: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # the handle's attributes, flattened for readability in tests
    @property
    def endpoint(self) -> str:
        return self.handle.endpoint

    @property
    def access_key(self) -> str:
        return self.handle.access_key

    @property
    def secret_key(self) -> str:
        return self.handle.secret_key

    @property
    def bucket(self) -> str:
        return self.handle.bucket

    @property
    def ca_path(self) -> Path:
        return self.handle.ca_path

    @property
    def region(self) -> str:
        return self.handle.region

    @property
    def data_dir(self) -> Path:
        return self.handle.data_dir

    @property
    def env(self) -> dict[str, str]:
        return self.handle.s3_env()

    @property
    def rgw_pid(self) -> int | None:
        return self.handle.rgw_pid

    def pids(self) -> dict[str, int | None]:
        return self.handle.pids()

    def client(self, **kw: Any) -> Any:
        return s3_client(
            self.endpoint, self.access_key, self.secret_key, str(self.ca_path), self.region, **kw
        )

    def cold_tier(self, bucket: str | None = None, **kw: Any) -> ColdTier:
        return ColdTier.connect(
            self.endpoint,
            self.access_key,
            self.secret_key,
            bucket or self.bucket,
            str(self.ca_path),
            self.region,
            **kw,
        )

    def make_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{int(time.time())}-{next(self._buckets)}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def kill_rgw(self) -> None:
        ceph.stop_rgw(self.data_dir, kill=True)

    def stop_rgw(self) -> None:
        ceph.stop_rgw(self.data_dir)

    def start_rgw(self, timeout: float = 120.0) -> None:
        ceph.start_rgw(self.data_dir, timeout=timeout)

    @contextlib.contextmanager
    def rgw_down(self, kill: bool = True) -> Iterator[None]:
        if kill:
            self.kill_rgw()
        else:
            self.stop_rgw()
        try:
            yield
        finally:
            self.start_rgw()


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """One real Ceph cluster for the whole test session (about 20 s to start)."""
    data = tmp_path_factory.mktemp("ceph")
    try:
        handle = ceph.start(
            data,
            mon_port=free_port(),
            rgw_port=free_port(),
            lc_debug_interval=LC_DEBUG_INTERVAL,
        )
    except BaseException:
        ceph.stop(data)  # never leave half a cluster running behind a failed start
        raise
    try:
        yield CephRGW(handle)
    finally:
        ceph.stop(data)
