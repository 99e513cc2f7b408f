"""`offloader verify` and `offloader expire` against real services."""

from __future__ import annotations

import datetime as dt
import decimal

import orjson
import pytest

from offloader.ops.verify import _decimal_text, canonical_value
from tests.helpers import Env
from tests.test_types_live import ALL_TYPES, ROWS

pytestmark = pytest.mark.integration


def test_canonical_text_matches_clickhouse(env: Env) -> None:
    for text in ("1.5", "-0.05", "0", "12345678901234567890.0123456789", "100"):
        got = env.ch(f"SELECT toString(toDecimal128('{text}', 10))")[0][0]
        exact = decimal.Context(prec=80)
        assert (
            _decimal_text(decimal.Decimal(text).quantize(decimal.Decimal("1e-10"), context=exact))
            == got
        )
    ts = dt.datetime(1960, 1, 1, 0, 0, 0, 5, tzinfo=dt.UTC)
    micros = env.ch(
        "SELECT toUnixTimestamp64Micro(toDateTime64('1960-01-01 00:00:00.000005', 6, 'UTC'))"
    )
    assert canonical_value("micros", ts) == str(micros[0][0]).encode()


def test_verify_equal_then_differences(env: Env) -> None:
    env.ch(ALL_TYPES.format(db=env.ch_database))
    env.ch(ROWS.format(db=env.ch_database))
    env.create_trades("v")
    env.insert_trades("v", 30_000, first_id=1, start="2026-01-01 00:00:00", step_us=30_000_000)
    env.write_config([env.table("alltypes", watermark="ts", keys=["id"]), env.table("v")])
    env.drop_for_parquet("alltypes", "fs")
    assert env.once().ok
    result = env.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cold.alltypes: 1 days, 2 rows up to the committed watermark: EQUAL\n" in result.stdout
    assert "cold.v: 4 days, 30000 rows" in result.stdout and "EQUAL" in result.stdout

    # A row arriving late, below the watermark, is missing from Iceberg.
    env.ch(
        f"INSERT INTO {env.ch_database}.v (exchange_ts, trade_id, symbol, price, quantity, side) "
        "VALUES ('2026-01-02 12:00:00', 999999, 'BTC', 1, 1, 'buy')"
    )
    # A value changed in the hot tier after it was offloaded.
    env.ch(
        f"ALTER TABLE {env.ch_database}.v UPDATE price = 1 WHERE trade_id = 5 "
        "SETTINGS mutations_sync = 2"
    )
    # Values inside containers are compared too.
    env.ch(
        f"ALTER TABLE {env.ch_database}.alltypes UPDATE m = map('k', 2) WHERE id = 1 "
        "SETTINGS mutations_sync = 2"
    )
    nested = env.cli("verify", "cold.alltypes")
    assert nested.returncode == 1, nested.stdout
    assert "2 rows on both sides but values differ" in nested.stdout
    result = env.cli("verify", "cold.v")
    assert result.returncode == 1
    assert "2026-01-01: 8640 rows on both sides but values differ" in result.stdout
    assert "2026-01-02: ClickHouse 8641 rows, Iceberg 8640 rows (missing 1)" in result.stdout
    only = env.cli("verify", "cold.v", "--since", "2026-01-03")
    assert only.returncode == 0, only.stdout
    assert "2 days" in only.stdout


def test_expire_keeps_the_newest_offloader_commit(env: Env) -> None:
    env.create_trades("exp")
    env.write_config([env.table("exp")])
    for i in range(4):
        env.insert_trades("exp", 100, first_id=1 + i * 1000, start=f"2026-01-0{i + 1} 00:00:00")
        assert env.once().ok
    assert env.snapshots("cold.exp") >= 4
    result = env.cli("expire", "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    assert "cold.exp: expired" in result.stdout
    assert env.snapshots("cold.exp") == 1
    env.insert_trades("exp", 10, first_id=50_000, start="2026-01-09 00:00:00")
    report = env.once()
    assert report.ok and report.tables[0].rows == 10
    assert env.assert_tiers_equal("cold.exp") == 410
    assert env.cli("verify").returncode == 0


def test_verify_checksums_values_inside_containers(env: Env) -> None:
    env.ch(
        f"CREATE TABLE {env.ch_database}.deep (ts DateTime64(6, 'UTC'), id UInt64, "
        "a2 Array(Array(Nullable(Decimal(20, 4)))), md Map(LowCardinality(String), "
        "Array(DateTime64(3, 'UTC'))), tp Tuple(d Date, b Bool, e Enum8('x' = 1, 'y' = 2)), "
        "af Array(FixedString(2)), ai Array(IPv6), au Array(UUID), af32 Array(Float32), "
        "mi Map(UInt64, Nullable(String))) ENGINE = MergeTree ORDER BY (ts, id)"
    )
    env.ch(
        f"INSERT INTO {env.ch_database}.deep VALUES "
        "('2026-01-01 00:00:00', 1, [[1.5, NULL], [], [-0.0001]], "
        "{'k': ['2026-01-01 00:00:00.001', '1960-01-01 00:00:00'], '': []}, "
        "('1970-01-01', true, 'y'), ['a', ''], ['::ffff:1.2.3.4', '2001:db8::1'], "
        "['00000000-0000-0000-0000-00000000000a'], [nan, -inf, 1.1], "
        "{18446744073709551615: NULL}), "
        "('2026-01-01 00:00:01', 2, [], {}, ('2149-06-06', false, 'x'), [], [], [], [], {}), "
        "('2026-01-01 00:00:02', 3, [[NULL]], {'': ['2299-12-31 23:59:59.999']}, "
        "('2000-02-29', true, 'x'), ['zz'], ['::'], [], [0], {0: '', 1: 'é'})"
    )
    env.write_config([env.table("deep", watermark="ts", keys=["id"])])
    env.drop_for_parquet("deep", "af")
    refused = env.once()
    assert not refused.ok
    assert "column 'mi'" in str(refused.tables[0].error)
    assert 'set uint64 = "decimal"' in str(refused.tables[0].error)
    env.write_config(
        [env.table("deep", watermark="ts", keys=["id"], uint64="decimal", target="cold.deep_dec")]
    )
    report = env.once()
    assert report.ok, report.summary()
    # Exact inside containers too: the native driver's float decoding would give .999001.
    rows = env.iceberg_arrow(env.config().table("cold.deep_dec")).to_pylist()
    last = next(r for r in rows if r["id"] == 3)
    assert last["md"] == [("", [dt.datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)])]
    result = env.cli("verify", "cold.deep_dec")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cold.deep_dec: 1 days, 3 rows up to the committed watermark: EQUAL\n" in result.stdout
    env.ch(
        f"ALTER TABLE {env.ch_database}.deep UPDATE a2 = [[1.5, NULL], [], [0.0001]] "
        "WHERE id = 1 SETTINGS mutations_sync = 2"
    )
    changed = env.cli("verify", "cold.deep_dec")
    assert changed.returncode == 1, changed.stdout
    assert "3 rows on both sides but values differ" in changed.stdout


def test_a_range_with_no_day_says_so_and_is_not_a_pass(env: Env) -> None:
    """A range holding none of the table's days compares nothing: never `EQUAL` nor exit
    0 (a cron check cannot take it for a proof); the text and the JSON say which days the
    table has. Days asked of an integer watermark are refused naming the column."""
    env.create_trades("r")
    env.insert_trades("r", 5_000, first_id=1, start="2025-03-01 00:00:00", step_us=60_000_000)
    env.ch(
        f"CREATE TABLE {env.ch_database}.ints (n UInt64, v String) ENGINE = MergeTree ORDER BY n"
    )
    env.ch(f"INSERT INTO {env.ch_database}.ints SELECT number, 'x' FROM numbers(10)")
    env.write_config([env.table("r"), env.table("ints", watermark="n", keys=["v"])])
    assert env.once().ok
    inside = env.cli("verify", "cold.r", "--since", "2025-03-02", "--until", "2025-03-03")
    assert inside.returncode == 0 and "cold.r: 1 days, 680 rows" in inside.stdout, inside.stdout
    empty = env.cli("verify", "cold.r", "--since", "2030-01-01")
    assert empty.returncode == 3, empty.stdout + empty.stderr
    assert "EQUAL" not in empty.stdout
    assert (
        "cold.r: NOTHING TO COMPARE between 2030-01-01 and the committed watermark: the "
        "table's offloaded days are 2025-03-01 to 2025-03-02" in empty.stdout
    ), empty.stdout
    as_json = env.cli("verify", "cold.r", "--until", "2025-01-01", "--json")
    assert as_json.returncode == 3
    [verdict] = orjson.loads(as_json.stdout)
    assert verdict["result"] == "nothing" and verdict["table_days"] == ["2025-03-01", "2025-03-02"]
    ints = env.cli("verify", "cold.ints", "--since", "2025-03-01")
    assert ints.returncode == 2, ints.stdout + ints.stderr
    assert "the watermark 'n' is an integer" in ints.stderr
    assert env.cli("verify", "cold.ints").returncode == 0
