"""A cycle with nothing new to write costs only what it must: no pyiceberg import, no
catalog, no Iceberg table; its audit checks ClickHouse's days against what PostgreSQL
recorded at commit, and only a disagreement reads Iceberg's manifests."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import orjson
import pytest

from tests.helpers import ROOT, Env

pytestmark = pytest.mark.integration

PROBE = """
import sys
from offloader.cli import main, without_pandas
without_pandas()  # as the `offloader` command does (cli.entry)
code = main(["--config", sys.argv[1], "once", "--json"])
loaded = sorted(m for m in ("pyiceberg", "pyarrow", "pandas", "httpx") if m in sys.modules)
print("LOADED " + ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def once_loading(env: Env) -> tuple[dict[str, object], list[str]]:
    """`offloader once --json` in a fresh process: the table's report and which heavy
    modules the process loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(env.config_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED"))
    report = orjson.loads(proc.stdout)["tables"][0]
    loaded = [m for m in line.removeprefix("LOADED ").split(",") if m]
    # httpx is the driver of the HTTP transports; on native TCP nothing needs it.
    return report, [m for m in loaded if m != "httpx" or env.transport == "native"]


def test_idle_cycle_loads_no_iceberg_until_a_day_disagrees(env: Env) -> None:
    env.create_trades("quiet")
    env.insert_trades("quiet", 3_000, first_id=1, start="2026-01-01 00:00:00", step_us=10**8)
    env.write_config([env.table("quiet", audit_days=4)])
    first, loaded = once_loading(env)
    assert first["status"] == "ok" and first["rows"] == 3_000
    # pyarrow.dataset imports pandas when installed (it is, for the embedded ClickHouse).
    assert "pyiceberg" in loaded and "pandas" not in loaded, loaded

    idle, loaded = once_loading(env)
    assert idle["status"] == "idle" and idle["drifted"] == []
    assert loaded == [], loaded  # neither pyiceberg nor pyarrow (nor httpx on native)
    assert "open_iceberg" not in idle["stages"]
    assert "audit" in idle["stages"]  # the window hashed once, and recorded as agreed
    again, loaded = once_loading(env)
    assert again["status"] == "idle" and again["drifted"] == [] and loaded == []
    assert "audit" not in again["stages"]  # the source's parts unchanged: not hashed again

    # A late row below the watermark: the idle run's audit disagrees with PostgreSQL's
    # record, reads Iceberg's manifests and reports the day.
    env.insert_trades("quiet", 1, first_id=900_000, start="2026-01-01 00:00:30")
    late, loaded = once_loading(env)
    assert late["status"] == "idle" and "pyiceberg" in loaded
    [day] = late["drifted"]  # type: ignore[misc]
    assert day["day"] == "2026-01-01" and day["clickhouse"] == day["iceberg"] + 1


def test_a_commit_recovered_after_a_crash_records_its_day_sums(env: Env) -> None:
    """Killed between the Iceberg commit and PostgreSQL's: the next run recovers the
    watermark from the snapshot and the per-day sums the snapshot carries, so the idle
    audit after it still needs no Iceberg."""
    env.create_trades("crash")
    env.insert_trades("crash", 2_000, first_id=1, start="2026-01-01 00:00:00", step_us=10**8)
    env.write_config([env.table("crash", audit_days=4)])
    killed = env.cli("once", extra_env={"OFFLOADER_TEST_KILL_AT": "iceberg_commit"})
    assert killed.returncode == -9, killed.stderr
    env.insert_trades("crash", 10, first_id=50_000, start="2026-01-04 00:00:00")
    recovered, _ = once_loading(env)
    assert recovered["recovered"] is True and recovered["rows"] == 10
    idle, loaded = once_loading(env)
    assert idle["status"] == "idle" and idle["drifted"] == []
    assert "pyiceberg" not in loaded, loaded
    assert env.cli("verify").returncode == 0


def test_a_service_rehashes_the_window_only_when_the_source_parts_change(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle cycle after a window that agreed at the same seq (with nothing waiting)
    reads only the source's parts fingerprint: neither the window's rows nor the rows
    past the position; a late insert, a mutation
    that updates a value in place and a lightweight DELETE each change the parts, so
    the next cycle audits the window again and reports the day."""
    from offloader.tiers import audit

    windows: list[str] = []
    hashed_window = audit.clickhouse_days

    async def counting(*args: Any, **kwargs: Any) -> audit.ClickHouseDays:
        windows.append(args[0].relation)
        return await hashed_window(*args, **kwargs)

    from offloader.offload import checkup, pipeline

    monkeypatch.setattr(audit, "clickhouse_days", counting)  # the run's prepare
    monkeypatch.setattr(checkup, "clickhouse_days", counting)  # the audits

    behind: list[str] = []
    behind_query = pipeline.behind_query

    def counting_behind(*args: Any, **kwargs: Any) -> str:
        behind.append(args[0])
        return behind_query(*args, **kwargs)

    monkeypatch.setattr(pipeline, "behind_query", counting_behind)
    for name in ("upd", "late", "gone"):
        env.create_trades(name)
        env.insert_trades(name, 3_000, first_id=1, start="2026-01-01 00:00:00", step_us=10**8)
    env.write_config([env.table(name, audit_days=4) for name in ("upd", "late", "gone")])

    def cycle() -> dict[str, dict[str, Any]]:
        report = env.once()
        assert report.ok, report.summary()
        return {t.target.removeprefix("cold."): t.as_dict() for t in report.tables}

    assert all(t["rows"] == 3_000 for t in cycle().values())
    assert all(t["drifted"] == [] for t in cycle().values())  # the window hashed: agrees
    windows.clear()
    behind.clear()
    for _ in range(2):
        assert all(t["drifted"] == [] and t["status"] == "idle" for t in cycle().values())
    assert windows == [], "an unchanged source's window was hashed again"
    # Caught up when the window agreed, and the same parts: not even the query for rows
    # past the position runs (the parts fingerprint answers both).
    assert behind == []

    db = env.ch_database
    env.ch(
        f"ALTER TABLE {db}.upd UPDATE side = 'buy' WHERE trade_id = 2 SETTINGS mutations_sync = 2"
    )
    env.insert_trades("late", 1, first_id=900_000, start="2026-01-02 00:00:30")
    env.ch(f"DELETE FROM {db}.gone WHERE trade_id = 7")
    found = cycle()
    assert len(set(windows)) == 3  # each table's window read again
    [upd] = found["upd"]["drifted"]
    assert (
        upd["day"] == "2026-01-01" and upd["values_differ"] and upd["clickhouse"] == upd["iceberg"]
    )
    [late] = found["late"]["drifted"]
    assert late["day"] == "2026-01-02" and late["clickhouse"] == late["iceberg"] + 1
    [gone] = found["gone"]["drifted"]
    assert gone["day"] == "2026-01-01" and gone["clickhouse"] == gone["iceberg"] - 1
    # A drifted window is not remembered as agreed: the next cycle reports it again.
    windows.clear()
    again = cycle()
    assert len(set(windows)) == 3 and all(len(t["drifted"]) == 1 for t in again.values())


def test_an_idle_cycle_of_many_tables_asks_clickhouse_two_queries(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle's survey reads every table's columns, engine and parts fingerprint in
    two queries: once each table's window agreed, an idle cycle of six tables makes no
    other ClickHouse query and no table opens a ClickHouse connection; a table that
    gained rows is still offloaded in the next cycle, and when the survey fails the
    tables ask for themselves and are right."""
    from offloader.offload import supervisor
    from offloader.source import arrow, native

    names = [f"many{i}" for i in range(6)]
    for i, name in enumerate(names):
        env.create_trades(name)
        env.insert_trades(name, 500, first_id=1 + i * 1000, start="2026-01-01 00:00:00")
    env.write_config([env.table(n, audit_days=4) for n in names])
    assert env.once().ok
    assert env.once().ok  # the first idle run audits each window once and records it
    asked: list[str] = []
    real_native, real_http = native.ClickHouseSession.execute, arrow.ArrowHttpSession._post

    async def counted_native(self: Any, query: str, **kw: Any) -> Any:
        asked.append(self.label)
        return await real_native(self, query, **kw)

    async def counted_http(self: Any, *args: Any, **kw: Any) -> Any:
        asked.append(self.label)
        return await real_http(self, *args, **kw)

    monkeypatch.setattr(native.ClickHouseSession, "execute", counted_native)
    monkeypatch.setattr(arrow.ArrowHttpSession, "_post", counted_http)
    connects: list[str] = []
    real_connect = native.ClickHouseSession.connect

    async def counted_connect(self: Any) -> None:
        connects.append(self.label)
        await real_connect(self)

    monkeypatch.setattr(native.ClickHouseSession, "connect", counted_connect)
    idle = env.once()
    assert idle.ok and all(t.status == "idle" for t in idle.tables), idle.summary()
    assert asked == ["survey", "survey"], asked
    assert [c for c in connects if c != "survey"] == [], connects
    env.insert_trades("many3", 7, first_id=90_000, start="2026-01-02 00:00:00")
    moved = env.once()
    assert [t.rows for t in moved.tables] == [0, 0, 0, 7, 0, 0], moved.summary()

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise supervisor.TableError("ClickHouse went away for the survey")

    monkeypatch.setattr(supervisor, "survey", failing)
    env.insert_trades("many5", 3, first_id=95_000, start="2026-01-03 00:00:00")
    fallback = env.once()
    assert fallback.ok and [t.rows for t in fallback.tables] == [0, 0, 0, 0, 0, 3]
    for name in names:
        env.assert_tiers_equal(f"cold.{name}")


def test_an_idle_cycle_right_after_merges_audits_nothing(
    env_one: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges move no row, so they leave the parts fingerprint as it was: once the
    window agreed, the idle cycle right after OPTIMIZE FINAL reads neither the window
    nor the rows past the position; nor does the idle cycle right after a cycle that
    offloaded one new row (its audit recorded the window as agreed at its commit), once
    that row's part merged with the others."""
    from offloader.offload import checkup, pipeline
    from offloader.tiers import audit

    env = env_one
    read: list[str] = []
    window, behind = audit.clickhouse_days, pipeline.behind_query

    async def counting(*args: Any, **kwargs: Any) -> audit.ClickHouseDays:
        read.append("window")
        return await window(*args, **kwargs)

    def counting_behind(*args: Any, **kwargs: Any) -> str:
        read.append("behind")
        return behind(*args, **kwargs)

    monkeypatch.setattr(audit, "clickhouse_days", counting)
    monkeypatch.setattr(checkup, "clickhouse_days", counting)
    monkeypatch.setattr(pipeline, "behind_query", counting_behind)
    env.create_trades("merged")
    for i in range(3):  # three parts
        env.insert_trades("merged", 500, first_id=1 + i * 500, start=f"2026-01-0{i + 1} 00:00:00")
    env.write_config([env.table("merged", audit_days=4)])
    optimize = f"OPTIMIZE TABLE {env.ch_database}.merged FINAL"

    def idle_after_merge() -> list[str]:
        env.ch(optimize)
        read.clear()
        report = env.once()
        assert report.ok and report.tables[0].status == "idle", report.summary()
        assert report.tables[0].drifted == []
        return read

    assert env.once().tables[0].rows == 1_500
    assert env.once().ok  # the window agrees, and is recorded so
    assert idle_after_merge() == [], "an idle cycle after a merge read the source"
    env.insert_trades("merged", 1, first_id=90_000, start="2026-01-03 12:00:00")
    assert env.once().tables[0].rows == 1
    assert idle_after_merge() == [], "the idle cycle after a one-row cycle read the source"
    [(parts,)] = env.ch(
        "SELECT count() FROM system.parts WHERE active AND table = 'merged' "
        f"AND database = '{env.ch_database}'"
    )
    assert parts == 1  # the merges did merge


def test_a_row_changed_during_a_run_is_found_after_its_audit_agreed(
    env_one: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's audit records its window as agreed with the parts fingerprint its prepare
    read, before the run read a row: a late row inserted into an older day while the
    run converts its page (a day its audit takes from the prepare's read, so it agrees)
    moves the source's parts away from it, and the next cycle reads the window again and
    reports the day."""
    from offloader import faults

    env = env_one
    env.create_trades("during")
    for i in range(3):
        env.insert_trades("during", 300, first_id=1 + i * 300, start=f"2026-01-0{i + 1} 00:00:00")
    env.write_config([env.table("during", audit_days=4)])
    assert env.once().tables[0].rows == 900
    assert env.once().ok  # the window agrees, and is recorded so
    env.insert_trades("during", 1, first_id=90_000, start="2026-01-03 12:00:00")
    real, inserted = faults.point, []

    def late_row(name: str) -> None:
        if name == "convert" and not inserted:  # on the event loop: insert from a thread
            late = threading.Thread(
                target=env.insert_trades, args=("during", 1, 95_000, "2026-01-01 12:00:00")
            )
            late.start()
            late.join()
            inserted.append(name)
        real(name)

    monkeypatch.setattr(faults, "point", late_row)
    moved = env.once().tables[0]
    assert inserted and moved.rows == 1 and moved.drifted == [], moved.as_dict()
    found = env.once().tables[0]
    [day] = found.drifted
    assert day["day"] == "2026-01-01" and day["clickhouse"] == day["iceberg"] + 1, day
