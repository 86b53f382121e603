"""Issue 20's benchmark, in one run: cas through Python beside the caches a Python user would
pick instead — diskcache (``Cache.set``/``get``) and a pooch-style temp-file-and-rename — and
the Rust library itself doing the same operations (the binding's overhead).

    pip install ./crates/cas-py diskcache
    cargo build --release -p cas-bench --bin binding-overhead
    python crates/cas-py/bench/bench.py --rust target/release/binding-overhead

Every contender writes into its own fresh directory under ``--dir`` (default:
``target/py-bench``; it must be on the disk under test, not tmpfs) and reads back what it
wrote, warm, after an ``os.sync()`` so no contender pays for another's dirty pages; the
order of contenders rotates between rounds and the table shows medians. Values are an 8-byte counter and zeros, built before any timer starts; the Rust
side builds the same bytes. Prints a Markdown table of seconds per operation (lower is better)
and the ratios the issue's goals are about.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import cas

SMALL = 4 << 10
REGETS = 5  # passes of warm re-gets (binding-overhead.rs does the same)
BIG = 64 << 20


def value(i: int, size: int) -> bytes:
    return struct.pack("<Q", i) + bytes(size - 8)


def per_op(fn: Callable[[int], object], n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n


Row = Dict[Tuple[str, int], float]  # (op, size) -> seconds per operation
Values = Dict[int, List[bytes]]


def run_cas(d: pathlib.Path, durability: str, keyed: bool, values: Values) -> Row:
    store = cas.Store(d, durability=durability)
    row: Row = {}
    for size, vals in values.items():
        n = len(vals)
        os.sync()  # no contender pays for another's dirty pages
        if keyed:
            row[("put", size)] = per_op(lambda i: store.put_key(f"k{size}:{i}", vals[i]), n)
            row[("get", size)] = per_op(lambda i: store.get_key(f"k{size}:{i}"), n)
        else:
            hashes = [""] * n

            def put(i: int) -> None:
                hashes[i] = store.put(vals[i])

            row[("put", size)] = per_op(put, n)
            row[("get", size)] = per_op(lambda i: store.get(hashes[i]), n)
            if size == SMALL:
                # The binding's own cost, the filesystem as quiet as it gets: warm re-gets.
                row[("reget", size)] = per_op(lambda i: store.get(hashes[i % n]), REGETS * n)
    return row


def run_diskcache(d: pathlib.Path, values: Values) -> Row:
    import diskcache  # type: ignore[import-untyped, import-not-found, unused-ignore]

    row: Row = {}
    with diskcache.Cache(str(d)) as c:
        for size, vals in values.items():
            n = len(vals)
            os.sync()
            row[("put", size)] = per_op(lambda i: c.set(f"k{size}:{i}", vals[i]), n)
            row[("get", size)] = per_op(lambda i: c.get(f"k{size}:{i}"), n)
    return row


def run_pooch_style(d: pathlib.Path, values: Values) -> Row:
    """What pooch does to publish a download: a temporary file in the cache directory,
    renamed over the final name (no hashing unless a known hash is given, no fsync)."""
    d.mkdir()
    row: Row = {}
    for size, vals in values.items():
        n = len(vals)

        def put(i: int) -> None:
            with tempfile.NamedTemporaryFile(dir=d, delete=False) as f:
                f.write(vals[i])
            os.replace(f.name, d / f"k{size}.{i}")

        def get(i: int) -> None:
            with open(d / f"k{size}.{i}", "rb") as f:
                f.read()

        os.sync()
        row[("put", size)] = per_op(put, n)
        row[("get", size)] = per_op(get, n)
    return row


def run_rust(rust: str, d: pathlib.Path, durability: str, small: int, big: int) -> Row:
    os.sync()
    out = subprocess.run(
        [rust, str(d), durability, str(small), str(big)],
        check=True, capture_output=True, text=True,
    ).stdout
    row: Row = {}
    for line in out.splitlines():
        op, size, secs = line.split()
        row[(op, int(size))] = float(secs)
    return row


def fmt(secs: float) -> str:
    if secs < 1e-3:
        return f"{secs * 1e6:.1f} µs"
    return f"{secs * 1e3:.1f} ms"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dir", default="target/py-bench", help="must not exist yet")
    p.add_argument("--small", type=int, default=2000, help="4 KiB values per contender")
    p.add_argument("--big", type=int, default=3, help="64 MiB values per contender")
    p.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    p.add_argument("--rust", help="the binding-overhead binary (cargo build --release -p cas-bench)")
    a = p.parse_args(argv)
    base = pathlib.Path(a.dir).resolve()
    # Nothing is deleted until the end: on ext4 without a journal a mass delete slows file
    # creation for minutes (docs/performance.md, "Traps on this machine").
    base.mkdir(parents=True)
    values = {
        SMALL: [value(i, SMALL) for i in range(a.small)],
        BIG: [value((1 << 40) + i, BIG) for i in range(a.big)],
    }
    contenders: List[Tuple[str, Callable[[pathlib.Path], Row]]] = [
        ("cas (none)", lambda d: run_cas(d, "none", False, values)),
        ("cas (file)", lambda d: run_cas(d, "file", False, values)),
        ("cas keyed (none)", lambda d: run_cas(d, "none", True, values)),
        ("diskcache", lambda d: run_diskcache(d, values)),
        ("pooch-style", lambda d: run_pooch_style(d, values)),
    ]
    if a.rust:
        rust = a.rust
        contenders += [
            ("Rust library (none)", lambda d: run_rust(rust, d, "none", a.small, a.big)),
            ("Rust library (file)", lambda d: run_rust(rust, d, "file", a.small, a.big)),
        ]
    runs: Dict[str, List[Row]] = {name: [] for name, _ in contenders}
    for r in range(a.rounds):
        # Each round starts with another contender, so none is always first or last.
        k = r % len(contenders)
        for name, fn in contenders[k:] + contenders[:k]:
            runs[name].append(fn(base / f"round{r}" / name.replace(" ", "-")))
    res: Dict[Tuple[str, int], Dict[str, float]] = {
        key: {name: statistics.median(row[key] for row in runs[name]) for name, _ in contenders}
        for key in [("put", SMALL), ("get", SMALL), ("put", BIG), ("get", BIG)]
    }
    cols = list(res[("put", SMALL)])
    print(f"{a.small} × 4 KiB, {a.big} × 64 MiB per contender, median of {a.rounds} rounds, "
          f"in {base} (time per operation)\n")
    print("| op | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for (op, size), row in res.items():
        label = f"{op} {'4 KiB' if size == SMALL else '64 MiB'}"
        print(f"| {label} | " + " | ".join(fmt(row[c]) for c in cols) + " |")
    print()
    py_reget = statistics.median(r[("reget", SMALL)] for r in runs["cas (none)"])
    if a.rust:
        rust_reget = statistics.median(r[("reget", SMALL)] for r in runs["Rust library (none)"])
        print(f"- warm re-gets of the 4 KiB objects: Python {fmt(py_reget)}, Rust "
              f"{fmt(rust_reget)}: binding overhead {(py_reget / rust_reget - 1) * 100:+.0f} %")
    for (op, size), row in res.items():
        label = f"{op} {'4 KiB' if size == SMALL else '64 MiB'}"
        ratios = [f"cas (none) is {row['diskcache'] / row['cas (none)']:.2f}× diskcache",
                  f"cas keyed (none) {row['diskcache'] / row['cas keyed (none)']:.2f}×",
                  f"cas (none) {row['pooch-style'] / row['cas (none)']:.2f}× pooch-style"]
        if "Rust library (none)" in row:
            over = row["cas (none)"] / row["Rust library (none)"] - 1
            ratios.append(f"binding overhead {over * 100:+.0f} %")
        print(f"- {label}: " + "; ".join(ratios))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
