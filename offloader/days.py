"""The UTC day of a watermark value, whatever unit its column counts in. Pure.

A watermark column is stored in Iceberg in one of these units (its *kind*):

- "micros": DateTime and DateTime64(0..6), a timestamptz (microseconds since 1970);
- "ticks7".."ticks9": DateTime64(7..9), a long of 10^-P seconds since 1970, the unit
  written in the column's doc (Iceberg's timestamptz holds only microseconds);
- "days": Date and Date32, a date (days since 1970);
- "value": integers, which have no days.

The audit, verify, repair and compaction count rows per day in that unit.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from offloader.types import ChType, time_precision

if TYPE_CHECKING:
    import pyarrow as pa

SECONDS_PER_DAY = 86_400

# The kinds (above): these three, or ticks_kind(P) for DateTime64(P), P = 7..9.
MICROS = "micros"
DAYS = "days"
VALUE = "value"
_TICKS = "ticks"


def ticks_kind(precision: int) -> str:
    """The kind of a DateTime64(precision) column stored as ticks (precision > 6)."""
    return f"{_TICKS}{precision}"


def is_ticks(kind: str) -> bool:
    return kind.startswith(_TICKS)


_TICKS_DOC = re.compile(r"^ticks of 10\^-([0-9]) seconds since 1970-01-01 00:00:00 UTC")


def ticks_doc(precision: int, t: ChType) -> str:
    """The Iceberg column doc of a DateTime64(7..9) column (read back by kind_of_field)."""
    return f"ticks of 10^-{precision} seconds since 1970-01-01 00:00:00 UTC (ClickHouse {t})"


def kind_of(t: ChType) -> str:
    """The kind of a watermark column of ClickHouse type `t`."""
    base = t.unwrap()
    if base.name == "DateTime64":
        precision = time_precision(base)
        return ticks_kind(precision) if precision > 6 else MICROS
    if base.name == "DateTime":
        return MICROS
    if base.name in ("Date", "Date32"):
        return DAYS
    return VALUE


def kind_of_field(iceberg_type: str, doc: str | None) -> str:
    """The kind of an Iceberg watermark column, from its type ("timestamptz", "date",
    "long", ...) and doc."""
    if iceberg_type in ("timestamp", "timestamptz"):
        return MICROS
    if iceberg_type == "date":
        return DAYS
    match = _TICKS_DOC.match(doc or "")
    if iceberg_type == "long" and match:
        return ticks_kind(int(match.group(1)))
    return VALUE


def ticks_precision(kind: str) -> int | None:
    """P of a "ticksP" kind (DateTime64(P), P > 6); None for the other kinds."""
    return int(kind[len(_TICKS) :]) if is_ticks(kind) else None


def per_second(kind: str) -> int | None:
    """Units per second: 10^6 for micros, 10^P for ticks; None for days and values."""
    if kind == MICROS:
        return 1_000_000
    precision = ticks_precision(kind)
    return None if precision is None else int(10**precision)


def per_day(kind: str) -> int | None:
    """Units per UTC day; None for integer watermarks."""
    if kind == DAYS:
        return 1
    second = per_second(kind)
    return None if second is None else second * SECONDS_PER_DAY


def day_of(value: Any, kind: str) -> int | None:
    """The UTC day (days since 1970) of a stored watermark value (an int in the kind's
    unit), None for integer watermarks. Days before 1970 round down."""
    unit = per_day(kind)
    if value is None or unit is None:
        return None
    return int(value) // unit


def day_numbers(values: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """The UTC day (int32 days since 1970) of each watermark value of a column of `kind`
    (a timestamp, date or int64 column), rounding down before 1970."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return values.cast(pa.date32()).cast(pa.int32())
    unit = per_day(kind)
    if unit is None:
        raise ValueError(f"no UTC days in a watermark of kind {kind!r}")
    ticks = values.cast(pa.int64())
    quotient = pc.divide(ticks, pa.scalar(unit, pa.int64()))  # truncates toward zero
    over = pc.greater(pc.multiply(quotient, pa.scalar(unit, pa.int64())), ticks)
    return pc.subtract(quotient, over.cast(pa.int64())).cast(pa.int32())


# --- UTC days as dates (the audit, verify, repair, retention) -----------------------

EPOCH = dt.date(1970, 1, 1)


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_of_number(n: int) -> dt.date:
    return EPOCH + dt.timedelta(days=n)


def watermark_day(wm_type: ChType, encoded: Any) -> dt.date | None:
    """The UTC day of an encoded watermark value; None for integer watermarks (no days
    to audit)."""
    kind = kind_of(wm_type)
    if is_ticks(kind):
        n = day_of(encoded, kind)
        return None if n is None else day_of_number(n)
    if kind in (MICROS, DAYS):
        return dt.date.fromisoformat(str(encoded)[:10])
    return None


def day_start(wm_type: ChType, day: dt.date) -> Any:
    """The first watermark value of `day`, encoded as cursor.encode_value would."""
    kind = kind_of(wm_type)
    if kind == DAYS:
        return day.isoformat()
    unit = per_day(kind)
    if is_ticks(kind) and unit is not None:
        return day_number(day) * unit
    return f"{day.isoformat()} 00:00:00.000000"
