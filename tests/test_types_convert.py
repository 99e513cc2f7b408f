"""Pure unit tests: ClickHouse type parsing and mapping, conversion, SQL, planning. No server."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from typing import Any

import orjson
import pyarrow as pa
import pytest

from offloader import plan
from offloader.cursor import encode_value, watermark_from_int
from offloader.errors import DataError, InconsistentState, SourceSchemaError
from offloader.pinned import TEXT_SETTINGS
from offloader.plan import check_cursor_column
from offloader.source.arrow import json_value_parser
from offloader.source.native_convert import cursor_value, to_record_batch
from offloader.sql.scan import Scan, page_query
from offloader.sql.text import keyset_after, literal, quote_string, watermark_int
from offloader.types import arrow_type, parse_type, quote_ident
from offloader.wire import plan_column

TS = pa.timestamp("us", tz="UTC")

# DESIGN.md's mapping table, row by row.
MAPPING = [
    ("Int8", pa.int32()),
    ("Int16", pa.int32()),
    ("Int32", pa.int32()),
    ("UInt8", pa.int32()),
    ("UInt16", pa.int32()),
    ("UInt32", pa.int64()),
    ("Int64", pa.int64()),
    ("UInt64", pa.int64()),
    ("Float32", pa.float32()),
    ("Float64", pa.float64()),
    ("Decimal(38, 10)", pa.decimal128(38, 10)),
    ("Decimal(9, 2)", pa.decimal128(9, 2)),
    ("Decimal64(4)", pa.decimal128(18, 4)),
    ("String", pa.string()),
    ("FixedString(4)", pa.binary()),
    ("Date", pa.date32()),
    ("Date32", pa.date32()),
    ("DateTime", TS),
    ("DateTime('Asia/Tokyo')", TS),
    ("DateTime64(3)", TS),
    ("DateTime64(6, 'UTC')", TS),
    ("Bool", pa.bool_()),
    ("UUID", pa.uuid()),
    ("Enum8('buy' = 1, 'sell' = 2)", pa.string()),
    ("Enum16('a' = 1000)", pa.string()),
    ("LowCardinality(String)", pa.string()),
    ("LowCardinality(Nullable(String))", pa.string()),
    ("Nullable(Int32)", pa.int32()),
    ("Array(Int32)", pa.list_(pa.field("element", pa.int32(), nullable=False))),
    ("Array(Nullable(String))", pa.list_(pa.field("element", pa.string()))),
    (
        "Map(String, Int64)",
        pa.map_(
            pa.field("key", pa.string(), nullable=False),
            pa.field("value", pa.int64(), nullable=False),
        ),
    ),
    (
        "Tuple(a Int32, b String)",
        pa.struct(
            [pa.field("a", pa.int32(), nullable=False), pa.field("b", pa.string(), nullable=False)]
        ),
    ),
    (
        "Tuple(Int32, String)",
        pa.struct(
            [
                pa.field("_1", pa.int32(), nullable=False),
                pa.field("_2", pa.string(), nullable=False),
            ]
        ),
    ),
    ("IPv4", pa.string()),
    ("IPv6", pa.string()),
    ("JSON", pa.string()),
]


@pytest.mark.parametrize(("ch", "expected"), MAPPING)
def test_mapping(ch: str, expected: pa.DataType) -> None:
    assert arrow_type(parse_type(ch)) == expected


def test_uint64_decimal_option_and_binary_strings() -> None:
    assert arrow_type(parse_type("UInt64"), uint64="decimal") == pa.decimal128(20, 0)
    assert arrow_type(parse_type("String"), strings="binary") == pa.binary()


def test_nullability() -> None:
    assert plan_column("t", "c", "Nullable(Int8)").field.nullable
    assert plan_column("t", "c", "LowCardinality(Nullable(String))").field.nullable
    assert not plan_column("t", "c", "Int8").field.nullable


@pytest.mark.parametrize(
    "ch",
    [
        "AggregateFunction(sum, UInt64)",
        "QBit(Float16, 8)",
    ],
)
def test_unmappable_names_table_column_type(ch: str) -> None:
    with pytest.raises(SourceSchemaError) as err:
        plan_column("market.trades", "weird col", ch)
    text = str(err.value)
    assert "market.trades" in text and "'weird col'" in text and ch.split("(")[0] in text


@pytest.mark.parametrize(
    ("ch", "arrow", "select"),
    [
        ("Int128", "string", "toString(`c`)"),
        ("UInt256", "string", "toString(`c`)"),
        ("Decimal(76, 10)", "string", "toString(`c`)"),
        ("Decimal256(4)", "string", "toString(`c`)"),
        (
            "Array(Nullable(Int256))",
            "list<element: string>",
            "arrayMap(__v0 -> toString(__v0), `c`)",
        ),
        ("BFloat16", "float", "toFloat32(`c`)"),
        ("DateTime64(9, 'UTC')", "int64", "reinterpretAsInt64(`c`)"),
        ("Variant(String, UInt64)", "string", "if(isNull(`c`), NULL, toString(`c`))"),
        ("Array(JSON)", "list<element: string not null>", "arrayMap(__v0 -> toString(__v0), `c`)"),
    ],
)
def test_wide_numbers_travel_as_exact_text_and_bfloat16_as_float(
    ch: str, arrow: str, select: str
) -> None:
    p = plan_column("t", "c", ch)
    assert str(p.field.type) == arrow
    assert p.select == (select,)
    assert p.prep == "none"


def test_parse_keeps_quoted_names_and_escapes() -> None:
    t = parse_type("Enum8('it\\'s' = 1, 'b' = 2)")
    assert t.args == ("it's", "b")
    t = parse_type("Tuple(`a b` String, c Nullable(UInt8))")
    assert t.field_names == ("a b", "c")


def test_cursor_column_checks() -> None:
    check_cursor_column("t", "watermark", "ts", parse_type("DateTime64(6, 'UTC')"))
    check_cursor_column("t", "key", "id", parse_type("String"))
    with pytest.raises(SourceSchemaError, match="must not be Nullable"):
        check_cursor_column("t", "watermark", "ts", parse_type("Nullable(DateTime)"))
    with pytest.raises(SourceSchemaError, match="watermark column 'x' has type Float64"):
        check_cursor_column("t", "watermark", "x", parse_type("Float64"))


def _batch(ch: str, values: list[Any]) -> pa.Array:
    p = plan_column("t", "c", ch)
    return to_record_batch("t", [p], [values]).column(0)


def _wire(ch: str, wire: list[list[Any]]) -> tuple[list[Any], list[Any]]:
    p = plan_column("t", "c", ch)
    assert len(wire) == len(p.select)
    values = to_record_batch("t", [p], wire).column(0).to_pylist()
    cursors = [
        cursor_value(p, [w[i] for w in wire]) if wire[0][i] is not None else None
        for i in range(len(wire[0]))
    ]
    return values, cursors


def _halves(unscaled: int) -> list[list[int]]:
    return [[unscaled & (2**64 - 1)], [unscaled >> 64]]


def test_wire_forms_rebuild_exact_values() -> None:
    ts = dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    micros = 1767225600123456
    assert _wire("DateTime64(6, 'Asia/Tokyo')", [[micros]]) == ([ts], [ts])
    old = dt.datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)
    old_us = -2208988799999999
    assert _wire("DateTime64(3)", [[old_us]]) == ([old], [old])
    assert _wire("Nullable(DateTime64(6))", [[None]])[0] == [None]
    assert _wire("DateTime('UTC')", [[1767225600]])[0] == [ts.replace(microsecond=0)]
    assert _wire("Date32", [[-25567]]) == ([dt.date(1900, 1, 1)], [dt.date(1900, 1, 1)])
    for text in ("-12345678901234567890.0123456789", "0.0000000001", "-0.0000000001", "7"):
        value = decimal.Decimal(text)
        unscaled = int(value.scaleb(10, decimal.Context(prec=80)))
        got, cursor = _wire("Decimal(38, 10)", _halves(unscaled))
        assert got == [value] and cursor == [value]
    assert _wire("Decimal(9, 2)", [[-5]]) == (
        [decimal.Decimal("-0.05")],
        [decimal.Decimal("-0.05")],
    )
    assert _wire("Decimal(18, 4)", [[2**63 - 1]])[0] == [decimal.Decimal(2**63 - 1).scaleb(-4)]
    # Nullable decimals travel as Decimal objects.
    assert _wire("Nullable(Decimal(28, 10))", [[decimal.Decimal("1.5"), None]])[0] == [
        decimal.Decimal("1.5"),
        None,
    ]
    assert plan_column("t", "e", "Enum8('a' = 1)").select == ("toString(`e`)",)


def test_convert_values_exactly() -> None:
    u = uuid.uuid4()
    assert _batch("Nullable(UUID)", [u, None]).to_pylist() == [u, None]
    assert _batch("IPv4", [ipaddress.IPv4Address("1.2.3.4")]).to_pylist() == ["1.2.3.4"]
    assert _batch("IPv6", [ipaddress.IPv6Address("::1")]).to_pylist() == ["::1"]
    # JSON travels as ClickHouse's own toString text and is stored as it is.
    assert plan_column("t", "j", "JSON").select == ("toString(`j`)",)
    assert _batch("JSON", ['{"a":[1,2],"b":1}']).to_pylist() == ['{"a":[1,2],"b":1}']
    assert _batch("Nullable(Decimal(38, 10))", [decimal.Decimal("1.0000000001")]).to_pylist() == [
        decimal.Decimal("1.0000000001")
    ]
    assert _batch("Nullable(Float64)", [float("inf"), None]).to_pylist() == [float("inf"), None]
    assert _batch(
        "Map(String, Array(IPv4))", [{"a": [ipaddress.IPv4Address("10.0.0.1")]}]
    ).to_pylist() == [[("a", ["10.0.0.1"])]]
    assert _batch("Tuple(a UUID, b Int8)", [(u, 1)]).to_pylist() == [{"a": u, "b": 1}]
    assert _batch("UInt64", [2**63 - 1]).to_pylist() == [2**63 - 1]
    assert _batch("FixedString(2)", ["ab"]).to_pylist() == [b"ab"]


def test_uint64_overflow_names_column_and_value() -> None:
    with pytest.raises(DataError) as err:
        _batch("UInt64", [1, 2**64 - 1])
    assert "'c'" in str(err.value) and str(2**64 - 1) in str(err.value)
    assert 'uint64 = "decimal"' in str(err.value)
    p = plan_column("t", "c", "UInt64", uint64="decimal")
    out = to_record_batch("t", [p], [[2**64 - 1]]).column(0).to_pylist()
    assert out == [decimal.Decimal(2**64 - 1)]


def test_encode_value_round_trips_microseconds() -> None:
    value = dt.datetime(2026, 3, 1, 12, 0, 0, 7, tzinfo=dt.UTC)
    assert encode_value(value) == "2026-03-01 12:00:00.000007"
    assert encode_value(dt.date(2026, 3, 1)) == "2026-03-01"
    assert encode_value(2**64 - 1) == str(2**64 - 1)
    assert encode_value(5) == 5
    # Strings jsonb cannot hold as text travel as the hex of their bytes.
    assert encode_value(b"plain") == "plain" and encode_value("é") == "é"
    assert encode_value(b"h\xc3(") == {"hex": "68c328"}
    assert encode_value(b"ab\0\0") == {"hex": "61620000"}
    assert encode_value("a\0b") == {"hex": "610062"}
    assert orjson.loads(orjson.dumps(encode_value(b"\xff"))) == {"hex": "ff"}
    assert literal(parse_type("FixedString(4)"), {"hex": "61620000"}) == "unhex('61620000')"


def test_literals_and_keyset() -> None:
    ts = parse_type("DateTime64(6, 'UTC')")
    assert literal(ts, "2026-03-01 12:00:00.000007") == (
        "toDateTime64('2026-03-01 12:00:00.000007', 6, 'UTC')"
    )
    assert literal(parse_type("DateTime"), "2026-03-01 12:00:00.000000") == (
        "toDateTime('2026-03-01 12:00:00', 'UTC')"
    )
    assert literal(parse_type("String"), "it's") == "'it\\'s'"
    assert quote_string("a\\b") == "'a\\\\b'"
    assert quote_ident("we`ird") == "`we\\`ird`"
    order = [("ts", ts), ("id", parse_type("UInt64"))]
    where = keyset_after(order, ["2026-03-01 00:00:00.000000", 7])
    assert where.startswith("`ts` >= toDateTime64(")
    assert "`id` > 7" in where
    q = page_query(
        Scan("`db`.`t`", "2026-03-02 00:00:00.000000"), order, ["`ts`", "`id`"], None, 10
    )
    assert "ORDER BY `ts`, `id` LIMIT 10 WITH TIES SETTINGS " in q
    assert q.endswith(", ".join(TEXT_SETTINGS))


def test_high_water_mark() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    ts = parse_type("DateTime64(6)")
    newest = dt.datetime(2026, 3, 1, 11, 59, 0, tzinfo=dt.UTC)
    assert encode_value(plan.high_water_value(newest, now, 300, ts)) == "2026-03-01 11:55:00.000000"
    older = dt.datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=dt.UTC)
    assert encode_value(plan.high_water_value(older, now, 300, ts)) == "2026-03-01 10:00:00.000005"
    assert (
        encode_value(plan.high_water_value(dt.date(2026, 3, 1), now, 300, parse_type("Date")))
        == "2026-02-28"
    )
    assert encode_value(plan.high_water_value(42, now, 300, parse_type("UInt64"))) == 42


def test_reconcile() -> None:
    assert plan.reconcile("t", 0, None, None, None).action == "fresh"
    assert plan.reconcile("t", 2, (1, 2), 2, (1, 2)).action == "continue"
    r = plan.reconcile("t", 2, (1, 2), 3, (5, 6))
    assert (r.action, r.seq, r.position) == ("recover", 3, (5, 6))
    with pytest.raises(InconsistentState, match="rolled back"):
        plan.reconcile("t", 3, (5, 6), 2, (1, 2))
    with pytest.raises(InconsistentState, match="has none"):
        plan.reconcile("t", 3, (5, 6), None, None)
    with pytest.raises(InconsistentState, match="different"):
        plan.reconcile("t", 2, (1, 2), 2, (1, 3))


# What ClickHouse 26.9's toString(toIPv6(x)) prints; the native transport must agree.
CLICKHOUSE_IPV6_TEXT = [
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    ("::1.2.3.4", "::1.2.3.4"),
    ("::1", "::1"),
    ("::", "::"),
    ("::0.0.1.2", "::102"),
    ("::ffff:0:1", "::ffff:0.0.0.1"),
    ("::ffff:1:2:3", "::ffff:1:2:3"),
    ("0:0:0:0:ffff:0:0:1", "::ffff:0:0:1"),
    ("::a:b", "::0.10.0.11"),
    ("2001:db8::1", "2001:db8::1"),
    ("fe80::1:2", "fe80::1:2"),
]


@pytest.mark.parametrize(("given", "clickhouse"), CLICKHOUSE_IPV6_TEXT)
def test_ipv6_text_matches_clickhouse(given: str, clickhouse: str) -> None:
    assert _batch("IPv6", [ipaddress.IPv6Address(given)]).to_pylist() == [clickhouse]
    nested = _batch("Array(IPv6)", [[ipaddress.IPv6Address(given)]]).to_pylist()
    assert nested == [[clickhouse]]


@pytest.mark.parametrize(
    ("ch_type", "value", "expected"),
    [
        ("DateTime64(3, 'Asia/Tokyo')", -2208988800000000, dt.datetime(1900, 1, 1, tzinfo=dt.UTC)),
        ("DateTime", 1767225600000000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        ("Date32", -25567, dt.date(1900, 1, 1)),
        ("UInt64", "18446744073709551615", 2**64 - 1),
    ],
)
def test_watermark_travels_as_an_integer(ch_type: str, value: object, expected: object) -> None:
    t = parse_type(ch_type)
    assert watermark_from_int(t, value) == expected
    expr = watermark_int(t, "max(`c`)")
    assert (
        expr
        == {
            "DateTime64": "toUnixTimestamp64Micro(toDateTime64(max(`c`), 6, 'UTC'))",
            "DateTime": "toUnixTimestamp64Micro(toDateTime64(max(`c`), 6, 'UTC'))",
            "Date32": "toInt32(max(`c`))",
            "UInt64": "max(`c`)",
        }[t.name]
    )


def test_json_values_parse_by_type() -> None:
    assert json_value_parser("UInt64")("18446744073709551615") == 2**64 - 1  # quoted by a profile
    assert json_value_parser("Nullable(Int64)")(None) is None
    assert json_value_parser("String")("2026-01-01") == "2026-01-01"
    assert json_value_parser("AggregateFunction(sum, UInt64)")("x") == "x"
