"""`offloader verify`: compare ClickHouse and Iceberg per day, up to the committed watermark.

Per day of the watermark column: the row count and an order-independent checksum,
the sum (mod 2^64) of CRC-32s of each row's canonical text. ClickHouse computes its
side as one server-side aggregate; the Iceberg side is an Arrow scan, batch by
batch, so memory stays bounded by a batch. The canonical text of a value is the
same on both sides by construction (`sql.verify.canonical_sql` and `canonical_of`), containers
included: an Array or Map is its length and its elements' canonical texts, a Tuple
its elements' texts, built element by element with arrayMap on the server.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from offloader import days, source
from offloader.config import TableConfig
from offloader.errors import ConfigError, TableError
from offloader.report import Verdict
from offloader.source import SourceTable
from offloader.sql.verify import (
    INT_BUCKET,
    ITEM,
    NULL,
    PAIR,
    SEP,
    canonical_sql,
    day_sums_query,
    table_days_query,
    value_kind,
)
from offloader.state import HASH_MODULUS
from offloader.tiers.services import Services
from offloader.types import SHAPES, ChType, leaf_name, nested_as_array, parse_type
from offloader.wire import ColumnPlan

__all__ = [
    "Bucket",
    "Comparison",
    "TableVerdict",
    "canonical_of",
    "canonical_value",
    "compare",
    "row_crc",
    "verify_table",
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_MASK = HASH_MODULUS - 1


def canonical_of(t: ChType) -> Callable[[Any], bytes]:
    """The canonical text of a value of type `t` as read back from Iceberg (to_pylist)."""
    base = nested_as_array(t.unwrap())
    if leaf_name(base) in SHAPES:
        return canonical_of(parse_type(SHAPES[leaf_name(base)]))
    if base.name == "Array":
        elem = canonical_of(base.inner)
        return _nullable(lambda v: _items(len(v), (elem(x) for x in v)))
    if base.name == "Map":
        key_t, value_t = (a for a in base.args if isinstance(a, ChType))
        kf, vf = canonical_of(key_t), canonical_of(value_t)
        # Arrow reads a map back as a list of (key, value) pairs, in the stored order.
        return _nullable(lambda v: _items(len(v), (kf(k) + PAIR.encode() + vf(x) for k, x in v)))
    if base.name == "Tuple":
        fns = [canonical_of(a) for a in base.args if isinstance(a, ChType)]
        sep = PAIR.encode()
        # A Tuple is stored as a struct and read back as a dict in field order.
        return _nullable(
            lambda v: b"(" + sep.join(f(x) for f, x in zip(fns, v.values(), strict=True)) + b")"
        )
    kind = value_kind(t)
    return lambda v: canonical_value(kind, v)


def _items(n: int, parts: Iterable[bytes]) -> bytes:
    return str(n).encode() + b":" + ITEM.encode().join(parts)


def _nullable(fn: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    return lambda v: NULL.encode() if v is None else fn(v)


def canonical_value(kind: str, v: Any) -> bytes:
    """The canonical text of one value as read back from Iceberg (Arrow to_pylist)."""
    if v is None:
        return NULL.encode()
    if kind == "float":
        return str(struct.unpack("<Q", struct.pack("<d", float(v)))[0]).encode()
    if kind == "bool":
        return b"1" if v else b"0"
    if kind == "days":
        return str((v - _EPOCH_DAY).days).encode()
    if kind == "micros":
        delta = v - _EPOCH
        return str(
            (delta.days * days.SECONDS_PER_DAY + delta.seconds) * 1_000_000 + delta.microseconds
        ).encode()
    if kind == "decimal":
        assert isinstance(v, decimal.Decimal)
        return _decimal_text(v).encode()
    if kind == "hex":
        return (v if isinstance(v, bytes) else str(v).encode()).hex().upper().encode()
    if kind == "bytes":
        return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")
    return str(v).encode()


def _decimal_text(v: decimal.Decimal) -> str:
    """ClickHouse's toString of a Decimal: no exponent, no trailing zeros."""
    text = format(v, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def row_crc(parts: Sequence[bytes]) -> int:
    return zlib.crc32(SEP.encode().join(parts))


@dataclass
class Bucket:
    rows: int = 0
    checksum: int = 0


@dataclass
class TableVerdict:
    target: str
    days: int = 0
    rows: int = 0
    differences: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    error: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    # When no day was compared: the table's offloaded days (first, last), if any.
    table_days: tuple[str, str] | None = None
    retained_until: dt.date | None = None  # days before it are Iceberg's alone
    retained_days: int = 0  # such days in the range, not compared (no ClickHouse copy)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.differences

    @property
    def result(self) -> Verdict:
        if self.error:
            return Verdict.ERROR
        if self.differences:
            return Verdict.DIFFERENT
        return Verdict.EQUAL if self.days else Verdict.NOTHING

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "result": self.result,
            "days": self.days,
            "rows": self.rows,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "differences": self.differences,
            "excluded": self.excluded,
            "table_days": list(self.table_days) if self.table_days else None,
            "retained_days": self.retained_days,
            "error": self.error,
        }

    def render(self, limit: int = 10) -> str:
        if self.error:
            return f"{self.target}: ERROR {self.error}"
        if self.result == Verdict.NOTHING:
            where = (
                f"between {self.since or 'the first day'} and "
                f"{self.until or 'the committed watermark'}"
            )
            have = (
                f"the table's offloaded days are {self.table_days[0]} to {self.table_days[1]}"
                if self.table_days
                else "nothing is offloaded yet"
            )
            return f"{self.target}: NOTHING TO COMPARE {where}: {have}"
        head = f"{self.target}: {self.days} days, {self.rows} rows up to the committed watermark"
        note = f" (checksum excludes {', '.join(self.excluded)})" if self.excluded else ""
        if self.retained_days:
            note += (
                f" ({self.retained_days} days before {self.retained_until} are Iceberg's alone: "
                "hot_retention dropped them from ClickHouse)"
            )
        if self.ok:
            return f"{head}: EQUAL{note}"
        lines = [f"{head}: DIFFERENT in {len(self.differences)} days{note}"]
        lines += [f"  {d}" for d in self.differences[:limit]]
        if len(self.differences) > limit:
            lines.append(f"  ... and {len(self.differences) - limit} more")
        return "\n".join(lines)


def _by_day(wm: ColumnPlan) -> bool:
    return wm.ch_type.unwrap().name.startswith(("DateTime", "Date"))


def _bucket_of(wm: ColumnPlan) -> Callable[[Any], str]:
    name = wm.ch_type.unwrap().name
    kind = days.kind_of(wm.ch_type)
    if days.is_ticks(kind):  # stored as its ticks
        return lambda v: (_EPOCH_DAY + dt.timedelta(days=days.day_of(v, kind) or 0)).isoformat()
    if name.startswith("DateTime"):
        return lambda v: v.astimezone(dt.UTC).date().isoformat()
    if name in ("Date", "Date32"):
        return lambda v: v.isoformat()
    return lambda v: str(int(v) // INT_BUCKET * INT_BUCKET)


async def verify_table(
    services: Services,
    table: TableConfig,
    since_day: dt.date | None,
    until_day: dt.date | None,
    retained_until: dt.date | None = None,
) -> TableVerdict:
    """Compare both tiers per day in [since_day, until_day) up to the committed position.
    Days before `retained_until` (dropped from ClickHouse by hot_retention) are Iceberg's
    alone: not compared, and any row ClickHouse holds of them is reported (it arrived
    after the drop, and Iceberg does not have it). Raises ConfigError for days asked of
    an integer watermark (its buckets are not days)."""
    verdict = TableVerdict(
        table.target, since=since_day, until=until_day, retained_until=retained_until
    )
    since = since_day.isoformat() if since_day else None
    until = until_day.isoformat() if until_day else None
    try:
        catalog = await services.open_iceberg()
        ice = await anyio.to_thread.run_sync(catalog.load, table.target, limiter=services.io)
        mark = await anyio.to_thread.run_sync(ice.latest_mark) if ice is not None else None
        async with source.open_table(services.clickhouse, table) as opened:
            src = opened.plan
            wm = src.columns[src.order_index[0]]
            if (since or until) and not _by_day(wm):
                raise ConfigError(
                    f"{table.target}: --since/--until are days, and the watermark "
                    f"{wm.name!r} is an integer ({wm.ch_type}); verify it without them"
                )
            checked = await _checked_columns(ice, src.columns, verdict)
            through = None if mark is None else mark.position
            hot = await _clickhouse_side(opened, checked, through, since, until, verdict)
    except TableError as exc:
        verdict.error = str(exc)
        return verdict
    cold = await anyio.to_thread.run_sync(_scan_iceberg, ice, src, checked, since, until)
    cutoff = retained_until.isoformat() if retained_until and _by_day(wm) else None
    found = compare(hot, cold, cutoff)
    verdict.days, verdict.rows = found.days, found.rows
    verdict.retained_days = found.retained_days
    verdict.differences += found.differences
    return verdict


async def _checked_columns(
    ice: Any, columns: Sequence[ColumnPlan], verdict: TableVerdict
) -> list[ColumnPlan]:
    """The columns whose values are compared; the others are named in `verdict.excluded`.

    A column added to the source after the first offload holds NULL in Iceberg for the
    rows offloaded before, and its default in ClickHouse: it is counted but cannot be
    compared value by value."""
    initial = await anyio.to_thread.run_sync(ice.initial_columns) if ice else set()
    late = [p.name for p in columns if ice is not None and p.name not in initial]
    sqls = {p.name: canonical_sql(p) for p in columns}
    verdict.excluded = [p.name for p in columns if sqls[p.name] is None]
    verdict.excluded += [f"{n} (added after the first offload)" for n in late]
    return [p for p in columns if p.name not in late and sqls[p.name]]


async def _clickhouse_side(
    opened: SourceTable,
    checked: Sequence[ColumnPlan],
    through: Sequence[Any] | None,
    since: str | None,
    until: str | None,
    verdict: TableVerdict,
) -> dict[str, Bucket]:
    """ClickHouse's rows and checksum per day in [since, until) up to the committed
    position `through`; when there is none, the table's days in `verdict.table_days`."""
    ch, order = opened.source, opened.plan.order
    canonical = [str(canonical_sql(p)) for p in checked]
    query = day_sums_query(opened.relation, order, through, canonical, since, until)
    hot: dict[str, Bucket] = {}
    for b, count, total in await ch.rows(query):
        hot[str(b)] = Bucket(int(count), int(total) & _MASK)
    if not hot and through is not None:
        # Nothing in the range: say which days there are (one small query).
        first, last, count = (await ch.rows(table_days_query(opened.relation, order, through)))[0]
        verdict.table_days = (str(first), str(last)) if int(count) else None
    return hot


@dataclass
class Comparison:
    """What comparing both tiers' buckets found: the days compared, ClickHouse's rows in
    them, the differences (in day order, those of retained days first) and how many
    retained days were left out."""

    days: int = 0
    rows: int = 0
    differences: list[str] = field(default_factory=list)
    retained_days: int = 0


def compare(hot: dict[str, Bucket], cold: dict[str, Bucket], cutoff: str | None) -> Comparison:
    """Compare ClickHouse's buckets (`hot`) with Iceberg's (`cold`). Days before
    `cutoff` (hot_retention dropped them from ClickHouse) are not compared: any row
    ClickHouse holds of them is a difference. Pure."""
    found = Comparison()
    days = sorted(set(hot) | set(cold))
    for day in [d for d in days if cutoff is not None and d < cutoff]:
        days.remove(day)
        found.retained_days += 1
        if day in hot:
            found.differences.append(
                f"{day}: ClickHouse holds {hot[day].rows} rows of a day hot_retention dropped "
                "from it: they arrived after the drop and are not in Iceberg"
            )
    found.days = len(days)
    found.rows = sum(b.rows for d, b in hot.items() if d in days)
    for day in days:
        s, c = hot.get(day, Bucket()), cold.get(day, Bucket())
        if s.rows != c.rows:
            found.differences.append(
                f"{day}: ClickHouse {s.rows} rows, Iceberg {c.rows} rows "
                f"({'missing' if c.rows < s.rows else 'extra'} {abs(s.rows - c.rows)})"
            )
        elif s.checksum != c.checksum:
            found.differences.append(
                f"{day}: {s.rows} rows on both sides but values differ (checksum "
                f"{s.checksum:016x} vs {c.checksum:016x})"
            )
    return found


def _scan_iceberg(
    ice: Any,
    src: Any,
    checked: list[ColumnPlan],
    since: str | None,
    until: str | None,
) -> dict[str, Bucket]:
    buckets: dict[str, Bucket] = {}
    if ice is None:
        return buckets
    wm = src.columns[src.order_index[0]]
    bucket_of = _bucket_of(wm)
    used = [(p.name, canonical_of(p.ch_type)) for p in checked]
    for batch in ice.read_batches():
        names = set(batch.schema.names)
        wm_values = batch.column(wm.name).to_pylist()
        columns = [
            (canon, batch.column(name).to_pylist() if name in names else [None] * batch.num_rows)
            for name, canon in used
        ]
        for i, w in enumerate(wm_values):
            b = bucket_of(w)
            if (since and b < since) or (until and b >= until):
                continue
            parts = [canon(values[i]) for canon, values in columns]
            entry = buckets.setdefault(b, Bucket())
            entry.rows += 1
            entry.checksum = (entry.checksum + row_crc(parts)) & _MASK
    return buckets
