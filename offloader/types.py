"""ClickHouse type names -> a parsed type tree -> Arrow types (and so Iceberg types).

Pure: no server, no driver. `parse_type` understands the type strings that
`system.columns` and the native protocol report; `arrow_type` is the one mapping of a
ClickHouse type to the type offloader stores (README's type table is checked against
it); wire.py decides how each column travels. Anything without an exact mapping raises
Unmappable, which wire.plan_column turns into a SourceSchemaError naming the table, the
column and the type.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pyarrow as pa


# The largest Int64 (Iceberg's long): UInt64 values above it need uint64 = "decimal".
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ChType:
    """A parsed ClickHouse type: name, arguments, and field names for named Tuples."""

    name: str
    args: tuple[ChType | str | int, ...] = ()
    field_names: tuple[str, ...] = ()
    source: str = ""

    def __str__(self) -> str:
        return self.source or self.name

    @property
    def inner(self) -> ChType:
        arg = self.args[0]
        assert isinstance(arg, ChType)
        return arg

    def unwrap(self) -> ChType:
        """Strip LowCardinality and Nullable wrappers."""
        t = self
        while t.name in ("LowCardinality", "Nullable", "SimpleAggregateFunction"):
            t = t.args[-1] if t.name == "SimpleAggregateFunction" else t.inner  # type: ignore[assignment]
        return t

    @property
    def nullable(self) -> bool:
        """Whether a value can be NULL: Nullable(T), and Variant and Dynamic (which
        hold NULL without a Nullable wrapper)."""
        t = self
        while t.name == "LowCardinality":
            t = t.inner
        return t.name in ("Nullable", *NULL_HOLDERS)


class _Parser:
    _token = re.compile(
        r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>-?\d+)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`)"
        r"|(?P<punct>[(),=]))"
    )

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = self._token.match(text, pos)
            if not m:
                raise ValueError(f"cannot parse ClickHouse type {text!r} at {pos}")
            kind = m.lastgroup
            assert kind is not None
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ValueError(f"unexpected end of ClickHouse type {self.text!r}")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        _, tok = self.take()
        if tok != value:
            raise ValueError(f"expected {value!r} in ClickHouse type {self.text!r}, got {tok!r}")

    def parse_type(self) -> ChType:
        kind, name = self.take()
        if kind != "ident":
            raise ValueError(f"expected a type name in {self.text!r}, got {name!r}")
        name = _SAME_AS.get(name, name)
        if self.peek() != ("punct", "("):
            return ChType(name)
        self.take()
        args: list[ChType | str | int] = []
        names: list[str] = []
        while True:
            if self.peek() == ("punct", ")"):
                self.take()
                break
            args.append(self.parse_arg(names))
            kind, tok = self.take()
            if tok == ")":
                break
            if tok != ",":
                raise ValueError(f"expected ',' or ')' in {self.text!r}, got {tok!r}")
        if names and len(names) != len(args):
            raise ValueError(f"mixed named and unnamed Tuple elements in {self.text!r}")
        return ChType(name, tuple(args), tuple(names))

    def parse_arg(self, names: list[str]) -> ChType | str | int:
        kind, tok = self.tokens[self.i]
        if kind == "str":
            self.i += 1
            value = _unquote(tok)
            if self.peek() == ("punct", "="):  # Enum element 'name' = 1
                self.take()
                self.take()
            return value
        if kind == "num":
            self.i += 1
            return int(tok)
        # A named tuple element is "name Type": two identifiers in a row.
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        if kind == "ident" and nxt is not None and nxt[0] == "ident":
            self.i += 1
            names.append(tok.strip("`"))
        return self.parse_type()


# Families that are another family under a second name.
_SAME_AS = {"DateTime32": "DateTime"}


def _unquote(tok: str) -> str:
    return re.sub(r"\\(.)", r"\1", tok[1:-1])


def parse_type(text: str) -> ChType:
    """Parse a ClickHouse type string such as "Nullable(DateTime64(6, 'UTC'))"."""
    parser = _Parser(text)
    result = parser.parse_type()
    if parser.peek() is not None:
        raise ValueError(f"trailing text in ClickHouse type {text!r}")
    return _with_source(result, text.strip())


def _with_source(t: ChType, text: str) -> ChType:
    return ChType(t.name, t.args, t.field_names, text)


# --- mapping -----------------------------------------------------------------

UInt64Mode = Literal["error", "decimal"]
StringMode = Literal["string", "binary"]


@functools.cache
def _simple() -> dict[str, pa.DataType]:
    """The Arrow types of the scalar ClickHouse types (pyarrow is imported on first use:
    an idle run parses types but never maps them)."""
    import pyarrow as pa

    return {
        "Int8": pa.int32(),
        "Int16": pa.int32(),
        "Int32": pa.int32(),
        "UInt8": pa.int32(),
        "UInt16": pa.int32(),
        "UInt32": pa.int64(),
        "Int64": pa.int64(),
        "Float32": pa.float32(),
        "Float64": pa.float64(),
        "Bool": pa.bool_(),
        "Date": pa.date32(),
        "Date32": pa.date32(),
        "UUID": pa.uuid(),
        "IPv4": pa.string(),
        "IPv6": pa.string(),
        "JSON": pa.string(),
        "Object": pa.string(),
    }


DECIMAL_WIDTH = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


class Unmappable(ValueError):
    """A ClickHouse type offloader cannot store exactly in Iceberg."""


def arrow_type(
    t: ChType, uint64: UInt64Mode = "error", strings: StringMode = "string"
) -> pa.DataType:
    """The Arrow type a ClickHouse value of type `t` is stored as (nullability aside)."""
    t0 = t
    while t0.name in ("LowCardinality", "Nullable"):
        t0 = t0.inner
    name = t0.name
    if name == "SimpleAggregateFunction":
        last = t0.args[-1]
        assert isinstance(last, ChType)
        return arrow_type(last, uint64, strings)
    import pyarrow as pa

    simple = _simple()
    if name in simple:
        return simple[name]
    if name == "UInt64":
        return pa.decimal128(20, 0) if uint64 == "decimal" else pa.int64()
    if name in ("String", "FixedString"):
        return pa.binary() if strings == "binary" or name == "FixedString" else pa.string()
    if name in ("Enum8", "Enum16", "Enum"):
        return pa.string()
    if name == "DateTime":
        return pa.timestamp("us", tz="UTC")
    if leaf_name(t0) == "DateTime64Ticks":
        return pa.int64()  # its own ticks: 10^-P s since 1970 UTC, exact
    if name == "DateTime64":
        return pa.timestamp("us", tz="UTC")
    if name in NULL_HOLDERS:
        return pa.string()  # ClickHouse's text of the value; NULL stays NULL
    if name in AS_COUNT:
        return pa.int64()
    if leaf_name(t0) in SHAPES:
        return arrow_type(parse_type(SHAPES[leaf_name(t0)]), uint64, strings)
    if name == "QBit":
        raise Unmappable(f"a QBit of {t0.args[0] if t0.args else '?'} elements is not known")
    if name == "Nested":
        return arrow_type(nested_as_array(t0), uint64, strings)
    if name == "Nothing":
        return pa.string()  # Nullable(Nothing) is always NULL; Array(Nothing) always empty
    if name in ("AggregateFunction",):
        raise Unmappable(
            "an aggregate function state has no value before it is finalized; offload "
            "finalizeAggregation(column) (or the -Merge combinator) from a view"
        )
    if name in AS_TEXT or leaf_name(t0) in AS_TEXT:
        # Wider than any Iceberg number: ClickHouse's exact decimal text.
        return pa.string()
    if name == "BFloat16":
        return pa.float32()  # every bfloat16 value is exactly a float
    if name == "Decimal" or name in DECIMAL_WIDTH:
        precision, scale = decimal_precision(t0)
        return pa.decimal128(precision, scale)
    return _composite_type(t0, uint64, strings)


def _composite_type(t: ChType, uint64: UInt64Mode, strings: StringMode) -> pa.DataType:
    """arrow_type of an Array, Map or Tuple (`t` unwrapped): its elements' types mapped
    in turn. Any other type has no mapping (Unmappable)."""
    import pyarrow as pa

    if t.name == "Array":
        return pa.list_(_field("element", t.inner, uint64, strings))
    if t.name == "Map":
        key, value = t.args
        assert isinstance(key, ChType) and isinstance(value, ChType)
        if key.nullable:
            raise Unmappable("Map keys must not be Nullable")
        return pa.map_(
            pa.field("key", arrow_type(key, uint64, strings), nullable=False),
            _field("value", value, uint64, strings),
        )
    if t.name == "Tuple":
        names = t.field_names or tuple(f"_{i + 1}" for i in range(len(t.args)))
        fields = []
        for fname, arg in zip(names, t.args, strict=True):
            assert isinstance(arg, ChType)
            fields.append(_field(fname, arg, uint64, strings))
        return pa.struct(fields)
    raise Unmappable(f"no Iceberg mapping for ClickHouse type {t}")


# Integers and decimals wider than Iceberg's long and decimal(38): stored as ClickHouse's
# exact decimal text (toString), sortable by no engine but lossless.
AS_TEXT = ("Int128", "UInt128", "Int256", "UInt256", "WideDecimal")

INTERVALS = tuple(
    f"Interval{unit}"
    for unit in (
        "Nanosecond",
        "Microsecond",
        "Millisecond",
        "Second",
        "Minute",
        "Hour",
        "Day",
        "Week",
        "Month",
        "Quarter",
        "Year",
    )
)
# Stored as a signed count in a long, the unit in the column's doc: Time (seconds) and
# Time64 (nanoseconds, whatever its precision) span -999:59:59 to 999:59:59, which
# Iceberg's time (00:00 to 24:00) cannot hold; intervals are a count of their unit.
AS_COUNT = {
    "Time": "seconds since 00:00:00 (signed; ClickHouse Time)",
    "Time64": "nanoseconds since 00:00:00 (signed; ClickHouse Time64)",
    **{i: f"a count of {i.removeprefix('Interval').lower()}s (ClickHouse {i})" for i in INTERVALS},
}


def time_precision(t: ChType) -> int:
    """The digits after the second of a DateTime64 type (3 when not given)."""
    precision = t.unwrap().args[0] if t.unwrap().args else 3
    assert isinstance(precision, int)
    return precision


def decimal_precision(t: ChType) -> tuple[int, int]:
    """(precision, scale) of a Decimal type of any spelling."""
    name = t.name
    if name == "Decimal":
        precision, scale = (*t.args, 0)[:2] if len(t.args) == 1 else t.args[:2]
    else:
        precision, scale = DECIMAL_WIDTH[name], t.args[0]
    assert isinstance(precision, int) and isinstance(scale, int)
    return precision, scale


# Types that hold NULL without Nullable(): stored as ClickHouse's text, NULL kept
# (Geometry, a Variant of the geo types, as WKT).
NULL_HOLDERS = ("Variant", "Dynamic", "Geometry")

# The geo types are fixed shapes of points (x, y): stored as those structs and lists.
_POINT = "Tuple(x Float64, y Float64)"
GEO = {
    "Point": _POINT,
    **dict.fromkeys(("Ring", "LineString", "MultiPoint"), f"Array({_POINT})"),
    **dict.fromkeys(("Polygon", "MultiLineString"), f"Array(Array({_POINT}))"),
    "MultiPolygon": f"Array(Array(Array({_POINT})))",
}


# QBit(T, N), a vector stored bit-sliced for approximate search, reads back exactly as
# Array(T) (at full precision, which is what it holds): stored as that list, BFloat16
# elements as floats (as everywhere).
QBIT = {
    "QBitBFloat16": "Array(Float32)",
    "QBitFloat32": "Array(Float32)",
    "QBitFloat64": "Array(Float64)",
}
# Types stored as the ClickHouse shape they CAST to exactly, by leaf_name.
SHAPES = {**GEO, **QBIT}


def nested_as_array(t: ChType) -> ChType:
    """Nested(a T, b U) (not flattened) is an Array(Tuple(a T, b U)); any other type as it is."""
    if t.name != "Nested":
        return t
    return ChType("Array", (ChType("Tuple", t.args, t.field_names),))


def leaf_name(t: ChType) -> str:
    """The name wire forms key on: the type's, "WideDecimal" for Decimal(P > 38) and
    "DateTime64Ticks" for DateTime64(P > 6), "QBit<element type>" for QBit."""
    base = t.unwrap()
    if base.name == "QBit" and base.args and isinstance(base.args[0], ChType):
        return f"QBit{base.args[0].name}"
    if base.name == "DateTime64":
        return "DateTime64Ticks" if time_precision(base) > 6 else base.name
    decimal = (base.name == "Decimal" or base.name in DECIMAL_WIDTH) and bool(base.args)
    if decimal and decimal_precision(base)[0] > 38:
        return "WideDecimal"
    return base.name


def _field(name: str, t: ChType, uint64: UInt64Mode, strings: StringMode) -> pa.Field:
    import pyarrow as pa

    return pa.field(name, arrow_type(t, uint64, strings), nullable=t.nullable)


def quote_ident(name: str) -> str:
    """Quote a ClickHouse identifier with backticks, escaping backslashes and backticks."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
