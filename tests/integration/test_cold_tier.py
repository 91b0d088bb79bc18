"""The cold tier against a real Ceph RADOS Gateway over HTTPS (never a mock, never skipped).

The Tier contract is written once and run against both tiers (hot: local disk; cold: RGW).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from strata.archive.cold import ColdTier, build_cold_tier, s3_client
from strata.archive.hot import HotTier
from strata.archive.tiers import Tier
from strata.common.errors import Conflict, NotFound, Unavailable
from strata.common.settings import Settings
from strata.stack import ceph
from tests.support.ceph import CephRGW
from tests.support.stack import free_port

pytestmark = pytest.mark.integration


def _blob(tmp: Path, name: str, n: int) -> tuple[Path, str]:
    p = tmp / name
    p.write_bytes(os.urandom(n))
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


def _key(sha: str, sop: str = "1.2.3.4") -> str:
    return f"studies/1.2.3/1.2.3.1/{sop}.{sha}.dcm"


@pytest.fixture
def cold(ceph_rgw: CephRGW) -> ColdTier:
    return ceph_rgw.cold_tier(ceph_rgw.make_bucket("cold"))


# --------------------------------------------------------------------------- the Tier contract


@pytest.fixture(params=["hot", "cold"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    if request.param == "hot":
        yield HotTier(tmp_path / "hot")
    else:
        yield request.getfixturevalue("cold")


def _put(tier: Tier, key: str, src: Path, sha: str) -> bool:
    if isinstance(tier, HotTier):
        spool = tier.incoming / "spool"
        spool.write_bytes(src.read_bytes())
        return tier.put_file(key, spool)
    assert isinstance(tier, ColdTier)
    return tier.put_file(key, src, sha)


def test_tier_contract(tier: Tier, tmp_path: Path) -> None:
    src, sha = _blob(tmp_path, "a", 70_000)
    key = _key(sha)
    assert tier.name in ("hot", "cold")
    assert not tier.exists(key) and tier.size(key) is None
    assert _put(tier, key, src, sha) is True
    assert tier.exists(key) and tier.size(key) == 70_000
    with tier.open(key) as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha
    assert _put(tier, key, src, sha) is False  # an idempotent repeat
    other, osha = _blob(tmp_path, "b", 10)
    _put(tier, _key(osha, "1.2.3.5"), other, osha)
    assert sorted(tier.keys("studies/1.2.3/")) == sorted([key, _key(osha, "1.2.3.5")])
    assert list(tier.keys("studies/1.2.3/1.2.3.1/1.2.3.5.")) == [_key(osha, "1.2.3.5")]
    assert list(tier.keys("nothing/")) == []
    tier.delete(key)
    tier.delete(key)  # absent is not an error: deletes are retried after crashes
    assert not tier.exists(key) and tier.size(key) is None
    with pytest.raises(NotFound), tier.open(key):
        pass
    assert list(tier.keys()) == [_key(osha, "1.2.3.5")]


# --------------------------------------------------------------------------- cold specifics


def test_put_leaves_source_and_records_sha256(cold: ColdTier, tmp_path: Path) -> None:
    src, sha = _blob(tmp_path, "a", 123_456)
    before = src.read_bytes()
    assert cold.put_file(_key(sha), src, sha)
    assert src.read_bytes() == before  # the source is untouched (the hot copy stays)
    info = cold.head(_key(sha))
    assert info is not None and info.size == 123_456 and info.sha256 == sha
    assert info.etag.strip('"') == hashlib.md5(before, usedforsecurity=False).hexdigest()


def test_repeat_put_is_idempotent_and_never_overwrites(cold: ColdTier, tmp_path: Path) -> None:
    src, sha = _blob(tmp_path, "a", 4096)
    key = _key(sha)
    assert cold.put_file(key, src, sha) is True
    assert cold.put_file(key, src, sha) is False
    bigger, _ = _blob(tmp_path, "b", 4097)
    with pytest.raises(Conflict):
        cold.put_file(key, bigger, sha)
    with cold.open(key) as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha


def test_download_to_is_complete_and_returns_sha256(cold: ColdTier, tmp_path: Path) -> None:
    src, sha = _blob(tmp_path, "a", 300_000)
    cold.put_file(_key(sha), src, sha)
    dst = tmp_path / "out" / "x.dcm"
    assert cold.download_to(_key(sha), dst) == sha
    assert dst.read_bytes() == src.read_bytes()
    assert [p.name for p in dst.parent.iterdir()] == ["x.dcm"]  # no temp file left behind


def test_multipart_upload_of_a_big_object(ceph_rgw: CephRGW, tmp_path: Path) -> None:
    cold = ceph_rgw.cold_tier(
        ceph_rgw.make_bucket("mp"), multipart_threshold=6 * 1024**2, part_size=5 * 1024**2
    )
    src, sha = _blob(tmp_path, "big", 13 * 1024**2 + 17)
    assert cold.put_file(_key(sha), src, sha)
    info = cold.head(_key(sha))
    assert info is not None and info.size == src.stat().st_size and info.sha256 == sha
    assert info.etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 3 MiB
    assert cold.download_to(_key(sha), tmp_path / "back") == sha
    assert cold.put_file(_key(sha), src, sha) is False
    # nothing half-finished left in the bucket
    assert not cold.client.list_multipart_uploads(Bucket=cold.bucket).get("Uploads")


def test_absent_keys_are_not_found(cold: ColdTier, tmp_path: Path) -> None:
    key = _key("0" * 64)
    assert not cold.exists(key) and cold.size(key) is None and cold.head(key) is None
    with pytest.raises(NotFound), cold.open(key):
        pass
    with pytest.raises(NotFound):
        cold.download_to(key, tmp_path / "d" / "x")
    assert list((tmp_path / "d").iterdir()) == []
    cold.delete(key)


def test_rgw_411_gotcha_is_avoided_by_the_client_config(ceph_rgw: CephRGW) -> None:
    """boto3's default (aws-chunked + CRC32 trailer) is refused by RGW 16.2 over HTTPS with 411;
    the project's client config (checksums only when required, ContentMD5) passes."""
    bucket = ceph_rgw.make_bucket("gotcha")
    default = boto3.session.Session().client(
        "s3",
        endpoint_url=ceph_rgw.endpoint,
        aws_access_key_id=ceph_rgw.access_key,
        aws_secret_access_key=ceph_rgw.secret_key,
        verify=str(ceph_rgw.ca_path),
        region_name=ceph_rgw.region,
    )
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        default.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 411
    assert ceph_rgw.endpoint.startswith("https://")
    ceph_rgw.client().put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert ceph_rgw.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"


def test_a_certificate_from_another_ca_is_refused(ceph_rgw: CephRGW, tmp_path: Path) -> None:
    other_ca, _, _ = ceph.ensure_tls(tmp_path / "other-tls")
    for ca in (str(other_ca), None):  # another CA, and the system's CAs
        tier = ColdTier.connect(
            ceph_rgw.endpoint,
            ceph_rgw.access_key,
            ceph_rgw.secret_key,
            ceph_rgw.bucket,
            ca,
            max_attempts=1,
        )
        with pytest.raises(Unavailable, match="TLS|SSL|certificate"):
            tier.exists("anything")


def test_wrong_credentials_are_unavailable_not_not_found(ceph_rgw: CephRGW) -> None:
    tier = ColdTier.connect(
        ceph_rgw.endpoint,
        ceph_rgw.access_key,
        "not-the-secret",
        ceph_rgw.bucket,
        str(ceph_rgw.ca_path),
        max_attempts=1,
    )
    with pytest.raises(Unavailable):
        tier.exists(_key("1" * 64))


def test_build_cold_tier_from_settings(ceph_rgw: CephRGW, tmp_path: Path) -> None:
    assert build_cold_tier(Settings.from_env({})) is None
    tier = build_cold_tier(Settings.from_env(ceph_rgw.env))
    assert tier is not None and tier.bucket == ceph_rgw.bucket
    src, sha = _blob(tmp_path, "a", 1000)
    assert tier.put_file(_key(sha, "9.9.9"), src, sha)
    assert tier.size(_key(sha, "9.9.9")) == 1000


def test_rgw_killed_is_unavailable_then_recovers_with_objects_intact(
    ceph_rgw: CephRGW, tmp_path: Path
) -> None:
    bucket = ceph_rgw.make_bucket("crash")
    fast = ceph_rgw.cold_tier(bucket, max_attempts=1, connect_timeout=1, read_timeout=5)
    kept = []
    for i in range(5):
        src, sha = _blob(tmp_path, f"o{i}", 20_000 + i)
        assert fast.put_file(_key(sha, f"1.2.{i}"), src, sha)
        kept.append((_key(sha, f"1.2.{i}"), sha))
    new, nsha = _blob(tmp_path, "new", 5000)
    old_pid = ceph_rgw.rgw_pid
    with ceph_rgw.rgw_down(kill=True):
        assert ceph_rgw.rgw_pid is None
        for call in (
            lambda: fast.exists(kept[0][0]),
            lambda: fast.size(kept[0][0]),
            lambda: fast.put_file(_key(nsha), new, nsha),
            lambda: fast.download_to(kept[0][0], tmp_path / "dl"),
            lambda: list(fast.keys()),
            lambda: fast.delete(kept[0][0]),
        ):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t0 < 10
    assert ceph_rgw.rgw_pid not in (None, old_pid)
    for key, sha in kept:
        assert fast.download_to(key, tmp_path / "back" / key) == sha
    assert fast.put_file(_key(nsha), new, nsha)  # writes work again
    assert len(list(fast.keys())) == 6


def test_client_settings_are_the_ones_rgw_needs(ceph_rgw: CephRGW) -> None:
    c = s3_client(ceph_rgw.endpoint, "a", "b", str(ceph_rgw.ca_path))
    assert c.meta.config.request_checksum_calculation == "when_required"
    assert c.meta.config.response_checksum_validation == "when_required"


# --------------------------------------------------------------------------- stack/ceph.py


def test_missing_ceph_binaries_fail_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = ceph.shutil.which
    monkeypatch.setattr(ceph.shutil, "which", lambda b: None if b == "radosgw" else real_which(b))
    with pytest.raises(Unavailable, match="radosgw.*apt-get install ceph-mon"):
        ceph.start(tmp_path / "c", mon_port=1, rgw_port=2)


def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    with socket.socket() as busy:  # the mon's port is taken: the mon cannot bind
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(Unavailable, match="ceph-mon"):
            ceph.start(tmp_path / "c", mon_port=port, rgw_port=free_port(), timeout=30)
    assert [p.pid() for p in ceph.procs(tmp_path / "c").values()] == [None, None, None]
