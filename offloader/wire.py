"""How each column travels in the page queries, and the plan of a column.

The native driver builds a Python object per value, and datetime, Decimal and Enum
objects are several times slower to build than ints and strs, so the native page query
asks the server for cheap integers that conversion rebuilds column-wise (`Wire`); the
arrow transport asks for forms whose Arrow types conform to offloader's
(source/arrow.py's leaves). Containers are rewritten element by element with
arrayMap / mapApply / tuple (`rewrite_leaves`). Pure: no server, no driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from offloader.days import ticks_doc
from offloader.errors import SourceSchemaError
from offloader.types import (
    AS_COUNT,
    AS_TEXT,
    DECIMAL_WIDTH,
    INTERVALS,
    NULL_HOLDERS,
    SHAPES,
    ChType,
    StringMode,
    UInt64Mode,
    Unmappable,
    arrow_type,
    decimal_precision,
    leaf_name,
    nested_as_array,
    parse_type,
    quote_ident,
    time_precision,
)

if TYPE_CHECKING:
    import pyarrow as pa


# Kinds of per-value work conversion must do before Arrow can take the values.
Prep = Literal["none", "str", "uuid", "decimal_int", "bytes", "micros", "nested"]


# How a column travels on the wire. The native driver builds a Python object per
# value, and datetime, Decimal and Enum objects are several times slower to build
# than ints and strs (measured: DateTime64 3.1M values/s vs 17M as Int64; Decimal 2.0M
# vs 20M per Int64 half). So the page query asks the server for cheap integers and
# conversion rebuilds the exact Arrow values column-wise:
#   ts_us:    DateTime64 -> toUnixTimestamp64Micro      -> timestamp[us, UTC]
#   ts_s:     DateTime   -> toUnixTimestamp             -> timestamp[us, UTC]
#   days:     Date(32)   -> toInt32 (days since 1970)   -> date32
#   dec_small Decimal(P<=18) -> its unscaled integer    -> decimal128(P, S)
#   dec128:   Decimal(P<=38) -> low and high 64 bits    -> decimal128(P, S)
#   plain:    the column itself (Enums as toString)
Wire = Literal["plain", "ts_us", "ts_s", "days", "dec_small", "dec128"]


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one source column is read and converted."""

    name: str
    ch_type: ChType
    field: pa.Field
    select: tuple[str, ...]  # SQL expressions in the page query (one or two)
    prep: Prep
    wire: Wire = "plain"

    @property
    def arrow(self) -> pa.DataType:
        return self.field.type

    @property
    def scale(self) -> int:
        t = self.arrow
        import pyarrow as pa

        return int(t.scale) if pa.types.is_decimal(t) else 0


def wire_plan(t: ChType, column: str) -> tuple[Wire, tuple[str, ...]]:
    """The cheapest exact wire form of a column, as (kind, SELECT expressions)."""
    q = quote_ident(column)
    base = t.unwrap()
    name = base.name
    if leaf_name(base) in SHARED_LEAVES:
        return "plain", (SHARED_LEAVES[leaf_name(base)].format(q),)
    if name == "DateTime64":
        return "ts_us", (f"toUnixTimestamp64Micro({q})",)
    if name == "DateTime":
        return "ts_s", (f"toUnixTimestamp({q})",)
    if name in ("Date", "Date32"):
        return "days", (f"toInt32({q})",)
    if name in ("Enum8", "Enum16", "JSON", "Object"):
        # JSON: ClickHouse's own canonical text (sorted keys, compact), the same text the
        # arrow transport reads, instead of re-serialising the driver's dicts.
        return "plain", (f"toString({q})",)
    if (name == "Decimal" or name in DECIMAL_WIDTH) and not t.nullable:
        precision = arrow_type(base).precision
        if precision <= 9:
            return "dec_small", (f"reinterpretAsInt32({q})",)
        if precision <= 18:
            return "dec_small", (f"reinterpretAsInt64({q})",)
        return "dec128", (
            f"reinterpretAsUInt64({q})",
            f"toInt64(bitShiftRight(reinterpretAsInt128({q}), 64))",
        )
    if name in ("Array", "Map", "Tuple", "Nested"):
        return "plain", (rewrite_leaves(t, q, NATIVE_NESTED_LEAVES),)
    return "plain", (q,)


def prep_kind(t: ChType, uint64: UInt64Mode = "error", strings: StringMode = "string") -> Prep:
    """Which Python-side preparation a column's values need before pa.array()."""
    base = nested_as_array(t.unwrap())
    name = base.name
    if name in ("IPv4", "IPv6"):
        return "str"
    if name == "DateTime64" and leaf_name(base) == "DateTime64":
        # Integer microseconds wherever it is read plain: inside containers through
        # NATIVE_NESTED_LEAVES (a top-level column uses the ts_us wire form instead).
        return "micros"
    if name == "UUID":
        return "uuid"
    if name == "UInt64" and uint64 == "decimal":
        return "decimal_int"
    if name == "FixedString" or (name == "String" and strings == "binary"):
        return "bytes"
    if name in ("Array", "Map", "Tuple"):
        return "nested" if _needs_prep_inside(base, uint64, strings) else "none"
    return "none"


def _needs_prep_inside(t: ChType, uint64: UInt64Mode, strings: StringMode) -> bool:
    for arg in t.args:
        if isinstance(arg, ChType) and (
            prep_kind(arg, uint64, strings) != "none"
            or _needs_prep_inside(arg.unwrap(), uint64, strings)
        ):
            return True
    return False


def uint64_hint(plan: ColumnPlan) -> str:
    """What to do about a UInt64 value above 2^63-1, for a DataError message."""
    if "UInt64" not in str(plan.ch_type):  # at the top or inside an Array, Map or Tuple
        return ""
    return '; set uint64 = "decimal" on this table to store UInt64 as decimal(20,0)'


def plan_column(
    table: str,
    name: str,
    type_text: str,
    uint64: UInt64Mode = "error",
    strings: StringMode = "string",
) -> ColumnPlan:
    """Plan one column; raise SourceSchemaError naming table, column and type if unmappable."""
    try:
        t = parse_type(type_text)
        arrow = arrow_type(t, uint64, strings)
    except (Unmappable, ValueError) as exc:
        raise SourceSchemaError(
            f"{table}: column {name!r} has type {type_text} which offloader cannot store: {exc}",
            reason="unmappable",
        ) from None
    import pyarrow as pa

    wire, select = wire_plan(t, name)
    return ColumnPlan(
        name=name,
        ch_type=t,
        field=pa.field(name, arrow, nullable=t.nullable, metadata=_doc(t)),
        select=select,
        prep=prep_kind(t, uint64, strings),
        wire=wire,
    )


def _doc(t: ChType) -> dict[bytes, bytes] | None:
    """The Iceberg column doc of a value stored as a count (its unit), or of ticks."""
    leaf = leaf_name(t)
    if leaf in AS_COUNT:
        return {b"doc": AS_COUNT[leaf].encode()}
    if leaf == "DateTime64Ticks":
        return {b"doc": ticks_doc(time_precision(t), t).encode()}
    return None


def _contains(t: ChType, names: tuple[str, ...]) -> bool:
    return t.name in names or any(isinstance(a, ChType) and _contains(a, names) for a in t.args)


# --- wire forms ---------------------------------------------------------------------

# A leaf's SQL template ("{}" is the value), or a function of the leaf's type giving one.
Leaf = str | Callable[[ChType], str]

# Values stored as ClickHouse's text of them, over HTTP (arrow, parquet) at every level.
TEXT_LEAVES = dict.fromkeys(("IPv4", "IPv6", "Enum8", "Enum16", "JSON", "Object"), "toString({})")
# ClickHouse's text of a Variant or Dynamic value, NULL kept NULL (toString gives '').
TEXT_OR_NULL = "if(isNull({0}), NULL, toString({0}))"
# Values every transport reads the same way, at the top level and inside containers.
SHARED_LEAVES = {
    **dict.fromkeys(AS_TEXT, "toString({})"),
    **dict.fromkeys(INTERVALS, "toInt64({})"),
    "Time": "toInt64({})",
    "Time64": "toInt64(toDecimal128({}, 9) * 1000000000)",
    "Nothing": "CAST({}, 'Nullable(String)')",
    **{name: f"CAST({{}}, '{shape}')" for name, shape in SHAPES.items()},
    "BFloat16": "toFloat32({})",
    "DateTime64Ticks": "reinterpretAsInt64({})",
    **dict.fromkeys(NULL_HOLDERS, TEXT_OR_NULL),
    "Geometry": "if(isNull({0}), NULL, wkt({0}))",
}
# The native driver decodes DateTime64 through a float, which is off by a microsecond
# for some values; inside containers (where no top-level wire form applies) they are
# read as integer microseconds and rebuilt exactly (prep "micros").
NATIVE_NESTED_LEAVES = {
    "DateTime64": "toUnixTimestamp64Micro({})",
    **dict.fromkeys(("JSON", "Object"), "toString({})"),
    **SHARED_LEAVES,
}


def rewrite_leaves(t: ChType, expr: str, leaves: Mapping[str, Leaf], depth: int = 0) -> str:
    """`expr` with every value whose type is a key of `leaves` replaced by that SQL
    template, containers rewritten element by element (arrayMap, mapApply, tuple)."""
    base = t.unwrap()
    name = base.name
    if leaf_name(base) in leaves:
        template = leaves[leaf_name(base)]
        # A template may depend on the type's arguments: a function of the type then.
        return str(template(base) if callable(template) else template).format(expr)
    v = f"__v{depth}"
    if name == "Nested":  # read as the Array(Tuple(...)) it is (drivers know no Nested)
        element = rewrite_leaves(nested_as_array(base).inner, v, leaves, depth + 1)
        return f"arrayMap({v} -> {element}, {expr})"
    if not has_leaf(base, leaves):
        return expr
    if name == "Array":
        return f"arrayMap({v} -> {rewrite_leaves(base.inner, v, leaves, depth + 1)}, {expr})"
    if name == "Map":
        key, value = base.args
        assert isinstance(key, ChType) and isinstance(value, ChType)
        k = f"__k{depth}"
        return (
            f"mapApply(({k}, {v}) -> ({rewrite_leaves(key, k, leaves, depth + 1)}, "
            f"{rewrite_leaves(value, v, leaves, depth + 1)}), {expr})"
        )
    if name == "Tuple":
        parts = [
            rewrite_leaves(arg, f"tupleElement({expr}, {i + 1})", leaves, depth + 1)
            for i, arg in enumerate(base.args)
            if isinstance(arg, ChType)
        ]
        return f"tuple({', '.join(parts)})"
    return expr


def has_leaf(t: ChType, leaves: Mapping[str, Leaf]) -> bool:
    base = t.unwrap()
    if leaf_name(base) in leaves:
        return True
    return any(isinstance(a, ChType) and has_leaf(a, leaves) for a in base.args)


# --- the ClickHouse form of each stored type ---------------------------------------------

_CAST = {
    **dict.fromkeys(("Int8", "Int16", "Int32", "UInt8", "UInt16"), "Int32"),
    **dict.fromkeys(("Int64", "UInt32", "DateTime64Ticks"), "Int64"),
    **dict.fromkeys(("Float32", "BFloat16"), "Float32"),
    "Float64": "Float64",
    "Bool": "Bool",
    "UUID": "UUID",
    **dict.fromkeys(("Date", "Date32"), "Date32"),
    **dict.fromkeys(("DateTime", "DateTime64"), "DateTime64(6, 'UTC')"),
    **dict.fromkeys(
        ("String", "IPv4", "IPv6", "Enum8", "Enum16", "Enum", "JSON", "Object"), "String"
    ),
    **dict.fromkeys(AS_TEXT, "String"),
    **dict.fromkeys(AS_COUNT, "Int64"),
    **SHAPES,
    "Nothing": "String",
}


def iceberg_type(t: ChType, uint64: str = "error") -> str:
    """The ClickHouse type whose Parquet encoding is exactly the Iceberg type offloader
    stores a `t` as (types.arrow_type): the page query CASTs each column to it after
    the leaf checks, which widens small integers, moves times to UTC microseconds and
    names tuple fields as Iceberg does (_1, _2, ... when unnamed)."""
    if t.name == "Nullable" or t.name in NULL_HOLDERS:
        inner = "String" if t.name in NULL_HOLDERS else iceberg_type(t.inner, uint64)
        return f"Nullable({inner})"
    if t.name == "LowCardinality":
        return iceberg_type(t.inner, uint64)
    if t.name == "SimpleAggregateFunction":
        last = t.args[-1]
        assert isinstance(last, ChType)
        return iceberg_type(last, uint64)
    leaf = leaf_name(t)
    if leaf in _CAST:
        return _CAST[leaf]
    if t.name == "UInt64":
        return "Decimal(20, 0)" if uint64 == "decimal" else "Int64"
    if t.name == "Decimal" or t.name in DECIMAL_WIDTH:
        precision, scale = decimal_precision(t)
        return f"Decimal({precision}, {scale})"
    if t.name == "Nested":
        return iceberg_type(nested_as_array(t), uint64)
    if t.name == "Array":
        return f"Array({iceberg_type(t.inner, uint64)})"
    if t.name == "Map":
        key, value = t.args
        assert isinstance(key, ChType) and isinstance(value, ChType)
        return f"Map({iceberg_type(key, uint64)}, {iceberg_type(value, uint64)})"
    if t.name == "Tuple":
        names = t.field_names or tuple(f"_{i + 1}" for i in range(len(t.args)))
        fields = [
            f"{quote_ident(n)} {iceberg_type(a, uint64)}"
            for n, a in zip(names, t.args, strict=True)
            if isinstance(a, ChType)
        ]
        return f"Tuple({', '.join(fields)})"
    raise ValueError(f"the parquet transport has no ClickHouse form of {t}")
