"""Shared fixtures: every test gets its own store and never touches a real default store."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

import cas


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("CAS_STORE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> cas.Store:
    return cas.Store(tmp_path / "store")


def object_path(store: cas.Store, h: str) -> pathlib.Path:
    return store.path / "objects" / h[:2] / h[2:]


def flip_byte(path: pathlib.Path, at: int = -1) -> None:
    """Damages a file in place (objects are read-only: made writable first)."""
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))
