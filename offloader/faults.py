"""Test-only fault injection: die by SIGKILL at a named point of a table run.

`OFFLOADER_TEST_KILL_AT=point[:n]` makes the process kill itself the n-th time (default
1st) it passes `point`. Points: read (a page was read from ClickHouse), convert (a page
was converted), write (Parquet files were written, not committed), iceberg_commit (the
Iceberg snapshot is committed, PostgreSQL not yet), watermark_txn (inside the
PostgreSQL transaction, before COMMIT). Maintenance points: compact_write (compacted
files written, not committed), compact_commit (the replacing snapshot is committed),
expire (snapshots expired), orphan_delete (one orphan file deleted). The view over
both tiers: view_replace (both commits done, the view not yet replaced). Unset in
production: one dict lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "OFFLOADER_TEST_KILL_AT"
# With workers (service/workers.py): only the worker of this index dies.
WORKER = "OFFLOADER_TEST_KILL_WORKER"
POINTS = ("read", "convert", "write", "iceberg_commit", "watermark_txn", "view_replace")
MAINTENANCE_POINTS = ("compact_write", "compact_commit", "expire", "orphan_delete")
_hits: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    only = os.environ.get(WORKER)
    if only is not None and only != os.environ.get("OFFLOADER_WORKER"):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
