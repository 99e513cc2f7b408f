"""`offloader verify` and `offloader expire` against real services."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from offloader.verify import _decimal_text, canonical_value
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
    assert env.once().ok
    result = env.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cold.alltypes: 1 days, 2 rows up to the committed watermark: EQUAL" in result.stdout
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
