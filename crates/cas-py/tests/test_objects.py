"""Objects: put/get by hash, files, directories, the verified file object, presence."""

from __future__ import annotations

import io
import os
import pathlib

import pytest

import cas
from conftest import flip_byte, object_path


def test_put_get_round_trip_for_every_bytes_like(store: cas.Store) -> None:
    h = store.put(b"hello")
    assert len(h) == 64 and h == h.lower()
    assert store.get(h) == b"hello"
    assert store.put(bytearray(b"hello")) == h
    assert store.put(memoryview(b"xhellox")[1:6]) == h
    assert store.put(b"") != h and store.get(store.put(b"")) == b""
    with pytest.raises(TypeError, match="not str"):
        store.put("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put(5)  # type: ignore[arg-type]


def test_get_is_verified_and_a_corrupt_object_is_quarantined(store: cas.Store) -> None:
    h = store.put(b"precious bytes")
    flip_byte(object_path(store, h))
    with pytest.raises(cas.Corrupt) as e:
        store.get(h)
    assert h in str(e.value) and e.value.hash == h
    assert not object_path(store, h).exists()
    assert any((store.path / "quarantine").iterdir())
    assert h not in store


def test_put_file_and_get_file_atomic(store: cas.Store, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    h = store.put_file(src)
    assert h == store.put(src.read_bytes())
    out = store.get_file(h, tmp_path / "out.bin")
    assert isinstance(out, pathlib.Path) and out.read_bytes() == src.read_bytes()
    # A corrupt object leaves the destination as it was: nothing partial is written.
    (tmp_path / "old.bin").write_bytes(b"old")
    flip_byte(object_path(store, h), 12345)
    with pytest.raises(cas.Corrupt):
        store.get_file(h, tmp_path / "old.bin")
    assert (tmp_path / "old.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "old.bin", "out.bin", "store"]
    with pytest.raises(cas.Error) as e:
        store.put_file(tmp_path / "missing")
    assert "missing" in str(e.value) and e.value.errno == 2


def test_put_dir_and_checkout(store: cas.Store, tmp_path: pathlib.Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a")
    (d / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    os.symlink("a.txt", d / "link")
    t = store.put_dir(d)
    assert store.put_dir(d) == t  # deterministic
    out = store.checkout(t, tmp_path / "out")
    assert out == tmp_path / "out"
    assert (out / "a.txt").read_text() == "a"
    assert (out / "sub" / "b.bin").read_bytes() == b"\0" * 1000
    assert os.readlink(out / "link") == "a.txt"
    assert store.checkout(t, tmp_path / "out") == out  # already holds it: fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(cas.Malformed, match="other"):
        store.checkout(t, tmp_path / "other")
    with pytest.raises(cas.Malformed):
        store.checkout(store.put(b"not a tree"), tmp_path / "out2")


def test_open_reads_seeks_and_tells(store: cas.Store) -> None:
    data = bytes(range(256)) * 5000
    h = store.put(data)
    with store.open(h) as f:
        assert isinstance(f, io.RawIOBase) and f.readable() and f.seekable()
        assert not f.writable()
        assert f.size == len(data)
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        buf = bytearray(100)
        assert f.readinto(buf) == 100 and bytes(buf) == data[10:110]
        assert f.seek(-6, io.SEEK_END) == len(data) - 6
        assert f.read() == data[-6:]
        assert f.read(5) == b""
        assert f.seek(1000) == 1000 and f.read(3) == data[1000:1003]
        assert f.seek(-3, io.SEEK_CUR) == 1000
        with pytest.raises(ValueError):
            f.seek(-1)
        with pytest.raises(ValueError):
            f.seek(0, 7)
        f.seek(0)
        assert f.readall() == data
    assert f.closed
    with pytest.raises(ValueError):
        f.read()
    # Works under the usual wrappers.
    with io.BufferedReader(store.open(h)) as b:
        assert b.read() == data


def test_open_is_verified(store: cas.Store) -> None:
    h = store.put(b"x" * 100_000)
    flip_byte(object_path(store, h), 99_999)
    with store.open(h) as f:
        with pytest.raises(cas.Corrupt):
            f.read()
    h = store.put(b"y" * 100_000)
    flip_byte(object_path(store, h), 99_999)
    with store.open(h) as f:
        assert f.tell() == 0  # tell reads nothing
        with pytest.raises(cas.Corrupt):
            f.seek(10)  # a seek verifies the whole object first
    with pytest.raises(cas.NotFound):
        store.open("0" * 64)


def test_read_range_and_seeks_are_verified_by_group(store: cas.Store) -> None:
    group = 16 * 1024
    data = bytes((i * 7 + (i >> 12)) % 251 for i in range(5 * 1024 * 1024 + 99))
    h = store.put(data)
    assert store.read_range(h, 0, 0) == b""
    assert store.read_range(h, group - 1, 2) == data[group - 1 : group + 1]
    assert store.read_range(h, len(data) - 5, 5) == data[-5:]
    with pytest.raises(ValueError):
        store.read_range(h, len(data) - 5, 6)
    flip_byte(object_path(store, h), 100 * group + 3)
    # Outside the damaged group: fine, through read_range and through a seeking file.
    assert store.read_range(h, 99 * group, group) == data[99 * group : 100 * group]
    with store.open(h) as f:
        assert f.seek(101 * group) == 101 * group
        assert f.read(10) == data[101 * group : 101 * group + 10]
        f.seek(100 * group + 1000)
        with pytest.raises(cas.Corrupt):
            f.read(1)
    with pytest.raises((cas.Corrupt, cas.NotFound)):
        store.read_range(h, 100 * group, 1)


def test_contains_and_in(store: cas.Store) -> None:
    h = store.put(b"here")
    assert store.contains(h) and h in store
    assert "0" * 64 not in store and not store.contains("0" * 64)
    with pytest.raises(cas.Malformed):
        store.contains("nope")


def test_default_store_and_create_false(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = cas.Store()
    assert s.path == tmp_path / "xdg" / "cas"
    assert (tmp_path / "xdg" / "cas" / "FORMAT").exists()
    monkeypatch.setenv("CAS_STORE", str(tmp_path / "explicit"))
    assert cas.Store().path == tmp_path / "explicit"
    with pytest.raises(cas.NotAStore) as e:
        cas.Store(tmp_path / "nothing", create=False)
    assert "nothing" in str(e.value)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "file").write_text("mine")
    with pytest.raises(cas.NotAStore):
        cas.Store(tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["file"]


def test_durability_and_repr(tmp_path: pathlib.Path) -> None:
    s = cas.Store(tmp_path / "s", durability="none")
    assert s.get(s.put(b"fast")) == b"fast"
    assert "s" in repr(s)
    with pytest.raises(cas.Malformed, match="durability"):
        cas.Store(tmp_path / "s", durability="sometimes")
    with pytest.raises(ValueError):
        cas.Store(tmp_path / "s", durability="sometimes")


def test_upstream_tier(tmp_path: pathlib.Path) -> None:
    shared = cas.Store(tmp_path / "shared")
    h = shared.put(b"from the shared store")
    local = cas.Store(tmp_path / "local", upstream=tmp_path / "shared")
    assert h in local
    assert local.get(h) == b"from the shared store"
    # Fetched once: now local.
    assert object_path(local, h).exists()
