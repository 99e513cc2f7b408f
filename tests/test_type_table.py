"""The type table (docs/types.md) is checked against the code's mapping: every row is known
here with example types, each example maps (through offloader's plan and pyiceberg's
own Arrow-to-Iceberg conversion) to the Iceberg type its row names, and the
unmappable types in the paragraph under the table really are refused."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from offloader.dev import devserver
from offloader.errors import SourceSchemaError
from offloader.iceberg.catalog import describe
from offloader.wire import plan_column
from tests.helpers import ROOT

# A row of the type table (its ClickHouse cell) -> [(example type, the Iceberg type it gets)]
ROWS: dict[str, list[tuple[str, str]]] = {
    "Int8/16/32, UInt8/16": [(t, "int") for t in ("Int8", "Int16", "Int32", "UInt8", "UInt16")],
    "UInt32, Int64, UInt64": [(t, "long") for t in ("UInt32", "Int64", "UInt64")],
    "Int128, UInt128, Int256, UInt256": [
        (t, "string") for t in ("Int128", "UInt128", "Int256", "UInt256")
    ],
    "Float32 / Float64 / BFloat16": [
        ("Float32", "float"),
        ("Float64", "double"),
        ("BFloat16", "float"),
    ],
    "Decimal(P,S), Decimal32/64/128 (P ≤ 38)": [
        ("Decimal(38, 10)", "decimal(38, 10)"),
        ("Decimal32(2)", "decimal(9, 2)"),
        ("Decimal64(4)", "decimal(18, 4)"),
        ("Decimal128(6)", "decimal(38, 6)"),
    ],
    "Decimal(P,S) with P > 38, Decimal256": [
        ("Decimal(50, 2)", "string"),
        ("Decimal256(10)", "string"),
    ],
    "String / FixedString(N)": [("String", "string"), ("FixedString(3)", "binary")],
    "Date, Date32": [("Date", "date"), ("Date32", "date")],
    "DateTime, DateTime64(≤6) with any time zone": [
        ("DateTime", "timestamptz"),
        ("DateTime('Asia/Tokyo')", "timestamptz"),
        ("DateTime64(3, 'Europe/Paris')", "timestamptz"),
        ("DateTime64(6)", "timestamptz"),
    ],
    "DateTime64(7..9)": [("DateTime64(7)", "long"), ("DateTime64(9, 'UTC')", "long")],
    "Bool / UUID": [("Bool", "boolean"), ("UUID", "uuid")],
    "Enum8/16, IPv4, IPv6": [
        (t, "string") for t in ("Enum8('a' = 1)", "Enum16('b' = 1000)", "IPv4", "IPv6")
    ],
    "JSON (also inside Array, Map, Tuple)": [("JSON", "string"), ("Array(JSON)", "list<string>")],
    "Variant(...), Dynamic (also inside containers)": [
        ("Variant(String, UInt64)", "string"),
        ("Dynamic", "string"),
    ],
    "LowCardinality(T) / Nullable(T)": [
        ("LowCardinality(String)", "string"),
        ("Nullable(Int64)", "long"),
    ],
    "Time / Time64(P)": [("Time", "long"), ("Time64(3)", "long"), ("Time64(9)", "long")],
    "IntervalNanosecond … IntervalYear": [
        (t, "long") for t in ("IntervalNanosecond", "IntervalDay", "IntervalYear")
    ],
    "Nullable(Nothing), Array(Nothing)": [
        ("Nullable(Nothing)", "string"),
        ("Array(Nothing)", "list<string>"),
    ],
    "Point / Ring, LineString, MultiPoint / Polygon, MultiLineString / MultiPolygon": [
        ("Point", "struct<"),
        ("Ring", "list<struct<"),
        ("MultiPoint", "list<struct<"),
        ("Polygon", "list<list<struct<"),
        ("MultiPolygon", "list<list<list<struct<"),
    ],
    "Geometry": [("Geometry", "string")],
    "QBit(T, N)": [
        ("QBit(Float32, 8)", "list<float>"),
        ("QBit(BFloat16, 8)", "list<float>"),
        ("QBit(Float64, 2)", "list<double>"),
    ],
    "Nested(a T, …) (with `flatten_nested = 0`; flattened, it is `n.a Array(T)`, … columns)": [
        ("Nested(a Int32, b String)", "list<struct<"),
    ],
    "Array(T) / Map(K,V) / Tuple(...)": [
        ("Array(Int32)", "list<int>"),
        ("Map(String, Int64)", "map<string, long>"),
        ("Tuple(a Int32, b String)", "struct<"),
    ],
}
REFUSED = ["AggregateFunction(sum, UInt64)"]


def table_rows() -> dict[str, str]:
    section = (ROOT / "docs" / "types.md").read_text().split("## Type mapping", 1)[1]
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| ClickHouse | Iceberg |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    return rows


def iceberg_type(ch: str) -> str:
    """The Iceberg type offloader gives a column of ClickHouse type `ch`."""
    p = plan_column("t", "c", ch)
    line = describe(pa.schema([p.field]), ()).splitlines()[0]
    return re.sub(r"^\s*c: (required|optional) ", "", line)


def test_every_type_table_row_is_checked_and_true() -> None:
    rows = table_rows()
    assert set(rows) == set(ROWS), "docs/types.md type table and this test disagree on the rows"
    for row, examples in ROWS.items():
        for ch, expected in examples:
            got = iceberg_type(ch)
            assert got.startswith(expected), (row, ch, got)
            # The table names the outer type (list, map, …) on the containers' row, the
            # element's type on a row about an element type (JSON inside an Array).
            word = expected.split("<")[0].split("(")[0]
            if "<" in expected and row != "Array(T) / Map(K,V) / Tuple(...)":
                word = expected.split("<")[1].rstrip(">")
            generic = row == "LowCardinality(T) / Nullable(T)"  # "T / optional T"
            assert generic or word in rows[row], (row, word)


@pytest.mark.parametrize("ch", REFUSED)
def test_types_the_docs_list_as_refused_are_refused(ch: str) -> None:
    text = (ROOT / "docs" / "types.md").read_text()
    paragraph = text.split("## Type mapping", 1)[1].split("Anything else", 1)[1][:400]
    assert ch.split("(")[0] in paragraph or "geo types" in paragraph or "aggregate" in paragraph
    with pytest.raises(SourceSchemaError):
        plan_column("t", "c", ch)


# One example of every ClickHouse type family (system.data_type_families, aliases
# aside) that offloader maps; the families it refuses are REFUSED above.
FAMILY_EXAMPLES = {
    **{t: t for t in ("Int8", "Int16", "Int32", "Int64", "Int128", "Int256")},
    **{t: t for t in ("UInt8", "UInt16", "UInt32", "UInt64", "UInt128", "UInt256")},
    **{t: t for t in ("Float32", "Float64", "BFloat16", "Bool", "String", "UUID")},
    **{t: t for t in ("Date", "Date32", "DateTime", "DateTime32", "IPv4", "IPv6", "JSON")},
    **{t: t for t in ("Dynamic", "Time", "Geometry", "Point", "Ring", "LineString")},
    **{t: t for t in ("MultiPoint", "Polygon", "MultiLineString", "MultiPolygon")},
    **{f"Interval{u}": f"Interval{u}" for u in ("Nanosecond", "Microsecond", "Millisecond")},
    **{f"Interval{u}": f"Interval{u}" for u in ("Second", "Minute", "Hour", "Day", "Week")},
    **{f"Interval{u}": f"Interval{u}" for u in ("Month", "Quarter", "Year")},
    "DateTime64": "DateTime64(9, 'UTC')",
    "Time64": "Time64(6)",
    "Decimal": "Decimal(76, 10)",
    "Decimal32": "Decimal32(2)",
    "Decimal64": "Decimal64(4)",
    "Decimal128": "Decimal128(6)",
    "Decimal256": "Decimal256(8)",
    "FixedString": "FixedString(4)",
    "Enum": "Enum('a' = 1)",
    "Enum8": "Enum8('a' = 1)",
    "Enum16": "Enum16('a' = 1000)",
    "Array": "Array(Nullable(Int32))",
    "Map": "Map(String, Array(UInt8))",
    "Tuple": "Tuple(UUID, Tuple(s String, d Date))",
    "Nested": "Nested(a Int32, b String)",
    "Variant": "Variant(String, UInt64)",
    "LowCardinality": "LowCardinality(Nullable(String))",
    "Nullable": "Nullable(Decimal(9, 2))",
    "Nothing": "Nullable(Nothing)",
    "QBit": "QBit(BFloat16, 4)",
    "SimpleAggregateFunction": "SimpleAggregateFunction(sum, UInt64)",
}


@pytest.mark.integration
def test_every_type_family_of_this_clickhouse_is_mapped_or_refused(
    clickhouse_server: devserver.Server,
) -> None:
    """A ClickHouse release that adds a type family fails this test until offloader
    maps it or lists it as refused (with a message naming the column)."""
    import httpx

    families = set(
        httpx.post(
            f"http://127.0.0.1:{clickhouse_server.http_port}/",
            content=b"SELECT name FROM system.data_type_families WHERE alias_to = ''",
        )
        .text.strip()
        .splitlines()
    )
    refused = {t.split("(")[0] for t in REFUSED}
    assert families - refused == set(FAMILY_EXAMPLES), families ^ (set(FAMILY_EXAMPLES) | refused)
    for family, example in FAMILY_EXAMPLES.items():
        plan = plan_column("t", "c", example)
        assert plan.arrow is not None, family
