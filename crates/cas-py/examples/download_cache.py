"""A download cache shared by parallel workers (the scanpy pattern).

scanpy downloads datasets into a cache directory that parallel pytest workers share; a
worker that read another's half-written download was their bug. Here one worker downloads,
the others wait for it, and every worker gets the complete, verified file.
"""

from __future__ import annotations

import pathlib
import shutil
import urllib.request

import cas


def dataset(store: cas.Store, url: str, dest: pathlib.Path) -> pathlib.Path:
    """The file at ``url``, downloaded once across all processes and hosts using ``store``."""

    def download(out: pathlib.Path) -> None:
        # Written inside the store's tmp/, never at dest: no one sees a partial download.
        with urllib.request.urlopen(url) as response, open(out, "wb") as f:
            shutil.copyfileobj(response, f)

    return store.ensure_file(f"download:{url}", download, dest=dest, timeout=3600)


if __name__ == "__main__":
    import sys

    print(dataset(cas.Store(), sys.argv[1], pathlib.Path(sys.argv[2])))
