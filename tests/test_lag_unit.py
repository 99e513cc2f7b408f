"""The one definition of lag (plan.behind) and its query, pure: no servers."""

from __future__ import annotations

import datetime as dt

from offloader.plan import Behind, behind
from offloader.sql.scan import behind_query
from offloader.types import parse_type

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
TS = parse_type("DateTime64(6, 'UTC')")


def test_nothing_waiting_is_no_lag_however_old_the_data() -> None:
    assert behind(0, None, NOW, TS) == Behind(0, 0.0)
    assert behind(0, None, NOW, parse_type("Date")) == Behind(0, 0.0)


def test_lag_is_the_age_of_the_oldest_waiting_row() -> None:
    oldest = NOW - dt.timedelta(hours=3)
    assert behind(42, oldest, NOW, TS) == Behind(42, 3 * 3600.0)
    # Naive datetimes are UTC; a row "from the future" (clock skew) is no lag.
    assert behind(1, oldest.replace(tzinfo=None), NOW, TS).seconds == 3 * 3600.0
    assert behind(1, NOW + dt.timedelta(minutes=5), NOW, TS).seconds == 0.0


def test_dates_count_from_midnight_utc_and_integers_have_rows_only() -> None:
    got = behind(5, dt.date(2026, 5, 31), NOW, parse_type("Date"))
    assert got == Behind(5, 36 * 3600.0)
    assert behind(7, 1234, NOW, parse_type("UInt64")) == Behind(7, None)


def test_behind_query_reads_past_the_committed_position() -> None:
    order = [("ts", TS), ("id", parse_type("UInt64"))]
    q = behind_query("`db`.`t`", order, ["2026-06-01 11:00:00.000000", 5])
    assert q.startswith("SELECT count(), toUnixTimestamp64Micro(toDateTime64(min(`ts`), 6, 'UTC'))")
    assert "WHERE `ts` >= toDateTime64('2026-06-01 11:00:00.000000', 6, 'UTC') AND" in q
    assert "`id` > 5" in q
    assert "WHERE" not in behind_query("`db`.`t`", order, None)
