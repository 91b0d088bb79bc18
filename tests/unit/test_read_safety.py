"""Read-path safety: storage keys from events are checked before any tier resolves them, the
hot tier's put makes an existing key's directory entry durable, credentials never reach an
error message."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import strata.archive.hot
from strata.archive.cold import ColdTier
from strata.archive.hot import HotTier
from strata.archive.keys import UnsafeKey, check_key, instance_key, key_path
from strata.archive.recall import RecallCache
from strata.common.errors import NotFound, Unavailable
from strata.common.redact import redact
from strata.processors.index.store import IndexStore
from strata.query.retrieve import HotSource, Located, TieredSource

SHA = "a" * 64
GOOD = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5", SHA)
BAD_KEYS = [
    "",
    "../../etc/passwd",
    "studies/../../x",
    "/etc/passwd",
    "studies//x.dcm",
    "studies/./x.dcm",
    "studies/x\0.dcm",
    "studies/x\n.dcm",
    "studies\\..\\x",
    "..",
    "x" * 1025,
]


def loc(key: str, tier: str = "hot", sha256: str = SHA) -> Located:
    return Located(
        "1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2", "1.2.840.10008.1.2.1", tier, key, 4, sha256
    )


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_refuses_keys_that_are_not_plain_relative_keys(key: str) -> None:
    with pytest.raises(UnsafeKey):
        check_key(key)


def test_check_key_accepts_the_keys_the_archive_makes() -> None:
    assert check_key(GOOD) == GOOD


def test_key_path_refuses_a_symbolic_link_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "hot"
    (root / "studies").mkdir(parents=True)
    (tmp_path / "secret").write_text("not an object")
    os.symlink(tmp_path / "secret", root / "studies" / "link.dcm")
    with pytest.raises(UnsafeKey):
        key_path(root, "studies/link.dcm")
    assert key_path(root, GOOD) == root.resolve() / GOOD


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "studies/x\0"])
def test_hot_tier_never_opens_a_key_outside_its_root(tmp_path: Path, key: str) -> None:
    (tmp_path / "outside.dcm").write_bytes(b"secret")
    hot = HotTier(tmp_path / "hot")
    with pytest.raises(UnsafeKey), hot.open(key):
        pass
    with pytest.raises(UnsafeKey):
        hot.exists(key)


def test_hot_source_refuses_an_escaping_key(tmp_path: Path) -> None:
    (tmp_path / "outside.dcm").write_bytes(b"secret")
    (tmp_path / "hot").mkdir()
    with pytest.raises(UnsafeKey):
        HotSource(tmp_path / "hot").local_path(loc("../outside.dcm"))


class CountingTier:
    """A remote tier that records every key it is asked for (it must be asked for none)."""

    name = "cold"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def open(self, key: str) -> Any:
        self.asked.append(key)
        raise NotFound(key)


def test_tiered_source_refuses_before_any_tier_is_asked(tmp_path: Path) -> None:
    target = tmp_path / "outside.dcm"
    target.write_bytes(b"data")
    sha = hashlib.sha256(b"data").hexdigest()
    (tmp_path / "hot").mkdir()
    cold = CountingTier()
    src = TieredSource(tmp_path / "hot", {"cold": cold}, RecallCache(tmp_path / "cache", 1 << 20))
    for tier in ("hot", "cold"):
        with pytest.raises(UnsafeKey):
            src.local_path(loc("../outside.dcm", tier, sha))
    assert cold.asked == []


def test_recall_refuses_an_unsafe_key(tmp_path: Path) -> None:
    cold = CountingTier()
    with pytest.raises(UnsafeKey):
        RecallCache(tmp_path / "cache", 1 << 20).get(cold, "../../x", SHA)  # type: ignore[arg-type]
    assert cold.asked == []


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(**kw: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"S3 {name} called with {kw.get('Key')!r}")

        return call


@pytest.mark.parametrize("key", ["../other-bucket/object", "/abs", "a/../../b", "k\0"])
def test_cold_tier_sends_no_request_for_an_unsafe_key(tmp_path: Path, key: str) -> None:
    client = RecordingClient()
    cold = ColdTier(client, "strata-cold")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for op in (
        lambda: cold.head(key),
        lambda: cold.download_to(key, tmp_path / "dst"),
        lambda: cold.put_file(key, src, SHA),
        lambda: cold.delete(key),
    ):
        with pytest.raises(UnsafeKey):
            op()
    with pytest.raises(UnsafeKey), cold.open(key):
        pass
    assert client.calls == []


def test_put_of_an_existing_key_fsyncs_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = HotTier(tmp_path / "hot")
    first = hot.incoming / "a"
    first.write_bytes(b"obj")
    assert hot.put_file(GOOD, first)
    synced: list[str] = []
    real = strata.archive.hot._fsync_dir

    def record(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(strata.archive.hot, "_fsync_dir", record)
    again = hot.incoming / "b"
    again.write_bytes(b"obj")
    assert not hot.put_file(GOOD, again)  # a duplicate: the key existed
    # The first write may have crashed after link() and before its directory fsync: the
    # duplicate's "durable" answer must not rest on that un-fsync'd entry.
    assert str(hot.path(GOOD).parent) in synced


def test_redact_masks_userinfo_and_password_parameters() -> None:
    text = redact(
        "at http://admin:p@ss/w0rd@db.example:8123/strata and "
        "clickhouse://u:pw@h:9000/x?password=hunter2&secure=1; chdb:///var/index"
    )
    for secret in ("admin", "p@ss", "w0rd", "pw@", "hunter2"):
        assert secret not in text
    assert "db.example:8123/strata" in text and "chdb:///var/index" in text


def test_index_dsn_password_is_not_in_the_error() -> None:
    with pytest.raises(Unavailable) as info:
        IndexStore("http://admin:s3cretpw@127.0.0.1:1/", "strata")
    assert "s3cretpw" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_nodes_sharing_a_hot_volume_keep_and_purge_only_their_own_spool(tmp_path: Path) -> None:
    from strata.common.settings import Settings
    from strata.ingest.node import purge_incoming

    a = HotTier(tmp_path / "hot", "ingest-0")
    b = HotTier(tmp_path / "hot", "ingest-1")
    assert a.incoming != b.incoming and a.incoming.parent == b.incoming.parent
    (a.incoming / "rx-a").write_bytes(b"partial")
    (b.incoming / "rx-b").write_bytes(b"in flight on the other pod")
    purge_incoming(Settings(home=tmp_path, spool_dir="ingest-0"))  # ingest-0 restarts
    assert not (a.incoming / "rx-a").exists()
    assert (b.incoming / "rx-b").exists()
    purge_incoming(Settings(home=tmp_path))  # a node without its own spool: files only
    assert (b.incoming / "rx-b").exists()
    first = b.incoming / "obj"
    first.write_bytes(b"obj")
    assert b.put_file(GOOD, first)
    assert list(a.keys()) == [GOOD]  # no spool directory is a key
    with pytest.raises(ValueError):
        HotTier(tmp_path / "hot", "../elsewhere")
