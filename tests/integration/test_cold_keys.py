"""Storage keys on the cold tier, against a real Ceph RGW: a recorded key that climbs out of
the bucket ('../other-bucket/...') is refused before any request is sent, so an object of another
bucket is never recalled and served, even with its true SHA-256 recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from strata.archive.keys import UnsafeKey
from strata.archive.recall import RecallCache
from strata.query.retrieve import Located, TieredSource
from tests.support.ceph import CephRGW

pytestmark = pytest.mark.integration


def test_a_key_naming_another_bucket_is_never_recalled(ceph_rgw: CephRGW, tmp_path: Path) -> None:
    ours, other = ceph_rgw.make_bucket("ours"), ceph_rgw.make_bucket("other")
    secret = b"an object of another bucket"
    ceph_rgw.client().put_object(Bucket=other, Key="secret.dcm", Body=secret)
    cold = ceph_rgw.cold_tier(ours)
    sent: list[str] = []  # every HTTP request the tier's client sends to RGW
    cold.client.meta.events.register("before-send", lambda request, **_: sent.append(request.url))
    (tmp_path / "hot").mkdir()
    source = TieredSource(tmp_path / "hot", {"cold": cold}, RecallCache(tmp_path / "c", 1 << 20))
    sha = hashlib.sha256(secret).hexdigest()
    for key in (f"../{other}/secret.dcm", f"/{other}/secret.dcm", f"x/../../{other}/secret.dcm"):
        loc = Located("1.2", "1.2.3", "1.2.3.4", "1.2", "1.2.840.10008.1.2.1", "cold", key, 27, sha)
        with pytest.raises(UnsafeKey):
            source.local_path(loc)
        with pytest.raises(UnsafeKey), cold.open(key):
            pass
    assert not list((tmp_path / "c").glob("*.dcm"))  # nothing was recalled
    # Not even asked: whether a gateway normalizes '..' in a path-style URL (reading the
    # other bucket) is never left to the gateway.
    assert sent == []
