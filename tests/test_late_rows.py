"""Late rows: rows inserted, deleted or changed below the watermark after they were
offloaded are found by each run's audit and replaced by `repair`, exactly once, and a
day ClickHouse no longer holds is never touched."""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client import generate_latest

from offloader.iceberg import IcebergCatalog
from offloader.offload.supervisor import run_once
from offloader.service.metrics import Metrics
from tests.helpers import Env, independent_reads

pytestmark = pytest.mark.integration

DAYS = [f"2026-01-0{d}" for d in range(1, 8)]


def setup_days(env: Env, name: str) -> int:
    """Six days of trades, 600 a day, then a few on the seventh; all offloaded."""
    env.create_trades(name)
    for i, day in enumerate(DAYS[:6]):
        env.insert_trades(
            name, 600, first_id=1 + i * 10_000, start=f"{day} 01:00:00", step_us=10**8
        )
    env.insert_trades(name, 30, first_id=90_000, start=f"{DAYS[6]} 01:00:00")
    return 6 * 600 + 30


def late_changes(env: Env, name: str) -> None:
    """Late inserts into days 1-3, a mutation deleting rows of day 4, an update on day 5."""
    db = env.ch_database
    for i, day in enumerate(DAYS[:3]):
        env.insert_trades(name, 7 + i, first_id=500_000 + i * 100, start=f"{day} 12:34:56")
    env.ch(
        f"ALTER TABLE {db}.{name} DELETE WHERE toDate(exchange_ts) = '{DAYS[3]}' "
        "AND trade_id % 3 = 0 SETTINGS mutations_sync = 2"
    )
    env.ch(
        f"ALTER TABLE {db}.{name} UPDATE venue_seq = -1 WHERE toDate(exchange_ts) = "
        f"'{DAYS[4]}' AND trade_id % 5 = 0 SETTINGS mutations_sync = 2"
    )


def cycle(env: Env, metrics: Metrics) -> dict[str, object]:
    report = anyio.run(lambda: run_once(env.config(), on_table=metrics.table))
    assert report.ok, report.summary()
    return report.tables[0].as_dict()


def test_late_rows_detected_then_repaired(env: Env) -> None:
    setup_days(env, "late")
    env.write_config(
        [env.table("late", partition_by=["day(exchange_ts)"], audit_days=7, batch_rows=1000)]
    )
    metrics = Metrics()
    first = cycle(env, metrics)
    assert first["drifted"] == [], first
    late_changes(env, "late")

    # The next cycle reports the three late-insert days, the day with deletes (counts)
    # and the day with updated rows (same count, different row-hash sum).
    report = cycle(env, metrics)
    drifted = {d["day"]: d for d in report["drifted"]}
    assert sorted(drifted) == DAYS[:5], report
    assert drifted[DAYS[0]]["clickhouse"] == 607 and drifted[DAYS[0]]["iceberg"] == 600
    assert drifted[DAYS[3]]["clickhouse"] == 400 and drifted[DAYS[3]]["iceberg"] == 600
    assert drifted[DAYS[4]] == {
        "day": DAYS[4],
        "clickhouse": 600,
        "iceberg": 600,
        "values_differ": True,
    }
    assert not any(drifted[d].get("values_differ") for d in DAYS[:4])
    scrape = generate_latest(metrics.registry).decode()
    assert 'offloader_drifted_days{table="cold.late"} 5.0' in scrape
    check = env.cli("status", "--check")
    assert check.returncode == 1
    assert "late rows on 5 days" in check.stderr and f"LATE ROWS {DAYS[1]}" in check.stdout
    assert f"LATE ROWS {DAYS[4]}" in check.stdout
    assert env.cli("verify").returncode == 1

    dry = env.cli("repair", "cold.late", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"would replace {DAYS[0]}: ClickHouse 607 rows, Iceberg 600 rows" in dry.stdout
    assert f"would replace {DAYS[4]}: ClickHouse 600 rows, Iceberg 600 rows (values" in dry.stdout
    assert env.cli("verify").returncode == 1  # a dry run changed nothing

    fixed = env.cli("repair", "cold.late", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    result = orjson.loads(fixed.stdout)
    assert [d["day"] for d in result["days"]] == DAYS[:5]
    assert result["rows_after"] - result["rows_before"] == 7 + 8 + 9 - 200
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout
    # The repair recorded the days' new sums: the next audit finds nothing.
    assert cycle(env, metrics)["drifted"] == []
    env.assert_tiers_equal("cold.late")
    # Engines we did not write read the repaired snapshots equal to ClickHouse.
    ice = IcebergCatalog(env.config().catalog).load("cold.late")
    assert ice is not None
    query = "SELECT count(*), sum(trade_id), count(venue_seq) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    expected = ",".join(map(str, env.ch(query.format(t=f"{env.ch_database}.late"))[0]))
    assert got == [expected, expected], (got, expected)
    # Offloading goes on from the same watermark: nothing duplicated, nothing lost.
    env.insert_trades("late", 50, first_id=800_000, start=f"{DAYS[6]} 05:00:00")
    after = cycle(env, metrics)
    assert after["drifted"] == [] and after["rows"] == 50
    env.assert_tiers_equal("cold.late")
    assert env.cli("status", "--check").returncode == 0


def test_the_audit_reads_clickhouse_while_the_run_commits(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a run has read its last page, the audit's ClickHouse query starts
    (checkup.read_ahead) and runs while the files are written and committed: the audit
    after the commits reads no window of its own, and still reports a late row. A first
    run (a backfill) does not hash again the rows it just read and summed."""
    from offloader.offload import checkup, pipeline
    from offloader.tiers import audit

    events: list[str] = []
    window = audit.clickhouse_days

    async def counting(*args: Any, **kwargs: Any) -> audit.ClickHouseDays:
        events.append("window")
        return await window(*args, **kwargs)

    commit = pipeline.TableRun._commit

    async def committing(*args: Any, **kwargs: Any) -> None:
        await commit(*args, **kwargs)
        events.append("committed")

    monkeypatch.setattr(audit, "clickhouse_days", counting)  # the run's prepare
    monkeypatch.setattr(checkup, "clickhouse_days", counting)  # the audit's read-ahead
    monkeypatch.setattr(pipeline.TableRun, "_commit", committing)
    setup_days(env, "ahead")
    env.write_config([env.table("ahead", audit_days=4, batch_rows=1000)])
    first = cycle(env, Metrics())
    assert first["rows"] == 6 * 600 + 30 and first["drifted"] == []
    # prepare had no position (no window), and a first run wrote (and summed as it read)
    # every row of the window: it hashes nothing a second time.
    assert events == ["committed"] and "audit" not in first["stages"], events

    events.clear()
    env.insert_trades("ahead", 5, first_id=700_000, start=f"{DAYS[5]} 12:00:00")  # late
    env.insert_trades("ahead", 40, first_id=800_000, start=f"{DAYS[6]} 05:00:00")
    second = cycle(env, Metrics())
    assert second["rows"] == 40
    assert [d["day"] for d in second["drifted"]] == [DAYS[5]], second
    # prepare's window, then the read-ahead's (from the position's day), then the commit.
    assert events == ["window", "window", "committed"], events


def test_a_recovered_run_does_not_audit_with_the_dropped_reads_query(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that recovers the position from Iceberg (killed between the two commits)
    drops the page it read from PostgreSQL's, and with it the audit query read ahead
    for that read: a row arriving before the rows are read again is committed, and the
    audit must not compare it with ClickHouse as it was before the row came."""
    from offloader.offload import checkup, pipeline

    env.create_trades("rec")
    env.insert_trades("rec", 300, first_id=1, start="2026-01-01 00:00:00", step_us=10**6)
    env.write_config([env.table("rec", audit_days=4)])
    killed = env.cli("once", extra_env={"OFFLOADER_TEST_KILL_AT": "iceberg_commit"})
    assert killed.returncode == -9, killed.stderr
    env.insert_trades("rec", 20, first_id=10_000, start="2026-01-01 01:00:00", step_us=10**6)

    ahead: list[list[Any]] = []
    events: dict[str, anyio.Event] = {}  # created inside the run's event loop

    def first_ahead() -> anyio.Event:
        return events.setdefault("ahead", anyio.Event())

    read_ahead = checkup.read_ahead

    async def reading_ahead(check: Any, position: list[Any]) -> Any:
        if ahead:
            return None  # the second read-ahead fails (the audit queries itself)
        found = await read_ahead(check, position)
        ahead.append(position)
        # Before the rows are read again from Iceberg's position: one more, among them.
        await anyio.to_thread.run_sync(
            lambda: env.insert_trades("rec", 1, first_id=20_000, start="2026-01-01 00:30:00")
        )
        first_ahead().set()
        return found

    open_iceberg = pipeline.TableRun.open_iceberg

    async def opening(self: pipeline.TableRun, state: Any) -> None:
        with anyio.fail_after(60):  # the first page (all 320 rows) read, its query run
            await first_ahead().wait()
        await open_iceberg(self, state)

    monkeypatch.setattr(checkup, "read_ahead", reading_ahead)
    monkeypatch.setattr(pipeline.TableRun, "open_iceberg", opening)
    report = cycle(env, Metrics())
    assert report["recovered"] is True and report["rows"] == 21
    assert report["drifted"] == [], report
    env.assert_tiers_equal("cold.rec")


def test_repair_policy_and_dropped_day_is_refused(env: Env) -> None:
    """late_rows = "repair" heals drifted days in the same run; a day whose rows are all
    gone from ClickHouse (a dropped partition, TTL) is refused and its Iceberg rows stay."""
    setup_days(env, "pol")
    env.write_config([env.table("pol", audit_days=7, late_rows="repair", batch_rows=1000)])
    metrics = Metrics()
    cycle(env, metrics)
    for i, day in enumerate(DAYS[:3]):
        env.insert_trades("pol", 5, first_id=700_000 + i * 100, start=f"{day} 08:00:00")
    report = cycle(env, metrics)
    assert report["repaired"] == DAYS[:3] and report["drifted"] == [], report
    assert env.cli("verify").returncode == 0
    env.assert_tiers_equal("cold.pol")

    # Day 2 disappears from ClickHouse entirely: refused, every cycle, by the policy too.
    iceberg_rows = env.iceberg_arrow(env.config().table("cold.pol")).num_rows
    env.ch(
        f"ALTER TABLE {env.ch_database}.pol DELETE WHERE toDate(exchange_ts) = '{DAYS[1]}' "
        "SETTINGS mutations_sync = 2"
    )
    report = cycle(env, metrics)
    assert report["repaired"] == [] if "repaired" in report else True
    assert [d["day"] for d in report["drifted"]] == [DAYS[1]]
    refused = env.cli("repair", "cold.pol")
    assert refused.returncode == 1
    assert f"REFUSED {DAYS[1]}: ClickHouse holds none of this day's 605 rows" in refused.stdout
    assert env.iceberg_arrow(env.config().table("cold.pol")).num_rows == iceberg_rows
    # Days before ClickHouse's oldest row are refused as well, named or not, unless forced.
    env.ch(
        f"ALTER TABLE {env.ch_database}.pol DELETE WHERE toDate(exchange_ts) = '{DAYS[0]}' "
        "SETTINGS mutations_sync = 2"
    )
    named = env.cli("repair", "cold.pol", "--since", DAYS[0], "--until", DAYS[1])
    assert named.returncode == 1 and "no longer holds all of this day" in named.stdout
    assert env.iceberg_arrow(env.config().table("cold.pol")).num_rows == iceberg_rows
    forced = env.cli("repair", "cold.pol", "--since", DAYS[0], "--until", DAYS[1], "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert env.iceberg_arrow(env.config().table("cold.pol")).num_rows == iceberg_rows - 605


@pytest.mark.parametrize("point", ["repair_write", "repair_commit", "watermark_txn"])
def test_kill_during_repair_then_exact(env: Env, point: str) -> None:
    """SIGKILL before, between and after the repair's Iceberg and PostgreSQL commits;
    then `repair` and `once` again: tiers equal, nothing lost or duplicated."""
    from offloader import faults

    setup_days(env, "kr")
    env.write_config([env.table("kr", audit_days=7, batch_rows=1000)])
    assert env.once().ok
    late_changes(env, "kr")
    killed = env.cli("repair", "cold.kr", extra_env={faults.ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    for _ in range(50):  # the killed process's PostgreSQL session may hold the lock a moment
        report = env.once()
        if "skipped 1" not in report.summary():
            break
        time.sleep(0.2)
    assert report.ok, report.summary()
    again = env.cli("repair", "cold.kr", "--since", DAYS[0], "--until", DAYS[6])
    assert again.returncode == 0, again.stdout + again.stderr
    assert env.cli("verify").returncode == 0
    env.assert_tiers_equal("cold.kr")


def test_final_reads_collapsed_rows(env: Env) -> None:
    """final = true offloads a ReplacingMergeTree as ClickHouse shows it with FINAL: one
    row per key, the newest version, even before the background merge."""
    db = env.ch_database
    env.ch(
        f"CREATE TABLE {db}.rmt (exchange_ts DateTime64(6, 'UTC'), trade_id UInt64, "
        "price Float64, ver UInt32) ENGINE = ReplacingMergeTree(ver) "
        "ORDER BY (exchange_ts, trade_id)"
    )
    env.ch(
        f"INSERT INTO {db}.rmt SELECT toDateTime64('2026-02-01 00:00:00', 6, 'UTC') + "
        "toIntervalSecond(number), number, 1.0, 1 FROM numbers(100)"
    )
    env.ch(
        f"INSERT INTO {db}.rmt SELECT toDateTime64('2026-02-01 00:00:00', 6, 'UTC') + "
        "toIntervalSecond(number), number, 2.0, 2 FROM numbers(50)"
    )
    env.write_config([env.table("rmt", final=True, audit_days=2)])
    report = env.once()
    assert report.ok and report.rows == 100, report.summary()
    data = env.iceberg_arrow(env.config().table("cold.rmt"))
    prices = data.column("price").to_pylist()
    assert prices.count(2.0) == 50 and prices.count(1.0) == 50
    assert env.cli("verify").returncode == 0


def test_repair_commit_is_compare_and_set(env: Env) -> None:
    """A repair built on a stale commit sequence is refused and leaves nothing behind."""
    from pathlib import Path

    from offloader.errors import InconsistentState
    from offloader.iceberg import IcebergCatalog, Marker, files, rewrite

    setup_days(env, "cas")
    env.write_config([env.table("cas", batch_rows=1000)])
    assert env.once().ok
    ice = IcebergCatalog(env.config().catalog).load("cold.cas")
    assert ice is not None
    mark = ice.latest_mark()
    assert mark is not None
    live = files.live_files(ice, "exchange_ts")
    victim = live.files[live.stats[0].path]
    kept = ice.write_files(
        [
            b
            for t in rewrite.rows_outside_days(ice, live, [victim.file_path], "exchange_ts", set())
            for b in t.to_batches()
        ],
        "exchange_ts",
    )
    with pytest.raises(InconsistentState, match="another worker committed meanwhile"):
        rewrite.replace_files(
            ice,
            [victim],
            kept.files,
            "stale",
            Marker(mark.seq, list(mark.position), "stale", 0),
        )
    assert not any(Path(f.file_path.removeprefix("file://")).exists() for f in kept.files)
    env.assert_tiers_equal("cold.cas")
