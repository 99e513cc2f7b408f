"""Crashes, kills, conflicts and locks: nothing lost, nothing duplicated."""

from __future__ import annotations

import dataclasses
import random
import signal
import time

import anyio
import pyarrow as pa
import pytest

from offloader import faults
from offloader.errors import InconsistentState, Locked
from offloader.iceberg import IcebergCatalog, Marker
from offloader.postgres.watermarks import Watermarks
from tests.helpers import Env

pytestmark = pytest.mark.integration


def test_crash_between_iceberg_and_postgres_commits_recovers(env: Env) -> None:
    env.create_trades("crash")
    env.insert_trades("crash", 50_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("crash", batch_rows=10_000, append_rows=20_000)])
    result = env.cli("once", extra_env={faults.ENV: "iceberg_commit"})
    assert result.returncode == -9  # died right after its first Iceberg commit
    report = env.once()
    assert report.ok, report.summary()
    [t] = report.tables
    assert t.recovered, "PostgreSQL should have been advanced from the Iceberg snapshot"
    assert t.rows == 30_000
    assert env.assert_tiers_equal("cold.crash") == 50_000


def test_sigkill_at_random_moments_then_rerun(env: Env) -> None:
    env.create_trades("kill")
    env.insert_trades("kill", 400_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("kill", batch_rows=10_000, append_rows=30_000)])
    rng = random.Random(7)
    kills = attempts = 0
    rows = 400_000
    # Until three runs were killed mid-way (a run may finish first: it is fast now).
    while kills < 3 and attempts < 20:
        attempts += 1
        proc = env.popen("once")
        time.sleep(rng.uniform(0.3, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=120)
        # Rows keep arriving (after all the others), so the next run has work to die in.
        env.insert_trades(
            "kill", 100_000, first_id=rows + 1, start=f"2026-02-{attempts:02d} 00:00:00"
        )
        rows += 100_000
    assert kills >= 3, f"{kills} of {attempts} runs killed mid-way"
    final = env.cli("once")
    assert final.returncode == 0, final.stdout + final.stderr
    assert env.assert_tiers_equal("cold.kill") == rows


def test_iceberg_append_is_compare_and_set(env: Env) -> None:
    env.write_config([env.table("cas")])
    catalog = IcebergCatalog(env.config().catalog)
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    first = catalog.ensure("cold.cas", schema, ())
    stale = catalog.load("cold.cas")
    assert stale is not None
    batch = pa.RecordBatch.from_pylist([{"id": 1}], schema=schema)

    written = [first.write_files([batch])]
    mark = first.commit_files(written, Marker(1, [1], "run-a", 1))
    assert mark.seq == 1
    # Retrying the same commit (e.g. after a lost response) does not duplicate it.
    again = first.commit_files(written, Marker(1, [1], "run-a", 1))
    assert again.snapshot_id == mark.snapshot_id
    # A second worker that started from the same state loses the race cleanly.
    theirs = [stale.write_files([batch])]
    with pytest.raises(InconsistentState, match="another worker"):
        stale.commit_files(theirs, Marker(1, [1], "run-b", 1))
    assert catalog.read("cold.cas").num_rows == 1


def test_locked_table_is_skipped(env: Env) -> None:
    env.create_trades("locked")
    env.insert_trades("locked", 100, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("locked")])
    cfg = env.config()

    async def hold_lock_and_run() -> None:
        wm = await Watermarks.open(cfg.postgres)
        try:
            async with wm.table_lock("cold.locked"):
                with pytest.raises(Locked):
                    async with wm.table_lock("cold.locked"):
                        pass
                result = await anyio.to_thread.run_sync(lambda: env.cli("once"))
                assert result.returncode == 0, result.stdout
                assert "skipped 1" in result.stdout
        finally:
            await wm.close()

    anyio.run(hold_lock_and_run)
    assert env.once().ok
    assert env.assert_tiers_equal("cold.locked") == 100


def test_a_tables_lock_is_its_state_schemas(env_one: Env) -> None:
    """Two deployments whose state shares one PostgreSQL database in two schemas hold
    different locks for a target of the same name; one schema's lock excludes."""
    env = env_one
    env.write_config([env.table("locked")])
    cfg = env.config()
    other = dataclasses.replace(cfg.postgres, schema=cfg.postgres.schema + "_other")

    async def go() -> None:
        ours, theirs = await Watermarks.open(cfg.postgres), await Watermarks.open(other)
        try:
            async with ours.table_lock("cold.same"), theirs.table_lock("cold.same"):
                with pytest.raises(Locked):
                    async with theirs.table_lock("cold.same"):
                        pass
        finally:
            await ours.close()
            await theirs.close()

    try:
        anyio.run(go)
    finally:
        env.pg_schema = other.schema
        env.drop_pg_schema()


def test_rolled_back_iceberg_table_stops_that_table(env: Env) -> None:
    env.create_trades("rb")
    env.insert_trades("rb", 100, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("rb")])
    assert env.once().ok
    catalog = IcebergCatalog(env.config().catalog)
    catalog.catalog.drop_table("cold.rb")
    env.insert_trades("rb", 10, first_id=1_000, start="2026-01-02 00:00:00")
    report = env.once()
    assert not report.ok
    assert "offloader reset cold.rb" in (report.tables[0].error or "")
    reset = env.cli("reset", "cold.rb", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert env.once().ok  # starts over from the oldest row into the new table
    assert env.assert_tiers_equal("cold.rb") == 110
