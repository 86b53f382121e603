"""A directory cache built once per format version (the GenVarLoader pattern).

GenVarLoader writes a dataset directory once and rebuilds it when its layout version changes
or the files are damaged. The version is part of the key: a new layout is a new entry, and
old entries age out under gc's size budget. A damaged entry is a miss and is rebuilt.
"""

from __future__ import annotations

import json
import pathlib

import cas

FORMAT_VERSION = 3


def build_index(source: pathlib.Path, out: pathlib.Path) -> None:
    """The expensive step: here, a toy index of the source's lines."""
    lines = source.read_text().splitlines()
    (out / "index.json").write_text(json.dumps({"format": FORMAT_VERSION, "lines": len(lines)}))
    (out / "data").mkdir()
    for i, line in enumerate(lines):
        (out / "data" / f"{i}.txt").write_text(line)


def open_dataset(store: cas.Store, source: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """The dataset directory for ``source``: built once, restored for everyone else."""
    content = store.put_file(source)  # the key names the input's content, not its path
    key = f"gvl:{content}:v{FORMAT_VERSION}"
    dest = workdir / f"dataset-v{FORMAT_VERSION}-{content[:16]}"
    workdir.mkdir(parents=True, exist_ok=True)
    return store.ensure_dir(key, lambda out: build_index(source, out), dest=dest)


if __name__ == "__main__":
    import sys

    print(open_dataset(cas.Store(), pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])))
