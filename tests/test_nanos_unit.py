"""A DateTime64(7..9) watermark, the pure parts: its ticks as the cursor, their exact
SQL literals, UTC days before and after 1970, the high-water mark (no server)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from offloader import cursor, days, plan
from offloader.config import TableConfig
from offloader.days import day_number, day_start, watermark_day
from offloader.errors import SourceSchemaError
from offloader.iceberg import compaction
from offloader.iceberg.table import day_runs
from offloader.sql import text as sql
from offloader.state import DaySum
from offloader.tiers.audit import day_sums
from offloader.types import parse_type

NS = parse_type("DateTime64(9, 'UTC')")
T7 = parse_type("DateTime64(7)")
DAY_NS = 86_400 * 10**9
JAN1 = day_number(dt.date(2026, 1, 1))


def test_kinds_of_watermark_columns_and_their_units() -> None:
    assert days.kind_of(NS) == "ticks9" and days.kind_of(T7) == "ticks7"
    assert days.kind_of(parse_type("DateTime64(6, 'UTC')")) == "micros"
    assert days.kind_of(parse_type("DateTime")) == "micros"
    assert days.kind_of(parse_type("Date32")) == "days"
    assert days.kind_of(parse_type("UInt64")) == "value"
    # The Iceberg side reads the unit back from the column's doc.
    assert days.kind_of_field("long", days.ticks_doc(9, NS)) == "ticks9"
    assert days.kind_of_field("long", days.ticks_doc(7, T7)) == "ticks7"
    assert days.kind_of_field("long", "a count of days (ClickHouse IntervalDay)") == "value"
    assert days.kind_of_field("long", None) == "value"
    assert days.kind_of_field("timestamptz", None) == "micros"
    assert days.per_day("ticks9") == DAY_NS and days.per_day("value") is None


def test_days_round_down_before_1970() -> None:
    assert days.day_of(-1, "ticks9") == -1  # 1969-12-31 23:59:59.999999999
    assert days.day_of(0, "ticks9") == 0
    assert days.day_of(DAY_NS - 1, "ticks9") == 0 and days.day_of(DAY_NS, "ticks9") == 1
    assert days.day_of(-1, "micros") == -1
    values = pa.array([-DAY_NS - 1, -DAY_NS, -1, 0, DAY_NS - 1, DAY_NS], pa.int64())
    assert days.day_numbers(values, "ticks9").to_pylist() == [-2, -1, -1, 0, 0, 1]
    ts = pa.array([-1, 0], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    assert days.day_numbers(ts, "micros").to_pylist() == [-1, 0]
    with pytest.raises(ValueError, match="no UTC days"):
        days.day_numbers(values, "value")


def test_ticks_are_the_cursor_and_render_as_exact_literals() -> None:
    t = cursor.Ticks(1767225600123456789, 9)
    assert str(t) == "2026-01-01 00:00:00.123456789"
    assert t.datetime() == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    assert cursor.encode_value(t) == 1767225600123456789
    assert cursor.ticks_text(-1, 9) == "1969-12-31 23:59:59.999999999"
    assert cursor.ticks_text(104137919999999999, 7) == "2299-12-31 23:59:59.9999999"
    # The cursor holds the integer; the literal is the exact text at the column's precision.
    assert sql.literal(NS, 1767225600123456789) == (
        "toDateTime64('2026-01-01 00:00:00.123456789', 9, 'UTC')"
    )
    assert sql.literal(T7, -1) == "toDateTime64('1969-12-31 23:59:59.9999999', 7, 'UTC')"
    assert sql.watermark_int(NS, "max(ts)") == "reinterpretAsInt64(max(ts))"
    assert cursor.watermark_from_int(NS, 5) == cursor.Ticks(5, 9)
    position = cursor.loads(cursor.dumps([cursor.encode_value(t), 7]))
    assert position == (1767225600123456789, 7)
    after = sql.keyset_after([("ts", NS), ("id", parse_type("UInt64"))], position)
    assert "toDateTime64('2026-01-01 00:00:00.123456789', 9, 'UTC')" in after


def test_a_nanosecond_watermark_and_key_are_accepted() -> None:
    table = TableConfig(source="db.t", target="cold.t", watermark="ts", keys=("k",))
    order, _ = plan.plan_order(table, [("ts", "DateTime64(9, 'UTC')"), ("k", "DateTime64(8)")])
    assert [str(t) for _, t in order] == ["DateTime64(9, 'UTC')", "DateTime64(8)"]
    with pytest.raises(SourceSchemaError, match="must not be Nullable"):
        plan.plan_order(table, [("ts", "Nullable(DateTime64(9))"), ("k", "UInt8")])


def test_high_water_mark_is_exact_in_ticks() -> None:
    top = cursor.Ticks(1767225600123456789, 9)
    now = dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    # No lag: the newest row itself, to the nanosecond (a µs-rounded mark would leave
    # the rows of its last microsecond waiting forever).
    assert plan.high_water_value(top, now, 0, NS) == top
    # With lag, now - lag in ticks.
    assert plan.high_water_value(top, now, 1.0, NS) == cursor.Ticks(1767225600 * 10**9, 9)
    assert cursor.encode_value(plan.high_water_value(top, now, 0, NS)) == 1767225600123456789
    lag = plan.behind(3, cursor.Ticks(1767225600 * 10**9, 9), now, NS)
    assert lag.seconds == 1.0


def test_audit_days_of_ticks() -> None:
    assert watermark_day(NS, 1767225600123456789) == dt.date(2026, 1, 1)
    assert watermark_day(NS, -1) == dt.date(1969, 12, 31)
    assert day_start(NS, dt.date(2026, 1, 2)) == (JAN1 + 1) * DAY_NS
    assert day_start(T7, dt.date(1970, 1, 2)) == 86_400 * 10**7
    wm = pa.array([JAN1 * DAY_NS, (JAN1 + 1) * DAY_NS - 1, (JAN1 + 1) * DAY_NS], pa.int64())
    sums = day_sums(wm, pa.array([1, 2, 3], pa.uint64()), "k", "ticks9")
    assert sums == {JAN1: DaySum(2, 3, "k"), JAN1 + 1: DaySum(1, 3, "k")}
    data = pa.table({"ts": wm})
    assert day_runs(data, "ts", "ticks9") == [(0, 2, JAN1), (2, 3, JAN1 + 1)]
    assert day_runs(data, "ts", "value") == [(0, 3, None)]


def test_compaction_cutoff_in_ticks() -> None:
    assert compaction.compaction_cutoff([10**18], "ticks9", 1000.0, 10.0) == 990 * 10**9
    assert compaction.compaction_cutoff([5], "ticks9", 1000.0, 10.0) == 5
