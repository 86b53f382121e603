"""Functions run in child processes (multiprocessing with spawn imports them by name)."""

from __future__ import annotations

import pathlib
import urllib.request
from typing import Any

import cas


def download_once(store_path: str, url: str, dest: str, barrier: Any) -> str:
    """A scanpy-style dataset download: every pytest worker asks at once; one downloads."""
    store = cas.Store(store_path, create=False)
    barrier.wait()

    def fetch(out: pathlib.Path) -> None:
        with urllib.request.urlopen(url) as r, open(out, "wb") as f:
            while chunk := r.read(1 << 16):
                f.write(chunk)

    return str(store.ensure_file(f"dataset:{url}", fetch, dest=dest))


def use_pickled_store(store: cas.Store, data: bytes) -> str:
    """A Store passed to a spawned child (pickled, opened again there)."""
    h = store.put(data)
    assert store.get(h) == data
    return h
