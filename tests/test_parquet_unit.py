"""The parquet transport's pure parts: the ClickHouse type each column is CAST to (its
Parquet must be exactly the Iceberg type), what it refuses, and its page SQL."""

from __future__ import annotations

import pytest

from offloader.config import TableConfig, parse_partition
from offloader.errors import SourceSchemaError
from offloader.plan import plan_source
from offloader.source import parquet
from offloader.source.parquet import ParquetPager, iceberg_type, page_rows
from offloader.sql.scan import Scan, page_query, range_sums_query
from offloader.sql.text import row_hash
from offloader.types import arrow_type, parse_type

TYPES = [
    "Int8",
    "UInt8",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Int128",
    "UInt256",
    "Float32",
    "BFloat16",
    "Float64",
    "Bool",
    "Decimal(9, 2)",
    "Decimal(38, 10)",
    "Decimal(76, 20)",
    "String",
    "LowCardinality(Nullable(String))",
    "UUID",
    "Date",
    "Date32",
    "DateTime('Asia/Tokyo')",
    "DateTime64(3, 'Europe/Paris')",
    "DateTime64(9, 'UTC')",
    "Enum8('a' = 1, 'b' = 2)",
    "IPv4",
    "IPv6",
    "JSON",
    "Variant(String, UInt64)",
    "Dynamic",
    "Nullable(DateTime64(6, 'UTC'))",
    "Array(Nullable(UInt16))",
    "Array(Array(Decimal(20, 4)))",
    "Map(LowCardinality(String), Array(DateTime64(3, 'UTC')))",
    "Map(UInt64, Nullable(String))",
    "Tuple(UUID, Float64)",
    "Tuple(a Int8, b Tuple(Enum8('x' = 1), Date))",
    "SimpleAggregateFunction(sum, UInt32)",
]


@pytest.mark.parametrize("text", TYPES)
@pytest.mark.parametrize("uint64", ["error", "decimal"])
def test_the_cast_type_maps_to_the_same_iceberg_type(text: str, uint64: str) -> None:
    """ClickHouse writes a column of the CAST type as Parquet of exactly the Arrow (so
    Iceberg) type offloader stores the source type as, nullability included."""
    t = parse_type(text)
    cast = parse_type(iceberg_type(t, uint64))
    assert arrow_type(cast, uint64) == arrow_type(t, uint64)  # type: ignore[arg-type]
    assert cast.nullable == t.nullable


def test_unnamed_tuple_fields_get_iceberg_names() -> None:
    assert iceberg_type(parse_type("Tuple(UUID, UInt8)")) == "Tuple(`_1` UUID, `_2` Int32)"


def _pager(columns: list[tuple[str, str]], **extra: object) -> ParquetPager:
    table = TableConfig(
        source="db.t",
        target="cold.t",
        watermark="ts",
        keys=("id",),
        **extra,  # type: ignore[arg-type]
    )
    return ParquetPager(None, table, plan_source(table, columns))  # type: ignore[arg-type]


BASE = [("ts", "DateTime64(6, 'UTC')"), ("id", "UInt64")]


@pytest.mark.parametrize(
    ("columns", "extra", "named"),
    [
        ([("f", "FixedString(3)")], {}, "column 'f'"),
        ([("a", "Array(Tuple(x FixedString(2)))")], {}, "column 'a'"),
        ([("s", "String")], {"strings": "binary"}, 'strings = "binary"'),
        ([], {"partition_by": (parse_partition("bucket(4, id)"),)}, "bucket(4, id)"),
        ([], {"partition_by": (parse_partition("hour(ts)"),)}, "hour(ts)"),
    ],
)
def test_refuses_what_it_cannot_store_exactly_pointing_to_arrow(
    columns: list[tuple[str, str]], extra: dict[str, object], named: str
) -> None:
    with pytest.raises(SourceSchemaError) as refused:
        _pager(BASE + columns, **extra)
    assert named in str(refused.value) and 'transport = "arrow"' in str(refused.value)


def test_day_and_month_partitions_of_the_watermark_are_followed() -> None:
    parts = (parse_partition("day(ts)"), parse_partition("month(ts)"))
    pager = _pager([*BASE, ("s", "String")], partition_by=parts)
    assert len(pager.select) == 3 and "isValidUTF8" in pager.select[2]
    assert pager.select[1].startswith("CAST(toInt64(")  # UInt64 checked against Int64


def test_a_page_ends_at_the_utc_day_of_its_first_row() -> None:
    order = [(name, parse_type(t)) for name, t in BASE]
    scan = Scan("db.t", "2026-01-09 00:00:00.000000")
    sql = page_query(scan, order, ["*"], ["2026-01-01 10:00:00.000000", 5], 100, one_day=True)
    # The day's end in the column's own type (DateTime64(6)): see sql._first_day_only.
    end = "toDateTime64(toStartOfDay(`ts`, 'UTC') + toIntervalDay(1), 6, 'UTC')"
    assert f"`ts` < (SELECT {end} FROM db.t WHERE" in sql
    assert "ORDER BY `ts` LIMIT 1)" in sql
    dates = page_query(
        Scan("db.t", "2026-01-09"), [("d", parse_type("Date"))], ["*"], None, 10, one_day=True
    )
    assert "`d` < (SELECT `d` + 1 FROM db.t WHERE" in dates
    with pytest.raises(ValueError, match="no UTC day"):
        page_query(Scan("db.t", 10), [("n", parse_type("UInt64"))], ["*"], None, 10, one_day=True)


def test_range_sums_cover_exactly_the_page() -> None:
    order = [(name, parse_type(t)) for name, t in BASE]
    hashed = row_hash(BASE)
    scan = Scan("db.t", "2026-01-09 00:00:00.000000", since="2026-01-01")
    sql = range_sums_query(scan, order, None, ["2026-01-01 00:00:01.000000", 9], hashed)
    assert sql.startswith(f"SELECT count(), toString(sum({hashed.expr})) FROM db.t WHERE NOT (")
    assert "`ts` >= toDateTime64('2026-01-01', 6, 'UTC')" in sql


def test_pages_are_sized_by_their_bytes_within_batch_rows() -> None:
    """A first page reads FIRST_PAGE_ROWS; later ones about PAGE_BYTES of Parquet at the
    bytes per row of the page before, never more than batch_rows nor fewer than
    MIN_PAGE_ROWS (a narrow table gets batch_rows, a wide one bounded memory)."""
    assert page_rows(2_000_000, None) == parquet.FIRST_PAGE_ROWS
    assert page_rows(1_000, None) == 1_000  # a small batch_rows is kept as it is
    assert page_rows(2_000_000, 5.4) == 2_000_000  # 5.4 bytes a row: the ceiling
    assert page_rows(2_000_000, 1_024.0) == parquet.PAGE_BYTES // 1_024  # 1 KiB a row
    assert page_rows(2_000_000, 10**9) == parquet.MIN_PAGE_ROWS  # one huge row
    assert page_rows(5_000, 10**9) == 5_000
    assert page_rows(2_000_000, 0.0) == 2_000_000
