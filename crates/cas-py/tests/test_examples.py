"""The documented examples (examples/, quoted in docs/python.md) run, and type-check with
``mypy --strict`` against the package's stubs."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
from types import ModuleType
from typing import List

import pytest

import cas
from conftest import flip_byte, object_path

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_download_cache(store: cas.Store, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "remote.h5ad"
    src.write_bytes(b"dataset" * 1000)
    m = load("download_cache")
    out = m.dataset(store, src.as_uri(), tmp_path / "a.h5ad")
    assert out.read_bytes() == src.read_bytes()
    src.unlink()  # a hit does not download again
    assert m.dataset(store, (tmp_path / "remote.h5ad").as_uri(), tmp_path / "b.h5ad").exists()


def test_versioned_dir_cache(store: cas.Store, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "variants.txt"
    src.write_text("a\nb\nc\n")
    m = load("versioned_dir_cache")
    d = m.open_dataset(store, src, tmp_path / "w")
    assert (d / "data" / "2.txt").read_text() == "c"
    assert m.open_dataset(store, src, tmp_path / "w") == d  # already there: fine


def test_regenerated_cache(store: cas.Store) -> None:
    m = load("regenerated_cache")
    t = m.table(store, 100)
    assert t["9"] == 81
    h = store.put(store.get_key("sage:squares:100:v1") or b"")
    flip_byte(object_path(store, h), 3)
    assert m.table(store, 100) == t  # regenerated, not returned damaged


def test_model_cache(tmp_path: pathlib.Path) -> None:
    m = load("model_cache")
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(os.urandom(100_000))
    fetched: List[int] = []

    def fetch(out: pathlib.Path) -> None:
        fetched.append(1)
        shutil.copyfile(weights, out)

    node1 = m.model_store(tmp_path / "shared", tmp_path / "node1")
    node2 = m.model_store(tmp_path / "shared", tmp_path / "node2")
    a = m.model_weights(node1, "org/m", "abc", fetch, tmp_path / "n1.bin")
    b = m.model_weights(node2, "org/m", "abc", fetch, tmp_path / "n2.bin")
    assert a.read_bytes() == b.read_bytes() == weights.read_bytes()
    assert fetched == [1]  # once across both nodes: the entry lives in the shared store


def test_examples_and_tests_type_check_strictly() -> None:
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CAS_REQUIRE_MYPY") == "1":
            pytest.fail("mypy is not installed and CAS_REQUIRE_MYPY=1")
        pytest.skip("mypy is not installed")
    here = pathlib.Path(__file__).resolve().parent
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(EXAMPLES), str(here)],
        capture_output=True,
        text=True,
        cwd=here,
    )
    assert r.returncode == 0, r.stdout + r.stderr
