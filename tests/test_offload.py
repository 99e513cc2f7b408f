"""End-to-end offloads against real ClickHouse, PostgreSQL and an Iceberg SQL catalog."""

from __future__ import annotations

import pytest

from tests.helpers import Env

pytestmark = pytest.mark.integration


def test_backlog_then_ties_then_nothing(env: Env) -> None:
    env.create_trades("trades")
    env.insert_trades("trades", 300_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("trades", append_rows=100_000)])

    first = env.once()
    assert first.ok, first.summary()
    [t] = first.tables
    assert t.rows == 300_000
    assert t.pages >= 15  # 20k-row pages
    assert t.snapshots == 3  # 100k-row appends, not one per page
    assert env.assert_tiers_equal("cold.trades") == 300_000

    # New rows, including rows that share the last offloaded row's DateTime64
    # value (sub-second) with greater keys: none may be lost.
    last_ts = env.ch(f"SELECT max(exchange_ts) FROM {env.ch_database}.trades")[0][0]
    env.ch(
        f"INSERT INTO {env.ch_database}.trades (exchange_ts, trade_id, symbol, price, quantity, "
        f"side) SELECT toDateTime64('{last_ts.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC'), "
        "1000000 + number, 'BTC', 1, 1, 'buy' FROM numbers(5)"
    )
    env.insert_trades("trades", 1_000, first_id=2_000_000, start="2026-01-02 00:00:00")
    second = env.once()
    assert second.ok, second.summary()
    assert second.tables[0].rows == 1_005
    assert env.assert_tiers_equal("cold.trades") == 301_005

    snapshots = env.snapshots("cold.trades")
    third = env.once()
    assert third.ok
    assert third.tables[0].status == "idle"
    assert third.tables[0].rows == 0
    assert env.snapshots("cold.trades") == snapshots, "an idle cycle must not add a snapshot"


def test_lag_holds_back_recent_rows(env: Env) -> None:
    env.create_trades("recent")
    env.ch(
        f"INSERT INTO {env.ch_database}.recent (exchange_ts, trade_id, symbol, price, quantity, "
        "side) SELECT now64(6, 'UTC') - toIntervalSecond(number * 60), "
        "number, 'BTC', 1, 1, 'buy' FROM numbers(10)"
    )  # one row a minute over the last 10 minutes
    env.write_config([env.table("recent", lag="5m")])
    report = env.once()
    assert report.ok
    assert 4 <= report.tables[0].rows <= 5  # rows older than 5 minutes only


def test_parallel_tables_and_failure_isolation(env: Env) -> None:
    for name in ("a", "b", "c"):
        env.create_trades(name)
        env.insert_trades(name, 5_000, first_id=1, start="2026-01-01 00:00:00")
    env.ch(
        f"CREATE TABLE {env.ch_database}.weird (exchange_ts DateTime64(6), trade_id UInt64, "
        "v AggregateFunction(sum, UInt64)) ENGINE = MergeTree ORDER BY exchange_ts"
    )
    env.write_config(
        [env.table(n) for n in ("a", "b", "c")] + [env.table("missing"), env.table("weird")],
        service={"max_parallel_tables": 2},
    )
    result = env.cli("once")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = env.once()
    by = {t.target: t for t in report.tables}
    assert by["cold.missing"].status == "failed"
    assert "does not exist" in (by["cold.missing"].error or "")
    assert by["cold.weird"].status == "failed"
    weird = by["cold.weird"].error or ""
    assert "'v'" in weird and "AggregateFunction" in weird and "finalizeAggregation" in weird
    for name in ("a", "b", "c"):
        assert env.assert_tiers_equal(f"cold.{name}") == 5_000


def test_many_new_tables_in_one_new_namespace_at_once(env: Env) -> None:
    names = [f"ns{i}" for i in range(6)]
    for name in names:
        env.create_trades(name)
        env.insert_trades(name, 1_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table(n) for n in names], service={"max_parallel_tables": 6})
    report = env.once()
    assert report.ok, report.summary()
    for name in names:
        assert env.assert_tiers_equal(f"cold.{name}") == 1_000


def test_unreachable_clickhouse_and_postgres(env: Env) -> None:
    env.create_trades("t")
    env.insert_trades("t", 10, first_id=1, start="2026-01-01 00:00:00")
    # Each transport uses only its own port: break that one.
    if env.transport in ("arrow", "parquet"):  # both over HTTP
        env.write_config([env.table("t")], clickhouse_http_port=1)
        where = "ClickHouse HTTP 127.0.0.1:1"
    else:
        env.write_config([env.table("t")], clickhouse_port=1)
        where = "ClickHouse 127.0.0.1:1"
    result = env.cli("once")
    assert result.returncode == 1
    assert "cold.t" in result.stdout and where in result.stdout, result.stdout
    assert "Traceback" not in result.stderr

    env.write_config([env.table("t")], pg_dsn="postgresql://postgres@127.0.0.1:1/nothing")
    result = env.cli("once")
    assert result.returncode == 1
    assert "PostgreSQL postgresql://postgres@127.0.0.1:1/nothing" in result.stdout
    assert "Traceback" not in result.stderr


def test_schema_evolution(env: Env) -> None:
    env.create_trades("evo")
    env.insert_trades("evo", 1_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("evo")])
    assert env.once().ok
    env.ch(f"ALTER TABLE {env.ch_database}.evo ADD COLUMN venue String DEFAULT 'x'")
    env.insert_trades("evo", 10, first_id=5_000, start="2026-01-03 00:00:00")
    report = env.once()
    assert report.ok, report.summary()
    # Rows offloaded before the column existed hold NULL in it; the new rows hold the value.
    assert env.assert_tiers_equal("cold.evo", ignore=("venue",)) == 1_010
    venue = env.iceberg_arrow(env.config().table("cold.evo")).column("venue").to_pylist()
    assert venue == [None] * 1_000 + ["x"] * 10
    # verify compares every other column and says which one it cannot.
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "EQUAL (checksum excludes venue (added after the first offload))" in verify.stdout

    env.ch(f"ALTER TABLE {env.ch_database}.evo DROP COLUMN venue")
    env.ch(f"ALTER TABLE {env.ch_database}.evo ADD COLUMN venue Int32 DEFAULT 1")
    env.insert_trades("evo", 10, first_id=6_000, start="2026-01-04 00:00:00")
    report = env.once()
    assert not report.ok
    error = report.tables[0].error or ""
    assert "'venue'" in error and "string" in error and "int" in error


def test_two_processes_at_once_no_duplicates(env: Env) -> None:
    for name in ("p1", "p2"):
        env.create_trades(name)
        env.insert_trades(name, 100_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table(n, append_rows=20_000) for n in ("p1", "p2")])
    procs = [env.popen("once") for _ in range(2)]
    for p in procs:
        p.wait(timeout=300)
    for p in procs:
        assert p.returncode in (0, 1), p.stderr.read() if p.stderr else ""
    # Whatever was skipped for the lock is finished by a third run.
    assert env.once().ok
    assert env.assert_tiers_equal("cold.p1") == 100_000
    assert env.assert_tiers_equal("cold.p2") == 100_000


def test_postgres_sql_catalog(env: Env) -> None:
    env.create_trades("pgcat")
    env.insert_trades("pgcat", 2_000, first_id=1, start="2026-01-01 00:00:00")
    uri = env.pg_dsn.replace("postgresql://", "postgresql+psycopg2://")
    # The parquet transport writes one file per UTC day: it can follow day partitions only.
    extra = [] if env.transport == "parquet" else ["bucket(4, trade_id)"]
    env.write_config(
        [env.table("pgcat", partition_by=["day(exchange_ts)", *extra])],
        catalog={"type": "sql", "uri": uri, "warehouse": f"file://{env.tmp}/warehouse"},
    )
    assert env.once().ok
    env.insert_trades("pgcat", 10, first_id=10_000, start="2026-01-05 00:00:00")
    assert env.once().ok
    assert env.assert_tiers_equal("cold.pgcat") == 2_010


def test_parquet_pages_sized_by_bytes_carry_every_row_once(
    env_parquet: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parquet transport sizes its pages by the Parquet bytes per row of the page
    before (source/parquet.page_rows), below batch_rows: a page ended at its own size
    is not taken for the scan's end, and every row arrives once, over day boundaries."""
    from offloader.source import parquet

    env = env_parquet
    monkeypatch.setattr(parquet, "FIRST_PAGE_ROWS", 2_000)
    monkeypatch.setattr(parquet, "MIN_PAGE_ROWS", 500)
    monkeypatch.setattr(parquet, "PAGE_BYTES", 60_000)
    env.create_trades("sized")
    # 40k rows, one every 7 s: about three UTC days.
    env.insert_trades("sized", 40_000, first_id=1, start="2026-01-01 00:00:00", step_us=7 * 10**6)
    env.write_config([env.table("sized", batch_rows=1_000_000, append_rows=1_000_000)])
    report = env.once()
    assert report.ok, report.summary()
    [run] = report.tables
    assert run.rows == 40_000
    assert run.pages >= 8, run.pages  # sized by bytes, not by the 1M-row batch_rows
    assert env.assert_tiers_equal("cold.sized") == 40_000
    idle = env.once()
    assert idle.ok and idle.tables[0].status == "idle", idle.summary()
