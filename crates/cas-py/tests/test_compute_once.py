"""Compute once: ensure_bytes / ensure_file / ensure_dir, across threads; producer errors;
damaged entries rebuilt (the Sage and GenVarLoader patterns)."""

from __future__ import annotations

import os
import pathlib
import threading
import traceback
from typing import List

import pytest

import cas
from conftest import flip_byte, object_path


def test_ensure_bytes_computes_once_then_hits(store: cas.Store) -> None:
    calls: List[int] = []

    def produce() -> bytes:
        calls.append(1)
        return b"expensive"

    assert store.ensure_bytes("k", produce, metadata=b"m") == b"expensive"
    assert store.ensure_bytes("k", produce) == b"expensive"
    assert calls == [1]
    assert store.get_key("k") == b"expensive"
    assert store.ensure_bytes("ba", lambda: bytearray(b"ok")) == b"ok"
    with pytest.raises(TypeError):
        store.ensure_bytes("bad", lambda: "not bytes")  # type: ignore[arg-type, return-value]
    assert store.get_key("bad") is None


class Boom(Exception):
    pass


def failing() -> bytes:
    raise Boom("the producer failed: network down")


@pytest.mark.parametrize("kind", ["bytes", "file", "dir"])
def test_a_producers_exception_reaches_the_caller_unchanged(
    store: cas.Store, tmp_path: pathlib.Path, kind: str
) -> None:
    before = store.stats()["objects"]
    with pytest.raises(Boom, match="network down") as e:
        if kind == "bytes":
            store.ensure_bytes("k", failing)
        elif kind == "file":
            store.ensure_file("k", lambda p: failing(), dest=tmp_path / "f")
        else:
            store.ensure_dir("k", lambda p: failing(), dest=tmp_path / "d")
    assert type(e.value) is Boom
    frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert "failing" in frames  # the producer's own frame is in the traceback
    # Nothing stored: no entry, no object, no destination; the next caller computes.
    assert store.get_key("k") is None
    assert store.stats()["objects"] == before
    assert not (tmp_path / "f").exists() and not (tmp_path / "d").exists()
    assert store.ensure_bytes("k", lambda: b"second try") == b"second try"


def test_ensure_file(store: cas.Store, tmp_path: pathlib.Path) -> None:
    seen: List[pathlib.Path] = []

    def download(p: pathlib.Path) -> None:
        seen.append(p)
        p.write_bytes(b"payload" * 1000)

    out = store.ensure_file("url:x", download, dest=tmp_path / "a.bin")
    assert out == tmp_path / "a.bin" and out.read_bytes() == b"payload" * 1000
    # The producer wrote inside the store (its tmp/), never at the destination.
    assert isinstance(seen[0], pathlib.Path) and store.path in seen[0].parents
    assert not seen[0].exists()
    out2 = store.ensure_file("url:x", download, dest=tmp_path / "b.bin")
    assert out2.read_bytes() == b"payload" * 1000 and len(seen) == 1
    # An empty file is an empty value.
    assert store.ensure_file("empty", lambda p: None, dest=tmp_path / "e").read_bytes() == b""


def test_ensure_dir(store: cas.Store, tmp_path: pathlib.Path) -> None:
    def build(d: pathlib.Path) -> None:
        (d / "index.bin").write_bytes(b"index")
        (d / "sub").mkdir()
        (d / "sub" / "x").write_text("x")

    out = store.ensure_dir("idx:v1", build, dest=tmp_path / "w1")
    assert (out / "index.bin").read_bytes() == b"index" and (out / "sub" / "x").read_text() == "x"
    out = store.ensure_dir("idx:v1", lambda d: pytest.fail("hit expected"), dest=tmp_path / "w1")
    assert (out / "index.bin").exists()


def test_a_timeout_is_locked_and_a_timeout_error(store: cas.Store) -> None:
    """While one thread computes, another with a short timeout gives up with Locked."""
    started = threading.Event()
    release = threading.Event()
    errors: List[BaseException] = []

    def slow() -> bytes:
        started.set()
        assert release.wait(30)
        return b"slow"

    t = threading.Thread(target=lambda: store.ensure_bytes("k", slow))
    t.start()
    assert started.wait(30)
    try:
        store.ensure_bytes("k", lambda: b"never", timeout=0.2)
    except TimeoutError as e:
        errors.append(e)
    finally:
        release.set()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], cas.Locked)
    assert "k" in str(errors[0])
    assert store.ensure_bytes("k", lambda: b"never", timeout="1s") == b"slow"


def test_threads_race_on_ensure_dir_one_build(store: cas.Store, tmp_path: pathlib.Path) -> None:
    n = 6
    builds: List[int] = []
    barrier = threading.Barrier(n)
    results: List[pathlib.Path] = []
    failures: List[BaseException] = []

    def build(d: pathlib.Path) -> None:
        builds.append(threading.get_ident())
        for i in range(50):
            (d / f"part{i}").write_bytes(os.urandom(20_000))

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results.append(store.ensure_dir("dataset:v1", build, dest=tmp_path / f"out{i}"))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(builds) == 1
    trees = {store.put_dir(p) for p in results}
    assert len(results) == n and len(trees) == 1


def test_threads_race_on_ensure_bytes_one_compute(store: cas.Store) -> None:
    n = 8
    calls: List[int] = []
    barrier = threading.Barrier(n)
    values: List[bytes] = []

    def produce() -> bytes:
        calls.append(1)
        return os.urandom(1 << 20)  # a second computation would give other bytes

    def worker() -> None:
        barrier.wait()
        values.append(store.ensure_bytes("rand", produce))

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(values) == n and len(set(values)) == 1


def test_sage_a_corrupt_cache_is_regenerated(store: cas.Store) -> None:
    """Sage-style: a cache file damaged on disk is a miss, computed again, never returned."""
    calls: List[int] = []

    def produce() -> bytes:
        calls.append(1)
        return b"a table Sage would pickle" * 100

    value = store.ensure_bytes("sage:table:v1", produce)
    h = store.put(value)  # the same bytes: the entry's object
    flip_byte(object_path(store, h), 7)
    assert store.ensure_bytes("sage:table:v1", produce) == value
    assert len(calls) == 2
    assert store.get(h) == value  # healed: the object is whole again
    # A garbage entry file is a miss too.
    entries = [p for p in (store.path / "index").rglob("*") if p.is_file() and "lock" not in p.name]
    assert len(entries) == 1
    os.chmod(entries[0], 0o644)
    entries[0].write_bytes(b"garbage")
    assert store.ensure_bytes("sage:table:v1", produce) == value
    assert len(calls) == 3
    assert store.verify()["clean"]


def test_genvarloader_a_versioned_directory_cache(store: cas.Store, tmp_path: pathlib.Path) -> None:
    """GenVarLoader-style: built once per format version; rebuilt when corrupt."""
    builds: List[int] = []

    def open_dataset(version: int, dest: pathlib.Path) -> pathlib.Path:
        def build(d: pathlib.Path) -> None:
            builds.append(version)
            (d / "genotypes.npy").write_bytes(bytes([version]) * 50_000)
            (d / "meta.json").write_text(f'{{"format": {version}}}')

        return store.ensure_dir(f"gvl:hg38:v{version}", build, dest=dest)

    a = open_dataset(1, tmp_path / "a")
    b = open_dataset(1, tmp_path / "b")
    assert builds == [1]
    assert (a / "genotypes.npy").read_bytes() == (b / "genotypes.npy").read_bytes()
    c = open_dataset(2, tmp_path / "c")  # a new format version is a new entry
    assert builds == [1, 2] and (c / "meta.json").read_text() == '{"format": 2}'
    # Corrupt a file of version 1's tree in the store: the next caller rebuilds it.
    h = store.put((a / "genotypes.npy").read_bytes())
    flip_byte(object_path(store, h), 0)
    d = open_dataset(1, tmp_path / "d")
    assert builds == [1, 2, 1]
    assert (d / "genotypes.npy").read_bytes() == bytes([1]) * 50_000
