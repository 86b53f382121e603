"""gc, verify, stats."""

from __future__ import annotations

import datetime

import pytest

import cas
from conftest import flip_byte, object_path


def test_gc_collects_only_the_unreachable(store: cas.Store) -> None:
    kept = store.put_key("k", b"kept")
    ref = store.put(b"by ref")
    store.set_ref("r", ref)
    loose = store.put(b"loose")
    r = store.gc(grace=0)
    assert r["clean"] and r["trashed"] == 1 and r["deleted"] == 1
    assert r["condemned"] == [loose]
    assert loose not in store and kept in store and ref in store
    # A long grace keeps a young unreachable object.
    young = store.put(b"young")
    r = store.gc(grace=datetime.timedelta(hours=1))
    assert young in store and r["kept_young"] == 1
    r = store.gc(grace="0s")
    assert young not in store


def test_gc_max_size_evicts_cache_entries(store: cas.Store) -> None:
    for i in range(10):
        store.put_key(f"k{i}", bytes([i]) * 10_000)
    r = store.gc(max_size=30_000, grace=0)
    assert r["evicted_entries"] >= 7
    assert store.stats()["bytes"] <= 30_000
    assert store.gc(max_size="1K", grace=0)["bytes_after"] <= 1024
    with pytest.raises(ValueError):
        store.gc(max_size="lots")
    with pytest.raises(ValueError):
        store.gc(grace=-1)


def test_verify_and_stats(store: cas.Store) -> None:
    good = store.put(b"good")
    bad = store.put(b"bad bytes")
    s = store.stats()
    assert s["objects"] == 2 and s["bytes"] == 13 and s["path"] == store.path
    assert isinstance(s["filesystem"], str)
    assert store.verify()["clean"]
    flip_byte(object_path(store, bad))
    r = store.verify()
    assert not r["clean"]
    assert [c["hash"] for c in r["corrupt"]] == [bad]
    assert r["corrupt"][0]["quarantined"]
    assert good in store and bad not in store
    assert store.verify()["clean"]
