"""The cursor codec: how a keyset position (watermark, keys...) is written and read.

One place for it: the pipeline encodes the last row of a page with `encode_value`,
PostgreSQL and the Iceberg commit marker store `dumps(position)`, `loads` reads
either back, and sql.text.literal turns an encoded value into a SQL literal again.
Encoded values round-trip exactly (no float, no time zone drift, no lost bytes).
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from offloader.days import kind_of, ticks_precision
from offloader.types import INT64_MAX

if TYPE_CHECKING:
    from offloader.types import ChType

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, order=True, slots=True)
class Ticks:
    """A DateTime64(7..9) value: `count` 10^-`precision` seconds since 1970 UTC, as
    Iceberg stores it (a datetime holds only microseconds). Its cursor form is the count."""

    count: int
    precision: int

    def datetime(self) -> dt.datetime:
        """The value rounded down to a microsecond."""
        return from_micros(self.count // 10 ** (self.precision - 6))

    def __str__(self) -> str:
        return ticks_text(self.count, self.precision)


def ticks_text(count: int, precision: int) -> str:
    """A DateTime64(precision) value of `count` ticks as ClickHouse's exact text, UTC
    ("2026-01-02 03:04:05.123456789"); before 1970 too."""
    seconds, fraction = divmod(int(count), 10**precision)
    whole = EPOCH + dt.timedelta(seconds=seconds)
    return f"{whole:%Y-%m-%d %H:%M:%S}.{fraction:0{precision}d}"


def as_datetime(v: Any) -> Any:
    """`v` with a Ticks value as its (microsecond) datetime, for telling ages and days."""
    return v.datetime() if isinstance(v, Ticks) else v


def encode_value(v: Any) -> Any:
    """A cursor value as JSON that round-trips exactly (see sql.text.literal).

    Strings that JSON or PostgreSQL's jsonb cannot carry as text (invalid UTF-8, NUL
    bytes, e.g. FixedString padding) become {"hex": "..."} of their bytes.
    """
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, Ticks):
        return v.count
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if -INT64_MAX - 1 <= v <= INT64_MAX else str(v)
    if isinstance(v, decimal.Decimal | uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(v)
    if isinstance(v, bytes):
        try:
            text = v.decode("utf-8")
        except UnicodeDecodeError:
            return {"hex": v.hex()}
        return {"hex": v.hex()} if "\0" in text else text
    if isinstance(v, str):
        return {"hex": v.encode().hex()} if "\0" in v else v
    raise TypeError(f"cannot use {type(v).__name__} value {v!r} in a watermark")


def dumps(position: Sequence[Any]) -> str:
    """A position of encoded values as the JSON text PostgreSQL and Iceberg store."""
    return orjson.dumps(list(position)).decode()


def loads(value: Any) -> tuple[Any, ...] | None:
    """A stored position (JSON text, or what asyncpg returns for jsonb) as a tuple."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return tuple(value)


def from_micros(v: Any) -> dt.datetime:
    """A UTC datetime from integer microseconds since the epoch."""
    return EPOCH + dt.timedelta(microseconds=int(v))


def watermark_from_int(t: ChType, v: Any) -> Any:
    """The watermark value of type `t` from its integer form (sql.text.watermark_int)."""
    precision = ticks_precision(kind_of(t))
    if precision is not None:
        return Ticks(int(v), precision)
    name = t.unwrap().name
    if name in ("DateTime", "DateTime64"):
        return from_micros(v)
    if name in ("Date", "Date32"):
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(v))
    return int(v)
