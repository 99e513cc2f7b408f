"""`offloader verify`: compare ClickHouse and Iceberg per day, up to the committed watermark.

Per day of the watermark column: the row count and an order-independent checksum,
the sum (mod 2^64) of CRC-32s of each row's canonical text. ClickHouse computes its
side as one server-side aggregate; the Iceberg side is an Arrow scan, batch by
batch, so memory stays bounded by a batch. The canonical text of a value is the
same on both sides by construction (`canonical_sql` and `canonical_of`), containers
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
from offloader.sql.text import keyset_after, quote_ident, quote_string, with_text_settings
from offloader.state import HASH_MODULUS
from offloader.tiers.services import Services
from offloader.types import (
    AS_COUNT,
    AS_TEXT,
    NULL_HOLDERS,
    SHAPES,
    ChType,
    leaf_name,
    nested_as_array,
    parse_type,
)
from offloader.wire import SHARED_LEAVES, TEXT_OR_NULL, ColumnPlan

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_MASK = HASH_MODULUS - 1
NULL = "\\N"
SEP = "\x1f"
INT_BUCKET = 1_000_000  # integer watermarks are grouped in buckets of this many values

ITEM = "\x1e"  # between the elements of an Array or Map
PAIR = "\x1d"  # between a Map's key and value, and between a Tuple's elements
_NESTED = ("Array", "Map", "Tuple")


def _kind(t: ChType) -> str:
    """How a scalar value is written canonically. JSON is stored as ClickHouse's own
    toString text, so it compares as text."""
    base = t.unwrap()
    name = base.name
    if name in ("Float32", "Float64", "BFloat16"):
        return "float"
    if leaf_name(base) in AS_TEXT or leaf_name(base) in ("DateTime64Ticks", "Nothing", *AS_COUNT):
        return "text"  # stored as ClickHouse's own decimal text, or ticks or a count in a long
    if name == "Bool":
        return "bool"
    if name in ("Date", "Date32"):
        return "days"
    if name in NULL_HOLDERS:
        return "nullable_text"
    if name in ("DateTime", "DateTime64"):
        return "micros"
    if name == "Decimal" or name.startswith("Decimal"):
        return "decimal"
    if name == "FixedString":
        return "hex"  # toString(FixedString) drops trailing NUL bytes; hex keeps them
    if name == "String":
        return "bytes"
    return "text"  # ints, UUID, Enum, IPv4/IPv6


def canonical_sql(plan: ColumnPlan) -> str | None:
    """ClickHouse expression giving a column's canonical text, or None if not checksummed."""
    if not _checksummed(plan.ch_type):
        return None
    return _canonical_sql(plan.ch_type, quote_ident(plan.name), 0)


def _checksummed(t: ChType) -> bool:
    base = t.unwrap()
    if base.name in _NESTED and not base.args:
        return False
    return all(_checksummed(a) for a in base.args if isinstance(a, ChType))


def _canonical_sql(t: ChType, expr: str, depth: int) -> str:
    base = nested_as_array(t.unwrap())
    name = base.name
    shape = SHAPES.get(leaf_name(base))
    if shape is not None:  # compared as the structs and lists it is stored as
        return _canonical_sql(parse_type(shape), f"CAST({expr}, '{shape}')", depth)
    if name == "Array":
        v = f"__c{depth}"
        inner = _canonical_sql(base.inner, v, depth + 1)
        text = (
            f"concat(toString(length({expr})), ':', "
            f"arrayStringConcat(arrayMap({v} -> {inner}, {expr}), {quote_string(ITEM)}))"
        )
    elif name == "Map":
        key_t, value_t = (a for a in base.args if isinstance(a, ChType))
        k, v = f"__k{depth}", f"__v{depth}"
        pair = (
            f"concat({_canonical_sql(key_t, k, depth + 1)}, {quote_string(PAIR)}, "
            f"{_canonical_sql(value_t, v, depth + 1)})"
        )
        text = (
            f"concat(toString(length({expr})), ':', arrayStringConcat(arrayMap(({k}, {v}) -> "
            f"{pair}, mapKeys({expr}), mapValues({expr})), {quote_string(ITEM)}))"
        )
    elif name == "Tuple":
        parts = [
            _canonical_sql(a, f"tupleElement({expr}, {i + 1})", depth + 1)
            for i, a in enumerate(x for x in base.args if isinstance(x, ChType))
        ]
        text = f"concat('(', {f', {quote_string(PAIR)}, '.join(parts)}, ')')"
    else:
        text = {
            "float": f"toString(reinterpretAsUInt64(toFloat64({expr})))",
            "bool": f"toString(toUInt8({expr}))",
            "days": f"toString(toInt32({expr}))",
            "micros": f"toString(toUnixTimestamp64Micro(toDateTime64({expr}, 6)))",
            "hex": f"hex({expr})",
            "nullable_text": SHARED_LEAVES.get(name, TEXT_OR_NULL).format(expr),
        }.get(_kind(t), f"toString({expr})")
        if _kind(t) == "text" and leaf_name(base) in SHARED_LEAVES:
            # Stored in a wire form (ticks, counts, text): compare that form's text.
            text = f"toString({SHARED_LEAVES[leaf_name(base)].format(expr)})"
    return f"ifNull({text}, {quote_string(NULL)})" if t.nullable else text


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
    kind = _kind(t)
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


def _bucket_sql(wm: ColumnPlan) -> str:
    q = quote_ident(wm.name)
    name = wm.ch_type.unwrap().name
    if name.startswith("DateTime"):
        # Date32, not Date: Date cannot hold days before 1970 and wraps them.
        return f"toString(toDate32(toTimeZone({q}, 'UTC')))"
    if name in ("Date", "Date32"):
        return f"toString({q})"
    return f"toString(intDiv({q}, {INT_BUCKET}) * {INT_BUCKET})"


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
            ch, src = opened.source, opened.plan
            wm = src.columns[src.order_index[0]]
            if (since or until) and not _by_day(wm):
                raise ConfigError(
                    f"{table.target}: --since/--until are days, and the watermark "
                    f"{wm.name!r} is an integer ({wm.ch_type}); verify it without them"
                )
            # A column added to the source after the first offload holds NULL in Iceberg
            # for the rows offloaded before, and its default in ClickHouse: it is counted
            # but cannot be compared value by value.
            initial = await anyio.to_thread.run_sync(ice.initial_columns) if ice else set()
            late = [p.name for p in src.columns if ice is not None and p.name not in initial]
            sqls = {p.name: canonical_sql(p) for p in src.columns}
            checked = [p for p in src.columns if p.name not in late and sqls[p.name]]
            verdict.excluded = [p.name for p in src.columns if sqls[p.name] is None]
            verdict.excluded += [f"{n} (added after the first offload)" for n in late]
            canon = [str(sqls[p.name]) for p in checked]
            where = ["1"] if mark is None else [f"NOT ({keyset_after(src.order, mark.position)})"]
            bucket = _bucket_sql(wm)
            if since:
                where.append(f"{bucket} >= {quote_string(since)}")
            if until:
                where.append(f"{bucket} < {quote_string(until)}")
            row_text = f"concat({', '.join(_interleave(canon))})" if canon else "''"
            query = with_text_settings(
                f"SELECT {bucket} AS __offloader_day, count(), "
                f"toString(sum(toUInt64(CRC32({row_text})))) "
                f"FROM {opened.relation} "
                f"WHERE {' AND '.join(where) if mark is not None else '0'} "
                "GROUP BY __offloader_day ORDER BY __offloader_day"
            )
            hot: dict[str, Bucket] = {}
            for b, count, total in await ch.rows(query):
                hot[str(b)] = Bucket(int(count), int(total) & _MASK)
            if not hot and mark is not None:
                # Nothing in the range: say which days there are (one small query).
                first, last, count = (
                    await ch.rows(
                        f"SELECT min({bucket}), max({bucket}), count() FROM {opened.relation} "
                        f"WHERE {where[0]}"
                    )
                )[0]
                verdict.table_days = (str(first), str(last)) if int(count) else None
    except TableError as exc:
        verdict.error = str(exc)
        return verdict
    cold = await anyio.to_thread.run_sync(_scan_iceberg, ice, src, checked, since, until)
    days = sorted(set(hot) | set(cold))
    cutoff = retained_until.isoformat() if retained_until and _by_day(wm) else None
    for day in [d for d in days if cutoff is not None and d < cutoff]:
        days.remove(day)
        verdict.retained_days += 1
        if day in hot:
            verdict.differences.append(
                f"{day}: ClickHouse holds {hot[day].rows} rows of a day hot_retention dropped "
                "from it: they arrived after the drop and are not in Iceberg"
            )
    verdict.days = len(days)
    verdict.rows = sum(b.rows for d, b in hot.items() if d in days)
    for day in days:
        s, c = hot.get(day, Bucket()), cold.get(day, Bucket())
        if s.rows != c.rows:
            verdict.differences.append(
                f"{day}: ClickHouse {s.rows} rows, Iceberg {c.rows} rows "
                f"({'missing' if c.rows < s.rows else 'extra'} {abs(s.rows - c.rows)})"
            )
        elif s.checksum != c.checksum:
            verdict.differences.append(
                f"{day}: {s.rows} rows on both sides but values differ (checksum "
                f"{s.checksum:016x} vs {c.checksum:016x})"
            )
    return verdict


def _interleave(exprs: list[str]) -> list[str]:
    out: list[str] = []
    for e in exprs:
        if out:
            out.append(quote_string(SEP))
        out.append(e)
    return out


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
