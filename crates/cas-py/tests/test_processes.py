"""Across processes: 8 spawned workers share one download (the scanpy pattern), a Store
pickles for spawn and survives os.fork, and the GIL is released during I/O."""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator, List, Tuple

import pytest

import cas
import _workers

BODY = hashlib.sha256(b"seed").digest() * (4 << 20 >> 5)  # 4 MiB, deterministic


@pytest.fixture
def http_server() -> Iterator[Tuple[str, List[str]]]:
    """A loopback HTTP server that serves BODY and records every request."""
    requests: List[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            for i in range(0, len(BODY), 1 << 16):
                self.wfile.write(BODY[i : i + (1 << 16)])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pbmc3k.h5ad", requests
    finally:
        server.shutdown()
        server.server_close()


def test_scanpy_eight_spawned_workers_one_download(
    store: cas.Store, tmp_path: pathlib.Path, http_server: Tuple[str, List[str]]
) -> None:
    url, requests = http_server
    n = 8
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    dests = [str(tmp_path / f"worker{i}" / "pbmc3k.h5ad") for i in range(n)]
    for d in dests:
        os.makedirs(os.path.dirname(d))
    procs = [
        ctx.Process(target=_workers.download_once, args=(str(store.path), url, d, barrier))
        for d in dests
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    assert requests == ["/pbmc3k.h5ad"], f"{len(requests)} downloads"
    for d in dests:
        assert pathlib.Path(d).read_bytes() == BODY
    print(f"scanpy-style run: {n} workers, {len(requests)} download, {n} identical files")


def test_a_store_pickles_for_spawn(store: cas.Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        hashes = pool.starmap(_workers.use_pickled_store, [(store, b"one"), (store, b"two")])
    assert [store.get(h) for h in hashes] == [b"one", b"two"]


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, cas
    store = cas.Store(sys.argv[1])
    big = os.urandom(4 << 20)
    h = store.put(big)                 # the parent hashes on all cores (rayon's pool starts)
    assert store.get(h) == big
    pid = os.fork()
    if pid == 0:
        try:
            big2 = os.urandom(4 << 20)
            h2 = store.put(big2)       # hangs forever if the child used the parent's pool
            assert store.get(h2) == big2
            seen = []
            def produce(out):
                seen.append(out.name)
                out.write_bytes(b"from the child")
            store.ensure_file("child", produce, dest=sys.argv[1] + ".out")
            # Staging files and locks carry the child's own pid, not the parent's.
            assert f".{os.getpid()}." in seen[0], (seen, os.getpid())
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert open(sys.argv[1] + ".out", "rb").read() == b"from the child"
    print("fork ok")
    """
)


def test_fork_safety(tmp_path: pathlib.Path) -> None:
    # Its own session: if the child hangs (the failure this test is for), both go.
    p = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", FORK_SCRIPT, str(tmp_path / "s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the forked child hung (hashing on the parent's thread pool?)")
    assert p.returncode == 0 and "fork ok" in out, out + err


def test_the_gil_is_released_during_a_256_mib_put(tmp_path: pathlib.Path) -> None:
    store = cas.Store(tmp_path / "s", durability="none")
    data = bytes(256 << 20)
    seen: List[float] = []  # when the spinning thread ran
    done = threading.Event()

    def spin() -> None:
        n = 0
        while not done.is_set():
            n += 1
            if n % 1000 == 0:
                seen.append(time.perf_counter())

    t = threading.Thread(target=spin)
    t.start()
    try:
        t0 = time.perf_counter()
        h = store.put(data)
        t1 = time.perf_counter()
    finally:
        done.set()
        t.join()
    assert store.contains(h)
    # Holding the GIL through the put, the other thread could run only at the switch points
    # before and after it: it must have run in the middle half of the put too.
    lo, hi = t0 + (t1 - t0) / 4, t1 - (t1 - t0) / 4
    middle = [x for x in seen if lo < x < hi]
    assert len(middle) > 10, (len(middle), len(seen), t1 - t0)
