"""ClickHouse SQL's pieces: quoting, typed literals, keyset predicates, row hashes.

Cursor values are rendered as typed literals rather than passed as driver
parameters: asynch formats a `datetime` parameter without microseconds, which
would make a DateTime64 keyset re-read the same rows forever.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from offloader.cursor import ticks_text
from offloader.pinned import TEXT_SETTINGS
from offloader.types import ChType, leaf_name, quote_ident, time_precision

__all__ = ["keyset_after", "literal", "qualified", "quote_ident", "quote_string"]


def with_text_settings(query: str) -> str:
    return f"{query} SETTINGS {', '.join(TEXT_SETTINGS)}"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def qualified(database: str, table: str) -> str:
    return f"{quote_ident(database)}.{quote_ident(table)}"


def read_from(database: str, table: str, final: bool) -> str:
    """The FROM target of every query reading a table's rows: with FINAL for tables
    configured `final = true`, so all of offloader sees the rows as ClickHouse shows them."""
    return f"{qualified(database, table)} FINAL" if final else qualified(database, table)


def literal(t: ChType, encoded: Any) -> str:
    """A SQL literal of ClickHouse type `t` for a value produced by cursor.encode_value."""
    base = t.unwrap()
    name = base.name
    if name == "DateTime64":
        precision = time_precision(base)
        if precision > 6 and not isinstance(encoded, str):  # ticks (cursor.Ticks)
            encoded = ticks_text(int(encoded), precision)
        return f"toDateTime64({quote_string(str(encoded))}, {precision}, 'UTC')"
    if name == "DateTime":
        text = str(encoded).split(".")[0]
        return f"toDateTime({quote_string(text)}, 'UTC')"
    if name in ("Date", "Date32"):
        return f"to{name}({quote_string(str(encoded))})"
    if name == "UUID":
        return f"toUUID({quote_string(str(encoded))})"
    if name.startswith(("Int", "UInt")):
        value = int(encoded)
        return str(value)
    if name.startswith("Decimal"):
        return f"toDecimal256({quote_string(str(encoded))}, {_decimal_scale(base)})"
    if name in ("String", "FixedString"):
        if isinstance(encoded, dict):  # bytes that are not plain text, see encode_value
            return f"unhex({quote_string(bytes.fromhex(encoded['hex']).hex())})"
        return quote_string(str(encoded))
    raise ValueError(f"cannot render a literal of ClickHouse type {t}")


def watermark_int(t: ChType, expr: str) -> str:
    """A watermark value as an integer (microseconds since 1970 for times, ticks for
    DateTime64(7..9), days for dates): read the same over every transport, whatever
    the server's output settings (cursor.watermark_from_int turns it back)."""
    name = t.unwrap().name
    if leaf_name(t) == "DateTime64Ticks":
        return f"reinterpretAsInt64({expr})"
    if name in ("DateTime", "DateTime64"):
        return f"toUnixTimestamp64Micro(toDateTime64({expr}, 6, 'UTC'))"
    if name in ("Date", "Date32"):
        return f"toInt32({expr})"
    return expr


NOW_MICROS = "toUnixTimestamp64Micro(now64(6, 'UTC'))"


def _decimal_scale(t: ChType) -> int:
    if t.name == "Decimal":
        return int(str(t.args[1])) if len(t.args) > 1 else 0
    return int(str(t.args[0]))


def keyset_after(columns: Sequence[tuple[str, ChType]], position: Sequence[Any]) -> str:
    """`(c1, c2, ...) > (v1, v2, ...)` expanded so every server version accepts it
    and the leading column stays usable by the primary key: c1 >= v1 AND (c1 > v1 OR ...)."""
    assert len(columns) == len(position) and columns
    lits = [literal(t, v) for (_, t), v in zip(columns, position, strict=True)]
    names = [quote_ident(c) for c, _ in columns]

    def rest(i: int) -> str:
        if i == len(names) - 1:
            return f"{names[i]} > {lits[i]}"
        return f"{names[i]} > {lits[i]} OR ({names[i]} = {lits[i]} AND ({rest(i + 1)}))"

    return f"{names[0]} >= {lits[0]} AND ({rest(0)})"


def day_expr(wm_name: str, wm_type: ChType) -> str:
    """The UTC day of a watermark value as days since 1970 (Int32)."""
    q = quote_ident(wm_name)
    if wm_type.unwrap().name in ("Date", "Date32"):
        return f"toInt32({q})"
    return f"toInt32(toDate({q}, 'UTC'))"


@dataclass(frozen=True, slots=True)
class RowHash:
    """A 64-bit hash of a whole row, computed by ClickHouse: pages carry it so each
    commit records per-day sums, and the audit sums it again to find rows whose values
    changed in place. `key` names the columns (and types) it covers: sums are compared
    only when they cover the same columns."""

    expr: str
    key: str


def row_hash(columns: Sequence[tuple[str, str]]) -> RowHash:
    """The row hash over (name, type) columns. A tuple, because cityHash64 of several
    arguments is NULL when any of them is; a tuple hashes NULL apart from 0 and ''."""
    expr = f"cityHash64(tuple({', '.join(quote_ident(name) for name, _ in columns)}))"
    text = ";".join(f"{name} {type_}" for name, type_ in columns)
    return RowHash(expr, hashlib.sha1(text.encode()).hexdigest()[:16])
