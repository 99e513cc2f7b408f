"""Late rows: compare ClickHouse and Iceberg per day below the committed watermark.

Rows can appear in ClickHouse below a table's watermark after it was offloaded (a
replay, a backfill, an insert later than `lag`), disappear (`ALTER TABLE … DELETE`,
lightweight deletes, collapsing engines) or be replaced. Each run audits the days of
its window — the watermark's day and the `audit_days - 1` before it — cheaply:
ClickHouse answers one grouped count over the window (reading only the watermark and
key columns of those days), Iceberg's counts come from the manifests (no data file is
read). A day whose counts differ is *drifted*; `repair` replaces it.

Counts catch inserted and deleted rows. A row updated in place keeps its day's count,
so each day also has a checksum: every page carries ClickHouse's hash of each row
(sql.RowHash), each commit adds the per-day sums of the rows it moved to PostgreSQL
(day_sums, in the watermark's transaction), and the audit's grouped query sums the
same hash over ClickHouse's current rows. A day whose counts agree but whose sums
differ has rows changed in place (ALTER UPDATE, a collapsed or replaced version).
Sums are compared only where they are complete: the recorded rows equal Iceberg's
count and cover the same columns (a column added later, a recovered commit or a
table offloaded before checksums existed leave a day to the counts alone).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from offloader import days
from offloader.config import TableConfig
from offloader.days import day_number, day_of_number, day_start, watermark_day
from offloader.plan import Order
from offloader.source import Page, Source
from offloader.sql.scan import day_counts_query
from offloader.sql.text import RowHash, row_hash
from offloader.state import HASH_MODULUS, DaySum
from offloader.types import ChType

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.iceberg.table import IcebergTable


@dataclass(frozen=True, slots=True)
class DayCount:
    day: dt.date
    clickhouse: int
    iceberg: int | None  # None: a data file spans several days, the manifests cannot say
    values_differ: bool = False  # same counts, different checksums: rows changed in place

    @property
    def drifted(self) -> bool:
        counts = self.iceberg is not None and self.iceberg != self.clickhouse
        return counts or self.values_differ

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "day": self.day.isoformat(),
            "clickhouse": self.clickhouse,
            "iceberg": self.iceberg,
        }
        if self.values_differ:
            d["values_differ"] = True
        return d

    def __str__(self) -> str:
        text = f"{self.day}: ClickHouse {self.clickhouse} rows, Iceberg {self.iceberg} rows"
        return text + (" (values differ)" if self.values_differ else "")


@dataclass(slots=True)
class Audit:
    first_day: dt.date
    last_day: dt.date
    days: list[DayCount] = field(default_factory=list)
    waiting: int = 0  # rows after the committed position (not offloaded yet)
    oldest_waiting: int | None = None  # the oldest one's watermark, as sql.text.watermark_int
    server_now: int | None = None  # ClickHouse's time, microseconds

    @property
    def drifted(self) -> list[DayCount]:
        return [d for d in self.days if d.drifted]

    @property
    def unknown(self) -> list[dt.date]:
        return [d.day for d in self.days if d.iceberg is None]


def compare(
    window: tuple[dt.date, dt.date],
    clickhouse: dict[int, int],
    iceberg: dict[int, int],
    unknown: set[int],
    *,
    checksums: dict[int, int] | None = None,
    recorded: dict[int, DaySum] | None = None,
    columns_key: str = "",
) -> Audit:
    """Day by day, ClickHouse's counts against Iceberg's, and where the counts agree
    and the recorded sums are complete (their rows are Iceberg's count, over the same
    columns), ClickHouse's checksum against the recorded one. Pure."""
    first_day, last_day = window
    audit = Audit(first_day, last_day)
    for n in range(day_number(first_day), day_number(last_day) + 1):
        hot = clickhouse.get(n, 0)
        cold = None if n in unknown else iceberg.get(n, 0)
        differ = False
        kept = (recorded or {}).get(n)
        complete = kept is not None and kept.rows == cold and kept.columns_key == columns_key
        if checksums is not None and kept is not None and complete and cold == hot:
            differ = kept.checksum % HASH_MODULUS != checksums.get(n, 0) % HASH_MODULUS
        audit.days.append(DayCount(day_of_number(n), hot, cold, differ))
    return audit


def day_sums(
    watermarks: pa.Array, hashes: pa.Array, columns_key: str, kind: str = days.MICROS
) -> dict[int, DaySum]:
    """Per UTC day of a converted page's watermark column (of days.kind_of `kind`): its
    rows and the sum (mod 2^64) of their row hashes. Pure; vectorised. A page is in
    watermark order, so each day is one run of rows (usually the whole page): one sum
    per run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    runs = pc.run_end_encode(days.day_numbers(watermarks, kind))
    hashes = hashes.cast(pa.uint64())
    out: dict[int, DaySum] = {}
    start = 0
    for day, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        total = pc.sum(hashes.slice(start, end - start)).as_py() or 0
        s = DaySum(end - start, int(total), columns_key)
        add_sums(out, {int(day): s})
        start = end
    return out


def add_sums(into: dict[int, DaySum], more: dict[int, DaySum]) -> None:
    """Add `more` to `into`, day by day (sums mod 2^64)."""
    for day, s in more.items():
        old = into.get(day)
        into[day] = (
            s
            if old is None
            else DaySum(
                old.rows + s.rows, (old.checksum + s.checksum) % HASH_MODULUS, s.columns_key
            )
        )


@dataclass(slots=True)
class ClickHouseDays:
    """ClickHouse's side of an audit: per day, the rows up to the committed position and
    the sum of their row hashes; the rows after it and the oldest one's watermark."""

    rows: dict[int, int] = field(default_factory=dict)
    sums: dict[int, int] = field(default_factory=dict)
    waiting: int = 0
    oldest_waiting: int | None = None
    newest_waiting: int | None = None
    server_now: int | None = None
    fingerprint: str = ""  # the source's parts when read (sql.system.parts_fingerprint), or ''


@dataclass(frozen=True, slots=True)
class HotTable:
    """Where an audit reads ClickHouse's side: the source, the relation (the table, or
    its filtered subquery) and its order (watermark first), and the row hash summed per
    day (None: counts only)."""

    ch: Source
    relation: str
    order: Order
    hashed: RowHash | None = None


@dataclass(frozen=True, slots=True)
class KnownDays:
    """ClickHouse's days as a run's prepare read them, still true before `before` (the
    day of the position they were read at: the run's commits only touch later rows)."""

    hot: ClickHouseDays
    before: dt.date


@dataclass(frozen=True, slots=True)
class DaysAhead:
    """ClickHouse's days from `start` up to `position`, read before that position was
    committed (checkup.read_ahead); audit_days uses them for that position."""

    position: list[Any]
    start: dt.date
    hot: ClickHouseDays


@dataclass(frozen=True, slots=True)
class ReadBefore:
    """ClickHouse's days a run read before its audit: by its prepare (`known`) and ahead
    of its last commit (`ahead`, checkup.read_ahead). audit_days reads only the rest."""

    known: KnownDays | None = None
    ahead: DaysAhead | None = None


def reread_from(first_day: dt.date, known: KnownDays | None) -> dt.date:
    """The first day of the window whose ClickHouse side must be read (again): the
    days before `known.before` are as the run's prepare read them."""
    return first_day if known is None else max(first_day, known.before)


async def clickhouse_days(
    hot: HotTable, position: list[Any], first_day: dt.date, fingerprint: str | None = None
) -> ClickHouseDays:
    """One grouped query over the days from `first_day` on; with `fingerprint` (SQL,
    sql.system.parts_fingerprint), the source's parts as the query read them."""
    since = day_start(hot.order[0][1], first_day)
    query = day_counts_query(hot.relation, hot.order, since, position, hot.hashed, fingerprint)
    out = ClickHouseDays()
    for d, done, after, first, at, checksum, last, parts in await hot.ch.rows(query):
        out.rows[int(d)] = int(done)
        out.sums[int(d)] = int(checksum)
        out.server_now = int(at)
        out.fingerprint = str(parts)
        if int(after):
            out.waiting += int(after)
            oldest, newest = out.oldest_waiting, out.newest_waiting
            out.oldest_waiting = int(first) if oldest is None else min(oldest, int(first))
            out.newest_waiting = int(last) if newest is None else max(newest, int(last))
    return out


def agrees(
    first: int, last: int, hot: ClickHouseDays, recorded: dict[int, DaySum], hashed: RowHash | None
) -> bool:
    """Whether ClickHouse's days first..last (day numbers) match what PostgreSQL recorded
    as committed: the same rows, and the same row-hash sum where one was recorded over
    the same columns. Pure."""
    for n in range(first, last + 1):
        kept = recorded.get(n)
        if (kept.rows if kept else 0) != hot.rows.get(n, 0):
            return False
        same_columns = hashed is not None and kept is not None and kept.columns_key == hashed.key
        if (
            same_columns
            and kept
            and kept.checksum % HASH_MODULUS != hot.sums.get(n, 0) % HASH_MODULUS
        ):
            return False
    return True


async def audit_days(
    hot: HotTable,
    ice: IcebergTable,
    position: list[Any],
    window: tuple[dt.date, dt.date],
    *,
    recorded: dict[int, DaySum] | None = None,
    read: ReadBefore = ReadBefore(),
    limiter: anyio.CapacityLimiter | None = None,
) -> Audit:
    """Counts of both tiers per day of `window` (first and last day), up to the committed
    `position` (rows after it are not offloaded yet, on either side); with a row hash
    and the `recorded` day sums, checksums too. Iceberg's counts come from the
    manifests, cached per snapshot. `read.known`: ClickHouse's days as the run's prepare
    read them, so only the days from `known.before` are read again. `read.ahead`: those
    days, read already for this position (used if they are the same)."""
    from offloader.iceberg import files  # pyiceberg: only when auditing it

    known, ahead = read.known, read.ahead
    first_day, last_day = window
    wm_name = hot.order[0][0]
    start = reread_from(first_day, known)
    if ahead is not None and ahead.position == list(position) and ahead.start == start:
        days_read = ahead.hot
    else:
        days_read = await clickhouse_days(hot, position, start)
    if known is not None and start > first_day:
        for n in range(day_number(first_day), day_number(start)):
            days_read.rows[n] = known.hot.rows.get(n, 0)
            days_read.sums[n] = known.hot.sums.get(n, 0)
    days = (day_number(first_day), day_number(last_day))
    key = (ice.snapshot_id, wm_name, *days)
    last = _ICEBERG_DAYS.get(ice.target)
    if last is not None and last[0] == key:
        cached = last[1]
    else:
        cached = await anyio.to_thread.run_sync(
            files.day_figures, ice, wm_name, *days, limiter=limiter
        )
        _ICEBERG_DAYS[ice.target] = (key, cached)
    cold, unknown = cached
    if hot.hashed is None or recorded is None:
        result = compare(window, days_read.rows, cold, unknown)
    else:
        result = compare(
            window,
            days_read.rows,
            cold,
            unknown,
            checksums=days_read.sums,
            recorded=recorded,
            columns_key=hot.hashed.key,
        )
    result.waiting, result.oldest_waiting = days_read.waiting, days_read.oldest_waiting
    result.server_now = days_read.server_now
    return result


# Each table's last Iceberg per-day counts with the (snapshot, window) they are for: a
# snapshot never changes, so an idle cycle (no new snapshot) reads no manifest.
_ICEBERG_DAYS: dict[str, tuple[tuple[Any, ...], tuple[dict[int, int], set[int]]]] = {}


def window(
    wm_type: ChType,
    position: Sequence[Any] | None,
    days: int,
    retained_until: dt.date | None = None,
) -> tuple[dt.date, dt.date] | None:
    """The audit window: the committed watermark's day and the `days - 1` before it,
    but no day before `retained_until` (hot_retention dropped those days from ClickHouse:
    they are Iceberg's alone, not drift); None when there is nothing to audit (no commit
    yet, integer watermark, days = 0, every day dropped)."""
    if not position or days <= 0:
        return None
    last = watermark_day(wm_type, position[0])
    if last is None:
        return None
    first = last - dt.timedelta(days=days - 1)
    if retained_until is not None:
        first = max(first, retained_until)
    return (first, last) if first <= last else None


def audited(table: TableConfig, order: Order) -> bool:
    """Whether the table has an audit window (a time or date watermark, audit_days > 0)."""
    return days.kind_of(order[0][1]) != days.VALUE and table.audit_days > 0


def checksummed(
    table: TableConfig, order: Order, columns: Sequence[tuple[str, str]]
) -> RowHash | None:
    """The row hash pages carry for the audit's checksums, or None: checksums are off,
    or the table has no audit window (integer watermark, audit_days = 0)."""
    if not table.audit_checksums or not audited(table, order):
        return None
    return row_hash(columns)


def convert_page(
    page: Page,
    watermark: str | None,
    hashed: RowHash | None,
    summed: dict[int, DaySum] | None = None,
    kind: str = days.MICROS,
) -> tuple[pa.RecordBatch, dict[int, DaySum]]:
    """A page as Arrow, and its rows per day of `watermark` (of days.kind_of `kind`)
    with the sums of their row hashes when the page carries them, or `summed` (what
    `await page.summed()` gave) (worker thread). No days without `watermark`."""
    import pyarrow as pa

    batch = page.to_batch()
    hashes = page.checksums()
    if watermark is None or not batch.num_rows:
        return batch, {}
    if summed is not None:  # ClickHouse summed the page (Page.summed)
        return batch, summed
    if hashed is None or hashes is None:
        hashes, key = pa.nulls(batch.num_rows, pa.uint64()), ""
    else:
        key = hashed.key
    return batch, day_sums(batch.column(watermark), hashes, key, kind)
