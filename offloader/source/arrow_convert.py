"""The arrow transport's conversion: an ArrowStream body -> a RecordBatch of wire forms
(arrow.arrow_wire_expr) -> offloader's schema, column-wise casts and rebuilds only.

Strings are validated as UTF-8 here (ClickHouse is asked for binary), so an invalid
value fails the table naming the column.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.cursor import from_micros
from offloader.errors import DataError, SourceUnavailable
from offloader.types import leaf_name
from offloader.wire import ColumnPlan, uint64_hint


def read_stream(body: bytes, where: str) -> pa.RecordBatch:
    """One RecordBatch from a complete ArrowStream body."""
    try:
        table = pa.ipc.open_stream(body).read_all()
    except pa.ArrowInvalid as exc:
        raise SourceUnavailable(f"{where}: corrupt ArrowStream: {exc}") from exc
    batches = table.combine_chunks().to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def split_last(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.Array]:
    """A page's columns without its last one (the row hash), and that one as uint64."""
    n = batch.num_columns - 1
    hashes = batch.column(n).cast(pa.uint64())
    return pa.RecordBatch.from_arrays(batch.columns[:n], names=batch.schema.names[:n]), hashes


def conform_batch(table: str, plans: Sequence[ColumnPlan], wire: pa.RecordBatch) -> pa.RecordBatch:
    """A page read as Arrow (wire forms of arrow_wire_expr) -> offloader's schema.

    Column-wise casts and rebuilds only; strings are validated as UTF-8 here (ClickHouse
    is asked for binary), so an invalid value fails the table naming the column.
    """
    if wire.num_columns != len(plans):
        raise DataError(
            f"{table}: Arrow page has {wire.num_columns} columns, expected {len(plans)}"
        )
    arrays = []
    for i, plan in enumerate(plans):
        try:
            arrays.append(conform(wire.column(i), plan.arrow))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            problem = _arrow_problem(wire.column(i), plan, exc)
            raise DataError(f"{table}: column {plan.name!r} ({plan.ch_type}): {problem}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([p.field for p in plans]))


def _arrow_problem(arr: pa.Array, plan: ColumnPlan, exc: Exception) -> str:
    if plan.ch_type.unwrap().name == "UInt64" and pa.types.is_unsigned_integer(arr.type):
        top = pc.max(arr).as_py()
        return (
            f'value {top} cannot be stored as {plan.arrow}; set uint64 = "decimal" on this '
            "table to store UInt64 as decimal(20,0)"
        )
    if "utf8" in str(exc).lower() or "utf-8" in str(exc).lower():
        bad = next((v for v in arr.to_pylist() if isinstance(v, bytes) and not _is_utf8(v)), b"")
        return (
            f"a String value is not valid UTF-8 (e.g. hex {bad.hex().upper()[:40]}); set "
            'strings = "binary" on this table to store String columns as Iceberg binary'
        )
    return f"cannot be stored as {plan.arrow}: {exc}{uint64_hint(plan)}"


def _is_utf8(v: bytes) -> bool:
    try:
        v.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def conform(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Rebuild `arr` as `target`, recursing into lists, maps and structs by position."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(target, pa.BaseExtensionType):  # UUID: 16 bytes in standard order
        storage = arr if arr.type == target.storage_type else arr.cast(target.storage_type)
        return pa.ExtensionArray.from_storage(target, storage)
    if pa.types.is_map(target):
        assert isinstance(arr, pa.MapArray)
        return pa.MapArray.from_arrays(
            arr.offsets,
            conform(arr.keys, target.key_type),
            conform(arr.items, target.item_type),
            type=target,
            mask=arr.is_null() if arr.null_count else None,
        )
    if pa.types.is_list(target):
        assert isinstance(arr, pa.ListArray)
        return pa.ListArray.from_arrays(
            arr.offsets,
            conform(arr.values, target.value_type),
            type=target,
            mask=arr.is_null() if arr.null_count else None,
        )
    if pa.types.is_struct(target):
        assert isinstance(arr, pa.StructArray)
        children = [conform(arr.field(i), target.field(i).type) for i in range(target.num_fields)]
        return pa.StructArray.from_arrays(
            children, fields=list(target), mask=arr.is_null() if arr.null_count else None
        )
    if arr.type == target:
        return arr
    if pa.types.is_timestamp(target) and pa.types.is_integer(arr.type):
        return arr.cast(pa.int64()).cast(target)
    if pa.types.is_date32(target) and pa.types.is_integer(arr.type):
        return arr.cast(pa.int32()).cast(target)
    if pa.types.is_string(target) and pa.types.is_fixed_size_binary(arr.type):
        arr = arr.cast(pa.binary())
    return arr.cast(target, safe=True)


def arrow_cursor(plan: ColumnPlan, value: Any) -> Any:
    """The Python value of a watermark or key column read from an Arrow wire page."""
    name = plan.ch_type.unwrap().name
    if leaf_name(plan.ch_type) == "DateTime64Ticks":
        return int(value)  # its ticks, as stored
    if name in ("DateTime", "DateTime64"):
        return from_micros(value)
    if name in ("Date", "Date32"):
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(value))
    if name == "UUID":
        return uuid.UUID(bytes=bytes(value))
    if isinstance(value, bytes) and plan.arrow == pa.string():
        return value.decode("utf-8")
    return value
