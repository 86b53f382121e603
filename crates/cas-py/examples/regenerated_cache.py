"""A regenerated cache that concurrent processes race on (the Sage pattern).

Sage keeps expensive tables in a cache that concurrent processes wrote at the same time, and
a damaged cache file broke every later run. Here the value is computed once among all
callers; a damaged or missing value is a miss and is computed again, never returned.
"""

from __future__ import annotations

import json

import cas


def expensive_table(n: int) -> dict[str, int]:
    return {str(k): k * k for k in range(n)}


def table(store: cas.Store, n: int) -> dict[str, int]:
    """The table for ``n``: cached, computed once across processes, regenerated if damaged."""
    raw = store.ensure_bytes(
        f"sage:squares:{n}:v1",
        lambda: json.dumps(expensive_table(n)).encode(),
        metadata=b"format=json",
    )
    value: dict[str, int] = json.loads(raw)
    return value


if __name__ == "__main__":
    print(len(table(cas.Store(), 1000)))
