"""The embedded broker's cluster id must never look like a command-line option."""

from __future__ import annotations

from pathlib import Path

from strata.stack.kafka.broker import _cluster_id


def test_cluster_id_never_starts_with_a_dash(tmp_path: Path) -> None:
    ids = []
    for i in range(300):
        d = tmp_path / str(i)
        d.mkdir()
        ids.append(_cluster_id(d))
        assert _cluster_id(d) == ids[-1]  # stable once chosen
    assert all(len(c) == 22 and not c.startswith("-") for c in ids)


def test_a_saved_bad_id_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "cluster.id").write_text("-abcdefghijklmnopqrstu")
    cid = _cluster_id(tmp_path)
    assert not cid.startswith("-") and (tmp_path / "cluster.id").read_text() == cid
