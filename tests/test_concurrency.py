"""Three offloader processes on one config, repeatedly, while rows keep arriving."""

from __future__ import annotations

import datetime as dt
import itertools
import threading

import anyio
import asyncpg
import pytest

from tests.helpers import Env

pytestmark = pytest.mark.integration

TABLES = ["c1", "c2", "c3", "c4"]


def test_three_workers_share_tables_exactly_once(env_long: Env) -> None:
    env = env_long
    for name in TABLES:
        env.create_trades(name)
        env.insert_trades(name, 30_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config(
        [env.table(n, batch_rows=5_000, append_rows=10_000) for n in TABLES],
        service={"max_parallel_tables": 2},
    )
    failures: list[str] = []

    def worker() -> None:
        for _ in range(4):
            result = env.cli("once")
            if result.returncode != 0:
                failures.append(result.stdout + result.stderr)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    batch = 0
    while any(t.is_alive() for t in threads):
        batch += 1
        start = dt.datetime(2026, 2, 1) + dt.timedelta(hours=batch)
        for name in TABLES:
            env.insert_trades(
                name, 2_000, first_id=1_000_000 * batch, start=f"{start:%Y-%m-%d %H:%M:%S}"
            )
        anyio.run(anyio.sleep, 0.3)
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert env.once().ok
    assert env.cli("verify").returncode == 0
    for name in TABLES:
        assert env.assert_tiers_equal(f"cold.{name}") == 30_000 + 2_000 * batch

    async def runs() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(env.pg_dsn)
        try:
            return await conn.fetch(
                f"SELECT target, host, started_at, finished_at, status, rows "
                f'FROM "{env.pg_schema}".runs ORDER BY target, started_at'
            )
        finally:
            await conn.close()

    records = anyio.run(runs)
    by_table: dict[str, list[asyncpg.Record]] = {}
    for r in records:
        by_table.setdefault(r["target"], []).append(r)
    workers_with_rows = {r["host"] for r in records if r["rows"] > 0}
    assert len(workers_with_rows) >= 2, "tables should be spread across workers"
    for target, rs in by_table.items():
        for a, b in itertools.pairwise(rs):
            # One worker at a time per table: runs of a table never overlap.
            assert a["finished_at"] <= b["started_at"], (target, a, b)
