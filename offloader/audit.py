"""Late rows: compare ClickHouse and Iceberg per day below the committed watermark.

Rows can appear in ClickHouse below a table's watermark after it was offloaded (a
replay, a backfill, an insert later than `lag`), disappear (`ALTER TABLE … DELETE`,
lightweight deletes, collapsing engines) or be replaced. Each run audits the days of
its window — the watermark's day and the `audit_days - 1` before it — cheaply:
ClickHouse answers one grouped count over the window (reading only the watermark and
key columns of those days), Iceberg's counts come from the manifests (no data file is
read). A day whose counts differ is *drifted*; `repair` replaces it.

Counts catch inserted and deleted rows. A row updated in place keeps its day's count:
`offloader verify` (which checksums every value) finds those, and `offloader repair
--since DAY --until DAY` replaces any day on request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import anyio

from offloader.iceberg import IcebergTable
from offloader.iceberg import maintenance as ops
from offloader.source import Source
from offloader.source.types import ChType
from offloader.sql import day_counts_query

EPOCH = dt.date(1970, 1, 1)


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_of_number(n: int) -> dt.date:
    return EPOCH + dt.timedelta(days=n)


def watermark_day(wm_type: ChType, encoded: Any) -> dt.date | None:
    """The UTC day of an encoded watermark value; None for integer watermarks (no days
    to audit)."""
    name = wm_type.unwrap().name
    if name in ("DateTime", "DateTime64", "Date", "Date32"):
        return dt.date.fromisoformat(str(encoded)[:10])
    return None


def day_start(wm_type: ChType, day: dt.date) -> str:
    """The first watermark value of `day`, encoded as convert.encode_value would."""
    if wm_type.unwrap().name in ("Date", "Date32"):
        return day.isoformat()
    return f"{day.isoformat()} 00:00:00.000000"


@dataclass(frozen=True, slots=True)
class DayCount:
    day: dt.date
    clickhouse: int
    iceberg: int | None  # None: a data file spans several days, the manifests cannot say

    @property
    def drifted(self) -> bool:
        return self.iceberg is not None and self.iceberg != self.clickhouse

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "clickhouse": self.clickhouse, "iceberg": self.iceberg}

    def __str__(self) -> str:
        return f"{self.day}: ClickHouse {self.clickhouse} rows, Iceberg {self.iceberg} rows"


@dataclass(slots=True)
class Audit:
    first_day: dt.date
    last_day: dt.date
    days: list[DayCount] = field(default_factory=list)
    waiting: int = 0  # rows after the committed position (not offloaded yet)
    oldest_waiting: int | None = None  # the oldest one's watermark, as sql.watermark_int
    server_now: int | None = None  # ClickHouse's time, microseconds

    @property
    def drifted(self) -> list[DayCount]:
        return [d for d in self.days if d.drifted]

    @property
    def unknown(self) -> list[dt.date]:
        return [d.day for d in self.days if d.iceberg is None]


def compare(
    first_day: dt.date,
    last_day: dt.date,
    clickhouse: dict[int, int],
    iceberg: dict[int, int],
    unknown: set[int],
) -> Audit:
    """Day by day, ClickHouse's counts against Iceberg's. Pure."""
    audit = Audit(first_day, last_day)
    for n in range(day_number(first_day), day_number(last_day) + 1):
        audit.days.append(
            DayCount(
                day_of_number(n),
                clickhouse.get(n, 0),
                None if n in unknown else iceberg.get(n, 0),
            )
        )
    return audit


async def audit_days(
    ch: Source,
    source: str,
    order: tuple[tuple[str, ChType], ...],
    position: list[Any],
    ice: IcebergTable,
    first_day: dt.date,
    last_day: dt.date,
    limiter: anyio.CapacityLimiter | None = None,
) -> Audit:
    """Counts of both tiers per day in [first_day, last_day], up to the committed
    `position` (rows after it are not offloaded yet, on either side)."""
    wm_name, wm_type = order[0]
    query = day_counts_query(source, order, day_start(wm_type, first_day), position)
    hot: dict[int, int] = {}
    waiting, oldest, now = 0, None, None
    for d, done, after, first, at in await ch.rows(query):
        hot[int(d)] = int(done)
        now = int(at)
        if int(after):
            waiting += int(after)
            oldest = int(first) if oldest is None else min(oldest, int(first))
    days = (day_number(first_day), day_number(last_day))
    key = (ice.snapshot_id, wm_name, *days)
    last = _ICEBERG_DAYS.get(ice.target)
    if last is not None and last[0] == key:
        cached = last[1]
    else:
        live = await anyio.to_thread.run_sync(ops.live_files, ice, wm_name, limiter=limiter)
        cached = ops.day_counts(live, *days)
        _ICEBERG_DAYS[ice.target] = (key, cached)
    cold, unknown = cached
    result = compare(first_day, last_day, hot, cold, unknown)
    result.waiting, result.oldest_waiting, result.server_now = waiting, oldest, now
    return result


# Each table's last Iceberg per-day counts with the (snapshot, window) they are for: a
# snapshot never changes, so an idle cycle (no new snapshot) reads no manifest.
_ICEBERG_DAYS: dict[str, tuple[tuple[Any, ...], tuple[dict[int, int], set[int]]]] = {}


def window(
    wm_type: ChType, position: list[Any] | None, days: int
) -> tuple[dt.date, dt.date] | None:
    """The audit window: the committed watermark's day and the `days - 1` before it;
    None when there is nothing to audit (no commit yet, integer watermark, days = 0)."""
    if not position or days <= 0:
        return None
    last = watermark_day(wm_type, position[0])
    if last is None:
        return None
    return last - dt.timedelta(days=days - 1), last
