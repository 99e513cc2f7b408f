"""The supervisor guards each table: nothing one table raises cancels another. No servers."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from offloader.configfile import parse_config
from offloader.offload import supervisor
from offloader.report import TableReport

CONFIG = {
    "clickhouse": {},
    "postgres": {"dsn": "postgresql://x@127.0.0.1/db"},
    "iceberg": {"catalog": {"name": "cold", "type": "sql", "uri": "sqlite://"}},
    "tables": [
        {"source": f"db.t{i}", "target": f"cold.t{i}", "watermark": "ts", "keys": ["id"]}
        for i in range(3)
    ],
}


def test_one_table_raising_never_cancels_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(CONFIG, "t.toml", {})
    finished: list[str] = []

    async def fake(
        services: Any, table: Any, timeout: Any, stopping: Any, surveyed: Any = None
    ) -> TableReport:
        if table.target == "cold.t1":
            raise RuntimeError("boom")  # escapes: a bug outside offload_table's own guard
        await anyio.sleep(0.2)  # still running when cold.t1 fails
        finished.append(table.target)
        return TableReport(table.target, table.source)

    monkeypatch.setattr(supervisor, "offload_table", fake)
    seen: list[str] = []

    def hook(report: TableReport) -> None:
        seen.append(report.target)
        if report.target == "cold.t2":
            raise ValueError("a broken metrics hook")

    services: Any = None  # offload_table is faked: nothing is opened
    report = anyio.run(lambda: supervisor.run_cycle(cfg, services, on_table=hook))
    assert sorted(finished) == ["cold.t0", "cold.t2"]
    assert [t.status for t in report.tables] == ["ok", "failed", "ok"]
    assert "RuntimeError: boom" in (report.tables[1].error or "")
    assert sorted(seen) == ["cold.t0", "cold.t1", "cold.t2"]


def test_a_stray_cancellation_fails_its_table_instead_of_dropping_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A driver that awaits a future an earlier, cancelled task left cancelled raises a
    CancelledError that no cancellation of this task asked for. The table fails with a
    report (before: its task ended quietly, the task group took it for its own cancel and
    the cycle reported 0 tables, ok). A cancellation that was asked for still cancels."""
    cfg = parse_config(CONFIG, "t.toml", {})

    async def fake(
        services: Any, table: Any, timeout: Any, stopping: Any, surveyed: Any = None
    ) -> TableReport:
        report = TableReport(table.target, table.source)
        with supervisor.guarded(report, "table run"):
            if table.target == "cold.t1":
                stale: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                stale.cancel()
                await stale
        return report

    monkeypatch.setattr(supervisor, "offload_table", fake)
    services: Any = None
    report = anyio.run(lambda: supervisor.run_cycle(cfg, services))
    assert [t.target for t in report.tables] == ["cold.t0", "cold.t1", "cold.t2"]
    assert [t.status for t in report.tables] == ["ok", "failed", "ok"]
    assert "a cancellation no one asked for" in (report.tables[1].error or "")
    assert not report.ok

    async def cancelled() -> bool:
        with anyio.move_on_after(0.05) as scope:
            with supervisor.guarded(TableReport("cold.t", "db.t"), "table run"):
                await anyio.sleep(5)
        return scope.cancelled_caught

    assert anyio.run(cancelled)

    async def cancelled_from_outside() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)
        with supervisor.guarded(TableReport("cold.t", "db.t"), "table run"):
            await anyio.sleep(5)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_from_outside())


@pytest.mark.parametrize(
    ("argv", "config", "level"),
    [
        (["once"], None, "INFO"),
        (["--config", "a.toml", "once"], "a.toml", "INFO"),
        (["once", "--config", "b.toml", "--log-level", "DEBUG"], "b.toml", "DEBUG"),
        (["--config", "a.toml", "status", "--config", "b.toml", "--check"], "b.toml", "INFO"),
        (["--log-level", "WARNING", "maintain", "--dry-run"], None, "WARNING"),
    ],
)
def test_global_options_before_or_after_the_command(
    argv: list[str], config: str | None, level: str
) -> None:
    from offloader.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level) == (config, level)
