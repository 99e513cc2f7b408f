"""Outages: each failing table reports a clear error, the others finish, the next cycle
recovers by itself, and verify passes afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from offloader.config import ClickHouseConfig
from offloader.dev import devserver
from offloader.offload import pipeline
from offloader.source.native import ClickHouseSession
from tests.conftest import make_env
from tests.helpers import Env, wait_for_log

pytestmark = pytest.mark.integration


def test_clickhouse_stopped_mid_cycle(pg_database: str, tmp_path: Path) -> None:
    server = devserver.start(tmp_path / "ch")
    env = make_env(server, pg_database, tmp_path)
    try:
        env.create_trades("big")
        env.insert_trades("big", 1_000_000, first_id=1, start="2026-01-01 00:00:00")
        env.write_config([env.table("big", batch_rows=10_000, append_rows=50_000)])
        proc = env.popen("--log-format", "json", "once")
        wait_for_log(proc, "committed")
        devserver.kill(server.pid)  # the server dies mid-cycle
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert "FAILED cold.big: ClickHouse 127.0.0.1:" in out, out
        assert "is ClickHouse running?" in out
        # Restarted on the same data directory (new ports): the next cycle recovers.
        server = devserver.start(tmp_path / "ch")
        env.ch_port = server.tcp_port
        env.write_config([env.table("big", batch_rows=10_000, append_rows=50_000)])
        assert env.once().ok
        assert env.cli("verify").returncode == 0
        assert env.assert_tiers_equal("cold.big") == 1_000_000
    finally:
        env.drop_pg_schema()
        devserver.stop(tmp_path / "ch")


def test_postgres_connections_killed_mid_cycle(env_long: Env) -> None:
    env = env_long
    for name in ("k1", "k2"):
        env.create_trades(name)
        env.insert_trades(name, 600_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table(n, batch_rows=10_000, append_rows=30_000) for n in ("k1", "k2")])
    proc = env.popen("--log-format", "json", "once")
    wait_for_log(proc, "committed")  # mid-cycle, with connections in use

    async def terminate() -> int:
        conn = await asyncpg.connect(env.pg_dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        finally:
            await conn.close()

    killed = anyio.run(terminate)
    stdout, stderr = proc.communicate(timeout=180)
    assert killed >= 1
    assert proc.returncode in (0, 1), stderr
    assert "Traceback" not in stdout
    for _ in range(3):  # the next cycles recover by themselves
        if env.once().ok:
            break
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    for name in ("k1", "k2"):
        assert env.assert_tiers_equal(f"cold.{name}") == 600_000


def test_catalog_unavailable_then_back(env: Env) -> None:
    env.create_trades("cat")
    env.insert_trades("cat", 1_000, first_id=1, start="2026-01-01 00:00:00")
    broken = {
        "type": "sql",
        "uri": "postgresql+psycopg2://postgres@127.0.0.1:1/nothing",
        "warehouse": f"file://{env.tmp}/warehouse",
    }
    env.write_config([env.table("cat")], catalog=broken)
    result = env.cli("once")
    assert result.returncode == 1
    assert "cold.cat: cannot open Iceberg catalog" in result.stdout or (
        "cannot open Iceberg catalog" in result.stdout
    ), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    env.write_config([env.table("cat")])
    assert env.once().ok
    assert env.assert_tiers_equal("cold.cat") == 1_000


def test_table_timeout_keeps_committed_progress(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run cut by table_timeout keeps what it committed (in Iceberg and as the
    watermark), and the next run offloads only the rest. Each commit is followed by a
    pause longer than the timeout, so the deadline falls after the first commit on any
    machine that makes that commit within the timeout."""
    total = 100_000
    env.create_trades("slow")
    env.insert_trades("slow", total, first_id=1, start="2026-01-01 00:00:00")
    table = {"batch_rows": 10_000, "append_rows": 20_000}
    env.write_config([env.table("slow", **table)], service={"table_timeout": "5s"})
    commit = pipeline.TableRun._commit

    async def slow_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = await commit(self, *args, **kwargs)
        await anyio.sleep(30)
        return done

    monkeypatch.setattr(pipeline.TableRun, "_commit", slow_commit)
    first = env.once()
    [t] = first.tables
    assert t.status == "failed" and t.reason == "timeout", t
    assert "table_timeout of 5s exceeded" in (t.error or "")
    assert 0 < t.rows < total and t.snapshots > 0, t  # committed before the deadline
    assert env.iceberg_arrow(env.config().table("cold.slow")).num_rows == t.rows
    monkeypatch.setattr(pipeline.TableRun, "_commit", commit)
    rest = env.once()
    assert rest.ok and rest.tables[0].rows == total - t.rows, rest.summary()
    assert env.cli("verify").returncode == 0
    assert env.assert_tiers_equal("cold.slow") == total


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    # The suite runs as root (scripts/setup.sh installs packages too): a machine where
    # this fails cannot run the suite, and says so rather than skipping the fault.
    assert done.returncode == 0, (
        f"the disk-full test mounts a 1 MiB tmpfs and needs root: {done.stderr.strip()}"
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_and_read_only_warehouse(env: Env, small_disk: Path) -> None:
    env.create_trades("fine")
    env.insert_trades("fine", 1_000, first_id=1, start="2026-01-01 00:00:00")
    env.create_trades("full")
    env.insert_trades("full", 600_000, first_id=1, start="2026-01-01 00:00:00")
    tables = [env.table("fine"), env.table("full", batch_rows=20_000)]
    catalog = {
        "type": "sql",
        "uri": f"sqlite:///{env.tmp}/catalog.db",
        "warehouse": f"file://{small_disk}",
    }
    env.write_config(tables, catalog=catalog, service={"max_parallel_tables": 1})
    report = env.once()
    by = {t.target: t for t in report.tables}
    assert by["cold.fine"].status == "ok", report.summary()
    assert by["cold.full"].status == "failed", report.summary()
    assert "No space left on device" in (by["cold.full"].error or ""), by["cold.full"].error

    # More space, but read-only: the table fails again, the other one is unaffected.
    subprocess.run(["mount", "-o", "remount,ro,size=64m", str(small_disk)], check=True)
    env.insert_trades("fine", 10, first_id=10_000, start="2026-01-05 00:00:00")
    report = env.once()
    by = {t.target: t for t in report.tables}
    assert "cold.full" in by, report.summary()
    assert by["cold.full"].status == "failed"
    assert "Read-only file system" in (by["cold.full"].error or ""), by["cold.full"].error

    # Writable again: the next cycle recovers by itself.
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    assert env.assert_tiers_equal("cold.full") == 600_000
    assert env.assert_tiers_equal("cold.fine") == 1_010


def test_a_session_cancelled_at_any_point_answers_its_next_query(
    clickhouse_server: devserver.Server,
) -> None:
    """A run cancels its page read when it recovers a killed run's commit; the same native
    session then runs the audit. Cancelled anywhere in its connect or its query, a session
    answers the next query (before: asynch's reconnect awaited the cancelled stream's close
    waiter again, and its stale CancelledError ended the table's task without a report)."""
    cfg = ClickHouseConfig(host="127.0.0.1", port=clickhouse_server.tcp_port)

    async def cancel_after(scope: anyio.CancelScope, turns: int) -> None:
        # `turns` passes of the event loop, then cancel: the session is cancelled at
        # whatever await it is in by then, counted in the loop's own steps, not seconds.
        for _ in range(turns):
            await anyio.lowlevel.checkpoint()
        scope.cancel()

    async def main() -> list[int]:
        session = ClickHouseSession(cfg, "test")
        cancelled_at: list[int] = []
        turns = 0
        try:
            # Later and later cancellations (one loop pass apart, then a quarter more
            # each) until one comes after the query finished, however fast the machine.
            while len(cancelled_at) < MAX_CANCELLATIONS:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_after, scope, turns)
                        await session.rows("SELECT sleepEachRow(0.001) FROM numbers(10)")
                        tg.cancel_scope.cancel()  # finished first: stop the canceller
                if not scope.cancelled_caught:
                    return cancelled_at
                cancelled_at.append(turns)
                assert await session.rows("SELECT 1") == [(1,)], turns
                await session.close()  # the next step's query connects again
                turns = turns + 1 if turns < 40 else turns * 5 // 4
        finally:
            await session.close()
        raise AssertionError(f"the query never finished before {turns} loop passes")

    cancelled_at = anyio.run(main)
    print(f"cancelled after {cancelled_at} loop passes, then finished")
    assert cancelled_at, "the query finished before its first await"


# Bounds the test, not the machine: loop passes grow by a quarter after 40, so this many
# cancellations reach past 10^9 passes.
MAX_CANCELLATIONS = 140
