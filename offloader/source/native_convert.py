"""The native transport's conversion: columns of Python values (as asynch returns
them for the wire forms of wire.wire_plan) -> Arrow.

Pure and CPU-bound: the pipeline runs it in a worker thread. Values that cannot
be stored exactly raise DataError naming the table, the column and the value;
nothing is silently altered.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.cursor import EPOCH, from_micros
from offloader.errors import DataError
from offloader.types import ChType, nested_as_array
from offloader.wire import ColumnPlan, prep_kind, uint64_hint


def wire_width(plans: Sequence[ColumnPlan]) -> int:
    return sum(len(p.select) for p in plans)


def to_record_batch(
    table: str, plans: Sequence[ColumnPlan], columns: Sequence[Sequence[Any]]
) -> pa.RecordBatch:
    """Build one RecordBatch from a page's wire columns (see wire.wire_plan)."""
    if len(columns) != wire_width(plans):
        raise DataError(
            f"{table}: page has {len(columns)} columns, expected {wire_width(plans)} "
            f"({', '.join(p.name for p in plans)})"
        )
    arrays = []
    i = 0
    for plan in plans:
        width = len(plan.select)
        arrays.append(_column(table, plan, columns[i : i + width]))
        i += width
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([p.field for p in plans]))


def _column(table: str, plan: ColumnPlan, wire: Sequence[Sequence[Any]]) -> pa.Array:
    if plan.wire != "plain":
        return _from_wire(plan, wire)
    values = wire[0]
    prepare = _preparer(plan.ch_type, plan.prep)
    data: Sequence[Any] = values if prepare is None else [prepare(v) for v in values]
    try:
        storage = _storage_type(plan.arrow)
        if storage != plan.arrow and not isinstance(plan.arrow, pa.BaseExtensionType):
            # pyarrow cannot build nested extension values (UUID in a Tuple) from Python
            # objects; build them as their storage type and cast.
            return pa.array(data, type=storage, from_pandas=False).cast(plan.arrow)
        return pa.array(data, type=plan.arrow, from_pandas=False)
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        bad = _first_bad_value(data, plan)
        shown = f" value {bad!r}" if bad is not None else ""
        raise DataError(
            f"{table}: column {plan.name!r} ({plan.ch_type}):{shown} cannot be stored as "
            f"{plan.arrow}: {exc}{uint64_hint(plan)}"
        ) from None


def _from_wire(plan: ColumnPlan, wire: Sequence[Sequence[Any]]) -> pa.Array:
    """Columnar rebuild of values the server sent as integers (no per-value Python work
    beyond the driver's own)."""
    kind = plan.wire
    if kind == "ts_us":
        return pa.array(wire[0], pa.int64()).cast(plan.arrow)
    if kind == "ts_s":
        seconds = pa.array(wire[0], pa.int64())
        return pc.multiply(seconds, pa.scalar(1_000_000, pa.int64())).cast(plan.arrow)
    if kind == "days":
        return pa.array(wire[0], pa.int32()).cast(pa.date32())
    n = len(wire[0])
    if kind == "dec_small":
        low = pa.array(wire[0], pa.int64())
        # Sign extension: 0 or -1. (pc.shift_right by 63 is a no-op on int64 in pyarrow.)
        high = pc.if_else(
            pc.less(low, pa.scalar(0, pa.int64())),
            pa.scalar(-1, pa.int64()),
            pa.scalar(0, pa.int64()),
        )
        return _decimal128(plan.arrow, n, low, high)
    if kind == "dec128":
        low = pa.array(wire[0], pa.uint64())
        high = pa.array(wire[1], pa.int64())
        return _decimal128(plan.arrow, n, low, high)
    raise AssertionError(f"unknown wire kind {kind}")


def _decimal128(t: pa.DataType, n: int, low: pa.Array, high: pa.Array) -> pa.Array:
    """decimal128 values from their low and high 64-bit halves (little-endian words)."""
    words = array("Q", bytes(16 * n))
    words[0::2] = _u64(low)
    words[1::2] = _u64(high)
    return pa.Array.from_buffers(t, n, [None, pa.py_buffer(words)])


def _u64(a: pa.Array) -> array[int]:
    out = array("Q")
    out.frombytes(memoryview(a.buffers()[1])[a.offset * 8 : (a.offset + len(a)) * 8])
    return out


def cursor_value(plan: ColumnPlan, wire: Sequence[Any]) -> Any:
    """The Python value of one row of a watermark or key column, from its wire form."""
    kind = plan.wire
    if kind == "plain":
        return wire[0]
    if kind == "ts_us":
        return EPOCH + dt.timedelta(microseconds=int(wire[0]))
    if kind == "ts_s":
        return EPOCH + dt.timedelta(seconds=int(wire[0]))
    if kind == "days":
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(wire[0]))
    if kind == "dec_small":
        return decimal.Decimal(int(wire[0])).scaleb(-plan.scale, _EXACT)
    unscaled = (int(wire[1]) << 64) | int(wire[0])
    return decimal.Decimal(unscaled).scaleb(-plan.scale, _EXACT)


# Decimal arithmetic rounds to 28 digits by default; Decimal(38, S) needs all 38.
_EXACT = decimal.Context(prec=80)


def _storage_type(t: pa.DataType) -> pa.DataType:
    """`t` with every extension type replaced by its storage type."""
    if isinstance(t, pa.BaseExtensionType):
        return t.storage_type
    if pa.types.is_map(t):
        return pa.map_(
            t.key_field.with_type(_storage_type(t.key_type)),
            t.item_field.with_type(_storage_type(t.item_type)),
        )
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_storage_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_storage_type(f.type)) for f in t])
    return t


def _first_bad_value(values: Sequence[Any], plan: ColumnPlan) -> Any:
    for v in values:
        if v is None:
            continue
        try:
            pa.array([v], type=plan.arrow)
        except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
            return v
    return None


def _preparer(t: ChType, prep: str) -> Callable[[Any], Any] | None:
    """A per-value function turning driver values into what pa.array() takes, or None."""
    if prep == "none":
        return None
    base = t.unwrap()
    if prep == "str":
        return _nullsafe(ip_text)
    if prep == "uuid":
        return _nullsafe(_uuid_bytes)
    if prep == "micros":
        return _nullsafe(from_micros)
    if prep == "decimal_int":
        return _nullsafe(decimal.Decimal)
    if prep == "bytes":
        return _nullsafe(_to_bytes)
    if prep == "nested":
        return _nullsafe(_nested(base))
    raise AssertionError(f"unknown prep {prep}")


def ip_text(v: Any) -> str:
    """An IP address in ClickHouse's text form, which the arrow transport reads.

    Python writes IPv4-mapped and IPv4-compatible IPv6 addresses in hex groups
    (`::ffff:102:304`); ClickHouse writes their last 32 bits dotted (`::ffff:1.2.3.4`).
    """
    if isinstance(v, ipaddress.IPv6Address):
        packed = v.packed
        if packed[:10] == bytes(10) and (
            packed[10:12] == b"\xff\xff" or (packed[10:12] == b"\0\0" and packed[12:14] != b"\0\0")
        ):
            return f"::{'ffff:' if packed[10] else ''}{ipaddress.IPv4Address(packed[12:])}"
    return str(v)


def _nullsafe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(v: Any) -> Any:
        return None if v is None else fn(v)

    return wrapped


def _uuid_bytes(v: Any) -> bytes:
    if isinstance(v, uuid.UUID):
        return v.bytes
    return uuid.UUID(str(v)).bytes


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode("utf-8", "surrogateescape")


def _element_fn(t: ChType) -> Callable[[Any], Any]:
    kind = prep_kind(t)
    fn = _preparer(t, kind)
    return fn if fn is not None else _identity


def _identity(v: Any) -> Any:
    return v


def _nested(base: ChType) -> Callable[[Any], Any]:
    base = nested_as_array(base)
    if base.name == "Array":
        elem = _element_fn(base.inner)
        return lambda v: [elem(x) for x in v]
    if base.name == "Map":
        key_t, val_t = base.args
        assert isinstance(key_t, ChType) and isinstance(val_t, ChType)
        kf, vf = _element_fn(key_t), _element_fn(val_t)
        return lambda v: [(kf(k), vf(x)) for k, x in v.items()]
    if base.name == "Tuple":
        fns = [_element_fn(a) for a in base.args if isinstance(a, ChType)]
        return lambda v: tuple(f(x) for f, x in zip(fns, v, strict=True))
    return _identity
