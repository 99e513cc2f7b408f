"""The arrow transport: identical contents to native, and a broken stream never
advances the watermark."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from offloader.config import ClickHouseConfig
from offloader.dev import devserver
from offloader.errors import SourceSchemaError, SourceUnavailable
from offloader.iceberg import IcebergCatalog
from offloader.ops.verify import TableVerdict, verify_table
from offloader.source import arrow as clickhouse_http
from offloader.tiers.services import open_services
from tests.conftest import make_env
from tests.helpers import Env, independent_reads, wait_for_log
from tests.test_bad_input import EXTREMES
from tests.test_types_live import ALL_TYPES, ROWS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("env", ["native"], indirect=True)  # all transports in one run
def test_all_transports_store_identical_contents(env: Env) -> None:
    env.ch(ALL_TYPES.format(db=env.ch_database))
    env.ch(ROWS.format(db=env.ch_database))
    env.ch(EXTREMES.format(db=env.ch_database))
    env.ch(
        f"INSERT INTO {env.ch_database}.extreme VALUES ('1999-01-01 00:00:00', 1, 'x', "
        "'1900-01-01', '2299-12-31 23:59:59.999999', '2106-02-07 06:28:15', nan, -128, "
        "9223372036854775807, '-9999999999999999999999999999.9999999999', true, "
        "'ffffffff-ffff-ffff-ffff-ffffffffffff', 'a', ''), "
        "('2000-01-01 00:00:00', 2, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
        "NULL, NULL)"
    )
    env.create_trades("trades")
    env.insert_trades("trades", 50_000, first_id=1, start="2026-01-01 00:00:00", step_us=5 * 10**6)
    # The parquet transport cannot store FixedString: its copy of alltypes has none.
    db = env.ch_database
    env.ch(f"CREATE TABLE {db}.alltypes_nofs AS {db}.alltypes")
    env.ch(f"INSERT INTO {db}.alltypes_nofs SELECT * FROM {db}.alltypes")
    env.ch(f"ALTER TABLE {db}.alltypes_nofs DROP COLUMN fs")
    tables = []
    for name, wm in (("alltypes", "ts"), ("extreme", "ts"), ("trades", "exchange_ts")):
        keys = ["trade_id"] if name == "trades" else ["id"]
        for transport in ("native", "arrow", "parquet"):
            source = "alltypes_nofs" if (name, transport) == ("alltypes", "parquet") else name
            tables.append(
                env.table(
                    source,
                    watermark=wm,
                    keys=keys,
                    transport=transport,
                    target=f"{transport}.{name}",
                    batch_rows=7_000,
                    partition_by=["day(exchange_ts)"] if name == "trades" else [],
                )
            )
    env.write_config(tables)
    report = env.once()
    assert report.ok, report.summary()
    cfg = env.config()
    for name in ("alltypes", "extreme", "trades"):
        native = env.iceberg_arrow(cfg.table(f"native.{name}"))
        for other in ("arrow", "parquet"):
            theirs = env.iceberg_arrow(cfg.table(f"{other}.{name}"))
            missing = [c for c in native.schema.names if c not in theirs.schema.names]
            ours = native.drop_columns(missing)  # parquet's alltypes: no FixedString
            assert ours.schema == theirs.schema, (name, other)
            assert ours.num_rows == theirs.num_rows and ours.num_rows > 0
            for column in ours.schema.names:
                a, b = ours.column(column), theirs.column(column)
                if a.type in ("double", "float"):
                    a, b = a.cast("string"), b.cast("string")  # NaN equals NaN as text
                assert a.equals(b), f"{name}.{column} differs between native and {other}"
    assert env.cli("verify").returncode == 0
    # The files ClickHouse encoded (no field ids: read through the name mapping), one
    # UTC day each, read by engines we did not write, equal to the source.
    ice = IcebergCatalog(cfg.catalog).load("parquet.trades")
    assert ice is not None
    files = ice.table.inspect.files()
    assert files.num_rows >= 3  # 50k trades 5 s apart: three UTC days
    query = "SELECT count(*), sum(trade_id), sum(length(tags)), max(venue_seq) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    [(count, ids, tags, top)] = env.ch(
        f"SELECT count(), sum(trade_id), sum(length(tags)), max(venue_seq) FROM {db}.trades"
    )
    assert got == [f"{count},{ids},{tags},{top}"] * 2, got


@pytest.mark.parametrize("env", ["arrow"], indirect=True)
def test_mid_stream_server_error_fails_the_page(env: Env) -> None:
    cfg = ClickHouseConfig(port=env.ch_port, http_port=env.ch_http_port)

    async def go() -> None:
        async with clickhouse_http.session(cfg, "test") as s:
            ok = await s.page("SELECT number FROM numbers(10)")
            assert ok.num_rows == 10
            with pytest.raises(SourceUnavailable, match="failed mid-stream"):
                await s.page(
                    "SELECT number, throwIf(number = 150000) FROM numbers(200000) "
                    "SETTINGS max_block_size = 1000"
                )
            with pytest.raises(SourceSchemaError, match="server error 60"):
                await s.page("SELECT * FROM no_such_table")

    anyio.run(go)


def test_throwing_source_never_advances_past_unread_rows(env: Env) -> None:
    env.create_trades("base")
    env.insert_trades("base", 60_000, first_id=1, start="2026-01-01 00:00:00")
    db = env.ch_database
    env.ch(f"CREATE VIEW {db}.boom AS SELECT *, throwIf(trade_id = 45000) AS bad FROM {db}.base")
    env.write_config([env.table("boom", batch_rows=10_000, append_rows=10_000)])
    report = env.once()
    [t] = report.tables
    assert t.status == "failed"
    assert t.rows <= 40_000  # only pages before the failing one were committed
    committed = t.rows
    env.ch(f"CREATE OR REPLACE VIEW {db}.boom AS SELECT *, toUInt8(0) AS bad FROM {db}.base")
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].rows == 60_000 - committed
    assert env.assert_tiers_equal("cold.boom") == 60_000


def test_server_killed_mid_page_with_arrow(pg_database: str, tmp_path: Path) -> None:
    server = devserver.start(tmp_path / "ch")
    env = make_env(server, pg_database, tmp_path, "arrow")
    try:
        env.create_trades("big")
        env.insert_trades("big", 3_000_000, first_id=1, start="2026-01-01 00:00:00")
        env.write_config([env.table("big", batch_rows=200_000, append_rows=200_000)])
        proc = env.popen("--log-format", "json", "once")
        wait_for_log(proc, "committed")  # mid-cycle: one append is in, pages are flowing
        devserver.kill(server.pid)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert "FAILED cold.big" in out and "ClickHouse" in out, out
        server = devserver.start(tmp_path / "ch")
        env.ch_port, env.ch_http_port = server.tcp_port, server.http_port
        env.write_config([env.table("big", batch_rows=200_000, append_rows=200_000)])
        assert env.once().ok
        verify = env.cli("verify")
        assert verify.returncode == 0, verify.stdout
        assert "3000000 rows" in verify.stdout
    finally:
        env.drop_pg_schema()
        devserver.stop(tmp_path / "ch")


@pytest.mark.parametrize("env", ["arrow"], indirect=True)
def test_arrow_tables_need_only_the_http_port(env: Env) -> None:
    """Introspection, the high-water mark, status, verify and validate all go over HTTP:
    a closed native port does not matter to a table on the arrow transport."""
    env.create_trades("h")
    env.insert_trades("h", 30_000, first_id=1, start="2026-01-01 00:00:00")
    # Compressed replies (zstd) too, as over a slow link.
    extra = {"http_compression": True}
    env.write_config([env.table("h", lag="5m")], clickhouse_port=1, clickhouse_extra=extra)
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].rows == 30_000
    expected = {
        "verify": "30000 rows up to the committed watermark: EQUAL",
        "status": "cold.h",
        "validate": ": OK",
    }
    for command, says in expected.items():
        result = env.cli(command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "127.0.0.1:1" not in result.stdout + result.stderr, result.stdout
        assert says in result.stdout, (command, result.stdout)
    assert env.assert_tiers_equal("cold.h") == 30_000


@pytest.mark.parametrize("env", ["arrow"], indirect=True)
def test_a_settings_profile_cannot_change_stored_text(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output settings a user's ClickHouse profile might set (here sent with every
    request) change toString() of JSON and Decimal; pages and verify pin them."""
    profile = {
        "date_time_output_format": "iso",
        "output_format_json_quote_64bit_integers": "1",
        "output_format_decimal_trailing_zeros": "1",
    }
    monkeypatch.setattr(clickhouse_http, "SETTINGS", {**clickhouse_http.SETTINGS, **profile})
    monkeypatch.setattr(clickhouse_http, "QUERY_SETTINGS", profile)
    db = env.ch_database
    env.ch(
        f"CREATE TABLE {db}.prof (ts DateTime64(6, 'UTC'), id UInt64, j JSON, "
        "d Decimal(10, 4)) ENGINE = MergeTree ORDER BY (ts, id)"
    )
    env.ch(
        f"INSERT INTO {db}.prof VALUES ('2026-01-01 00:00:00', 1, "
        """'{"n": 1, "t": "2026-01-01 00:00:00"}', 1.5)"""
    )
    env.write_config([env.table("prof", watermark="ts", keys=["id"])])
    report = env.once()
    assert report.ok, report.summary()
    [row] = env.iceberg_arrow(env.config().table("cold.prof")).to_pylist()
    assert row["j"] == '{"n":1,"t":"2026-01-01 00:00:00"}'  # the defaults' text
    cfg = env.config()

    async def verify() -> TableVerdict:
        async with open_services(cfg, connections=2) as services:
            return await verify_table(services, cfg.table("cold.prof"), None, None)

    verdict = anyio.run(verify)
    assert verdict.ok, verdict.render()
