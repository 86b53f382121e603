"""A model cache on a cluster filesystem shared by many nodes.

huggingface_hub found that ``flock`` silently succeeds for everyone on Lustre, GPFS and some
NFS mounts; a store needs no ``flock``: compute once works by leases in the store directory,
on exactly those filesystems. Each node keeps a local tier in front of the shared store, so a
model is fetched over the network once per node, and downloaded from the hub once in all.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Optional

import cas


def model_store(shared: pathlib.Path, local: Optional[pathlib.Path] = None) -> cas.Store:
    """The shared store, behind a node-local tier when ``local`` is given."""
    shared_store = cas.Store(shared)  # created on first use (docs/shared-stores.md)
    if local is None:
        return shared_store
    return cas.Store(local, upstream=shared)


def model_weights(
    store: cas.Store,
    repo: str,
    revision: str,
    fetch: Callable[[pathlib.Path], object],
    dest: pathlib.Path,
) -> pathlib.Path:
    """The weights of ``repo`` at ``revision``, fetched once across the cluster.

    A pinned revision names immutable content, so it is a safe key. A node that dies while
    fetching is taken over after its lease; a caller that waits longer than two hours raises
    ``cas.Locked`` (a ``TimeoutError``).
    """
    return store.ensure_file(f"model:{repo}@{revision}", fetch, dest=dest, timeout=7200)


if __name__ == "__main__":
    import shutil
    import sys

    store = model_store(pathlib.Path(sys.argv[1]), pathlib.Path(os.environ.get("LOCAL", "/tmp/cas")))
    src = pathlib.Path(sys.argv[2])
    print(model_weights(store, "org/model", "abc123", lambda out: shutil.copyfile(src, out), src.with_suffix(".cached")))
