"""Keys (cache entries) and refs, with compare-and-swap."""

from __future__ import annotations

import pytest

import cas


def test_keys(store: cas.Store) -> None:
    assert store.get_key("k") is None
    h = store.put_key("k", b"value", b"etag=1")
    assert store.get(h) == b"value"
    assert store.get_key("k") == b"value"
    assert store.get_key(b"k") == b"value"  # str keys are their UTF-8 bytes
    h2 = store.put(b"other")
    assert store.set_key("k", h2) == h  # returns the previous value
    assert store.get_key("k") == b"other"
    with pytest.raises(cas.Conflict) as e:
        store.set_key("k", h, expect=h)  # it is h2 now
    assert "k" in str(e.value)
    assert store.get_key("k") == b"other"
    assert store.set_key("k", h, expect=h2) == h2
    with pytest.raises(cas.Conflict):
        store.set_key("k", h2, expect=None)  # must be absent
    assert store.set_key("new", h2, expect=None) is None
    store.remove_key("new")
    assert store.get_key("new") is None
    with pytest.raises(cas.NotFound):
        store.remove_key("new")
    with pytest.raises(cas.NotFound):
        store.set_key("k", "0" * 64)  # the object must exist
    with pytest.raises(TypeError):
        store.get_key(5)  # type: ignore[arg-type]


def test_refs(store: cas.Store) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    assert store.get_ref("release/v1") is None
    assert store.set_ref("release/v1", a, expect=None) is None
    assert store.get_ref("release/v1") == a
    with pytest.raises(cas.Conflict) as e:
        store.set_ref("release/v1", b, expect=None)
    assert "release/v1" in str(e.value)
    with pytest.raises(cas.Conflict):
        store.set_ref("release/v1", b, expect=b)
    assert store.set_ref("release/v1", b, expect=a) == a
    assert store.set_ref("release/v1", a) == b  # expect=ANY
    assert store.set_ref("release/v1", b, expect=cas.ANY) == a
    assert store.refs() == [("release/v1", b)]
    assert store.refs("nope") == []
    with pytest.raises(cas.Malformed, match="ref name"):
        store.set_ref("../escape", a)
    with pytest.raises(cas.Malformed):
        store.set_ref("x", "not-a-hash")
    with pytest.raises(TypeError):
        store.set_ref("x", a, expect=5)  # type: ignore[arg-type]
    assert store.remove_ref("release/v1", expect=b) == b
    assert store.get_ref("release/v1") is None


def test_a_compare_and_swap_counter_loses_no_update(store: cas.Store) -> None:
    """Threads race on one ref by compare-and-swap; every lost race is a Conflict."""
    import threading

    store.set_ref("counter", store.put(b"0"))
    conflicts = 0
    lock = threading.Lock()

    def bump() -> None:
        nonlocal conflicts
        for _ in range(20):
            while True:
                old = store.get_ref("counter")
                assert old is not None
                n = int(store.get(old))
                try:
                    store.set_ref("counter", store.put(str(n + 1).encode()), expect=old)
                    break
                except cas.Conflict:
                    with lock:
                        conflicts += 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_ref("counter")
    assert final is not None and store.get(final) == b"80"
