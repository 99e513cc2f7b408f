"""ClickHouse SQL of `offloader verify`: each row's canonical text (the same text the
Iceberg side builds in Python, ops.verify.canonical_of), its day bucket, and the
per-day row counts and checksums up to the committed position. Pure: no driver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offloader.sql.text import keyset_after, quote_ident, quote_string, with_text_settings
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

NULL = "\\N"
SEP = "\x1f"  # between the columns of a row
ITEM = "\x1e"  # between the elements of an Array or Map
PAIR = "\x1d"  # between a Map's key and value, and between a Tuple's elements
INT_BUCKET = 1_000_000  # integer watermarks are grouped in buckets of this many values
DAY_ALIAS = "__offloader_day"
_NESTED = ("Array", "Map", "Tuple")


def value_kind(t: ChType) -> str:
    """How a scalar value is written canonically (on both sides). JSON is stored as
    ClickHouse's own toString text, so it compares as text."""
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
        text = _scalar_sql(t, base, expr)
    return f"ifNull({text}, {quote_string(NULL)})" if t.nullable else text


def _scalar_sql(t: ChType, base: ChType, expr: str) -> str:
    kind = value_kind(t)
    if kind == "text" and leaf_name(base) in SHARED_LEAVES:
        # Stored in a wire form (ticks, counts, text): compare that form's text.
        return f"toString({SHARED_LEAVES[leaf_name(base)].format(expr)})"
    return {
        "float": f"toString(reinterpretAsUInt64(toFloat64({expr})))",
        "bool": f"toString(toUInt8({expr}))",
        "days": f"toString(toInt32({expr}))",
        "micros": f"toString(toUnixTimestamp64Micro(toDateTime64({expr}, 6)))",
        "hex": f"hex({expr})",
        "nullable_text": SHARED_LEAVES.get(base.name, TEXT_OR_NULL).format(expr),
    }.get(kind, f"toString({expr})")


def bucket_sql(wm_name: str, wm_type: ChType) -> str:
    """The bucket of a row, as text: the UTC day of a time or date watermark, the
    multiple of INT_BUCKET at or below an integer one."""
    q = quote_ident(wm_name)
    name = wm_type.unwrap().name
    if name.startswith("DateTime"):
        # Date32, not Date: Date cannot hold days before 1970 and wraps them.
        return f"toString(toDate32(toTimeZone({q}, 'UTC')))"
    if name in ("Date", "Date32"):
        return f"toString({q})"
    return f"toString(intDiv({q}, {INT_BUCKET}) * {INT_BUCKET})"


def row_text_sql(canonical: Sequence[str]) -> str:
    """A row's canonical text: its columns' canonical texts (canonical_sql) joined by SEP."""
    if not canonical:
        return "''"
    parts: list[str] = []
    for expr in canonical:
        if parts:
            parts.append(quote_string(SEP))
        parts.append(expr)
    return f"concat({', '.join(parts)})"


def day_sums_query(
    relation: str,
    order: Sequence[tuple[str, ChType]],
    through: Sequence[Any] | None,
    canonical: Sequence[str],
    since: str | None = None,
    until: str | None = None,
) -> str:
    """Per bucket (bucket_sql) in [since, until) of the rows up to and including the
    committed position `through` (None: nothing is committed, no row): the bucket, the
    rows and the sum of the CRC-32s of their canonical texts (row_text_sql), as text."""
    bucket = bucket_sql(*order[0])
    where = ["1"] if through is None else [f"NOT ({keyset_after(order, through)})"]
    if since:
        where.append(f"{bucket} >= {quote_string(since)}")
    if until:
        where.append(f"{bucket} < {quote_string(until)}")
    return with_text_settings(
        f"SELECT {bucket} AS {DAY_ALIAS}, count(), "
        f"toString(sum(toUInt64(CRC32({row_text_sql(canonical)})))) "
        f"FROM {relation} "
        f"WHERE {' AND '.join(where) if through is not None else '0'} "
        f"GROUP BY {DAY_ALIAS} ORDER BY {DAY_ALIAS}"
    )


def table_days_query(
    relation: str, order: Sequence[tuple[str, ChType]], through: Sequence[Any]
) -> str:
    """The first and last bucket (bucket_sql) of the rows up to and including the
    committed position `through`, and how many rows that is."""
    bucket = bucket_sql(*order[0])
    return (
        f"SELECT min({bucket}), max({bucket}), count() FROM {relation} "
        f"WHERE NOT ({keyset_after(order, through)})"
    )
