"""The late-rows audit's pure parts: per-day row-hash sums of a page and the
comparison of counts and checksums (no server)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from offloader.days import day_number
from offloader.sql.text import row_hash
from offloader.state import DaySum
from offloader.tiers.audit import add_sums, compare, day_sums

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
N1, N2 = day_number(D1), day_number(D2)
TS = pa.timestamp("us", tz="UTC")


def micros(day: dt.date, hour: int) -> int:
    return int(dt.datetime.combine(day, dt.time(hour), dt.UTC).timestamp() * 1_000_000)


def test_day_sums_group_by_utc_day_and_wrap_at_2_64() -> None:
    wm = pa.array([micros(D1, 0), micros(D1, 23), micros(D2, 0)], TS)
    hashes = pa.array([2**64 - 1, 5, 7], pa.uint64())
    sums = day_sums(wm, hashes, "k")
    assert sums == {N1: DaySum(2, 4, "k"), N2: DaySum(1, 7, "k")}
    add_sums(sums, {N1: DaySum(1, 2**64 - 4, "k")})
    assert sums[N1] == DaySum(3, 0, "k")


def test_same_counts_different_sums_is_drift_only_when_the_sums_are_complete() -> None:
    hot = {N1: 10, N2: 10}
    checksums = {N1: 111, N2: 222}
    recorded = {N1: DaySum(10, 111, "k"), N2: DaySum(10, 999, "k")}
    audit = compare(
        (D1, D2), hot, dict(hot), set(), checksums=checksums, recorded=recorded, columns_key="k"
    )
    assert [(d.day, d.values_differ) for d in audit.days] == [(D1, False), (D2, True)]
    assert [d.day for d in audit.drifted] == [D2]
    assert str(audit.drifted[0]).endswith("(values differ)")
    # Sums over other columns (a column was added), or over fewer rows than Iceberg
    # holds (a commit recovered without sums): counts alone decide.
    other = compare(
        (D1, D2), hot, dict(hot), set(), checksums=checksums, recorded=recorded, columns_key="other"
    )
    assert other.drifted == []
    partial = {N2: DaySum(9, 999, "k")}
    assert (
        compare(
            (D1, D2), hot, dict(hot), set(), checksums=checksums, recorded=partial, columns_key="k"
        ).drifted
        == []
    )
    # Counts that differ are drift whatever the sums say.
    counted = compare(
        (D1, D2),
        hot,
        {N1: 10, N2: 9},
        set(),
        checksums=checksums,
        recorded=recorded,
        columns_key="k",
    )
    assert [(d.day, d.values_differ) for d in counted.drifted] == [(D2, False)]


def test_row_hash_is_a_tuple_hash_keyed_by_columns_and_types() -> None:
    h = row_hash([("ts", "DateTime64(6)"), ("note", "Nullable(String)")])
    assert h.expr == "cityHash64(tuple(`ts`, `note`))"
    assert h.key != row_hash([("ts", "DateTime64(6)"), ("note", "String")]).key
    assert h.key == row_hash([("ts", "DateTime64(6)"), ("note", "Nullable(String)")]).key


def test_an_agreed_window_round_trips_through_its_text() -> None:
    from offloader.state import AuditAgreed

    agreed = AuditAgreed(7, 20_454, 20_457, "1234567890123")
    assert AuditAgreed.decode(agreed.encode()) == agreed
    assert AuditAgreed.decode(None) is None
    assert AuditAgreed.decode("garbage") is None  # an unreadable record: hash the window
