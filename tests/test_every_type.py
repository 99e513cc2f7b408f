"""One table with a column of every type family this ClickHouse has (those offloader
maps), also Nullable and inside an Array wherever ClickHouse allows it, filled with
edge values, on a DateTime64(9) watermark with a nanosecond tie; offloaded on every
transport and shown equal three ways: `verify`, a pyiceberg scan compared value by
value, and readers nobody here wrote (ClickHouse's icebergLocal, DuckDB)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from offloader.iceberg import IcebergCatalog
from tests.helpers import (
    Env,
    assert_field_ids_everywhere,
    assert_read_equal,
    independent_reads,
)
from tests.test_type_table import FAMILY_EXAMPLES

pytestmark = pytest.mark.integration

# Per family: the (low, high) edge values as SQL expressions CAST to its example type.
EDGES = {
    "Int8": ("-128", "127"),
    "Int16": ("-32768", "32767"),
    "Int32": ("-2147483648", "2147483647"),
    "Int64": ("-9223372036854775808", "9223372036854775807"),
    "Int128": (f"'{-(2**127)}'", f"'{2**127 - 1}'"),
    "Int256": (f"'{-(2**255)}'", f"'{2**255 - 1}'"),
    "UInt8": ("0", "255"),
    "UInt16": ("0", "65535"),
    "UInt32": ("0", "4294967295"),
    "UInt64": ("0", "18446744073709551615"),
    "UInt128": ("0", f"'{2**128 - 1}'"),
    "UInt256": ("0", f"'{2**256 - 1}'"),
    "Float32": ("'-inf'", "'nan'"),
    "Float64": ("-1.7976931348623157e308", "'inf'"),
    "BFloat16": ("'-inf'", "3.140625"),
    "Bool": ("false", "true"),
    "String": ("''", "'tab\\there \"q\" \\'s\\' é ✓'"),
    "UUID": ("'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"),
    "Date": ("'1970-01-01'", "'2149-06-06'"),
    "Date32": ("'1900-01-01'", "'2299-12-31'"),
    "DateTime": ("'1970-01-01 00:00:00'", "'2106-02-07 06:28:15'"),
    "DateTime32": ("'1970-01-01 00:00:00'", "'2106-02-07 06:28:15'"),
    "DateTime64": ("'1900-01-01 00:00:00'", "'2262-04-11 23:47:16.854775807'"),
    "IPv4": ("'0.0.0.0'", "'255.255.255.255'"),
    "IPv6": ("'::'", "'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'"),
    "JSON": ("'{}'", '\'{"a": [1, {"b": null}], "c": "é"}\''),
    "Dynamic": ("NULL", "42"),
    "Time": ("'-999:59:59'", "'999:59:59'"),
    "Time64": ("'-999:59:59.999999'", "'999:59:59.999999'"),
    "Point": ("(-1.7976931348623157e308, 0)", "(1.5, 'inf')"),
    "Ring": ("[]", "[(0, 0), (1, 0), (1, 1), (0, 0)]"),
    "LineString": ("[]", "[(0, 0), (2, 2)]"),
    "MultiPoint": ("[]", "[(3, 3)]"),
    "Polygon": ("[]", "[[(0, 0), (4, 0), (4, 4), (0, 0)], [(1, 1), (2, 1), (2, 2), (1, 1)]]"),
    "MultiLineString": ("[]", "[[(0, 0), (1, 1)], [(2, 2)]]"),
    "MultiPolygon": ("[]", "[[[(0, 0), (1, 0), (1, 1), (0, 0)]]]"),
    "Geometry": ("NULL", "CAST((5.5, 6.5), 'Point')"),
    **{
        f"Interval{u}": ("-9223372036854775808", "9223372036854775807")
        for u in (
            *("Nanosecond", "Microsecond", "Millisecond", "Second", "Minute", "Hour"),
            *("Day", "Week", "Month", "Quarter", "Year"),
        )
    },
    "Decimal": (f"'-{'9' * 66}.{'9' * 10}'", f"'{'9' * 66}.{'9' * 10}'"),
    "Decimal32": ("'-9999999.99'", "'9999999.99'"),
    "Decimal64": (f"'-{'9' * 14}.9999'", f"'{'9' * 14}.9999'"),
    "Decimal128": (f"'-{'9' * 32}.999999'", f"'{'9' * 32}.999999'"),
    "Decimal256": (f"'-{'9' * 68}.99999999'", f"'{'9' * 68}.99999999'"),
    "FixedString": ("'\\0\\0\\0\\0'", "'abcd'"),
    "Enum": ("'a'", "'a'"),
    "Enum8": ("'a'", "'a'"),
    "Enum16": ("'a'", "'a'"),
    "Array": ("[NULL]", "[-2147483648, 2147483647, NULL]"),
    "Map": ("map('', [])", "map('k', [255, 0], 'é', [])"),
    "Tuple": (
        "('00000000-0000-0000-0000-000000000000', ('', '1970-01-01'))",
        "('ffffffff-ffff-ffff-ffff-ffffffffffff', ('x', '2149-06-06'))",
    ),
    "Variant": ("NULL", "18446744073709551615"),
    "LowCardinality": ("NULL", "'x'"),
    "Nullable": ("NULL", "'-9999999.99'"),
    "SimpleAggregateFunction": ("0", "18446744073709551615"),
    "QBit": ("[0, 0, 0, 0]", "['-inf', 'nan', 0.099609375, 3.140625]"),
}
# Three rows share the watermark's nanosecond (a tie across 2-row pages); one is a
# nanosecond later; one holds every column's default.
TIE = "'2026-01-01 00:00:00.123456789'"
NEXT = "'2026-01-01 00:00:00.123456790'"


def _cast(expr: str, t: str) -> str:
    return f"CAST({expr}, '{t.replace(chr(39), chr(92) + chr(39))}')"


def _allowed(env: Env, t: str) -> bool:
    try:
        env.ch(f"SELECT {_cast('NULL' if t.startswith('Nullable') else '[]', t)}")
    except Exception:
        return False
    return True


def create_every_table(env: Env, partition_by: str = "", **table: Any) -> dict[str, str]:
    """The table `every` (ts DateTime64(9) watermark, id UInt64 key, a column of every
    family, Nullable and in an Array where allowed, `nest` Nested) with its five rows, and
    the config offloading it (a view over both tiers too). Returns its columns' types by
    name, the FixedStrings dropped on the parquet transport."""
    db = env.ch_database
    # Nested is the `nest` column below; Nothing cannot be a table's column (a view's
    # NULL or [] is: test_types_live.py offloads one).
    families = {f: t for f, t in FAMILY_EXAMPLES.items() if f not in ("Nested", "Nothing")}
    assert set(families) <= set(EDGES), set(families) - set(EDGES)
    columns: dict[str, str] = {}  # name -> type
    for family, t in families.items():
        columns[f"c_{family}"] = t
        if _allowed(env, f"Nullable({t})"):
            columns[f"n_{family}"] = f"Nullable({t})"
        if _allowed(env, f"Array({t})"):
            columns[f"a_{family}"] = f"Array({t})"
    ddl = ", ".join(f"`{n}` {t}" for n, t in columns.items())
    env.ch(
        f"CREATE TABLE {db}.every (ts DateTime64(9, 'UTC'), id UInt64, {ddl}, "
        f"nest Nested(a Int32, b String)) ENGINE = MergeTree {partition_by} ORDER BY (ts, id)"
    )

    def row(ts: str, id_: int, pick: int) -> None:
        """Every column from its family's edges: 0 low, 1 high, 2 high then low."""
        values = []
        for name, t in columns.items():
            family = name.split("_", 1)[1]
            lo, hi = (_cast(e, families[family]) for e in EDGES[family])
            if name.startswith("c_"):
                values.append(_cast(lo if pick == 0 else hi, t))
            elif name.startswith("n_"):
                values.append(_cast(["NULL", hi, lo][pick], t))
            else:
                values.append(_cast(["[]", f"[{lo}, {hi}]", f"[{hi}]"][pick], t))
        names = ", ".join(f"`{n}`" for n in columns)
        nest = ["[], []", "[-1, 2147483647], ['', 'é']", "[0], ['x']"][pick]
        env.ch(
            f"INSERT INTO {db}.every (ts, id, {names}, `nest.a`, `nest.b`) SELECT "
            f"toDateTime64({ts}, 9, 'UTC'), {id_}, {', '.join(values)}, {nest}"
        )

    env.ch(f"INSERT INTO {db}.every (ts, id) VALUES ('1970-01-01 00:00:00.000000001', 0)")
    row(TIE, 1, 0)
    row(TIE, 2, 1)
    row(TIE, 3, 2)
    row(NEXT, 4, 1)
    fixed = [n for n, t in columns.items() if "FixedString" in t]
    env.write_config(
        [
            env.table(
                "every",
                watermark="ts",
                keys=["id"],
                batch_rows=2,
                uint64="decimal",
                view=True,
                **table,
            )
        ]
    )
    env.drop_for_parquet("every", *fixed)  # parquet refuses FixedString (and says so)
    if env.transport == "parquet":
        columns = {n: t for n, t in columns.items() if n not in fixed}
    return columns


def test_every_type_family_round_trips_exactly(env: Env) -> None:
    db = env.ch_database
    columns = create_every_table(env)
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].rows == 5

    # 1. verify: per day, ClickHouse's canonical text of every column against Iceberg's.
    verify = env.cli("verify", "cold.every")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "excludes" not in verify.stdout, verify.stdout  # every column was compared

    # 2. pyiceberg's scan, value by value (floats by their bits, so NaN equals NaN).
    assert env.assert_tiers_equal("cold.every") == 5
    rows = {r["id"]: r for r in env.iceberg_arrow(env.config().table("cold.every")).to_pylist()}
    high, low = rows[2], rows[1]
    assert (low["c_Int256"], high["c_UInt256"]) == (str(-(2**255)), str(2**256 - 1))
    assert str(high["c_UInt64"]) == "18446744073709551615"
    assert high["c_DateTime64"] == 9223372036854775807 and low["c_DateTime64"] < 0
    assert math.isnan(high["c_Float32"]) and low["c_Float32"] == -math.inf
    assert high["c_Time64"] == 3_599_999_999_999_000 and low["c_Time"] == -3_599_999
    assert high["c_QBit"][2] == 0.099609375 and math.isnan(high["c_QBit"][1])
    assert high["c_Decimal"] == f"{'9' * 66}.{'9' * 10}"
    assert (rows[1]["ts"], rows[4]["ts"]) == (1767225600123456789, 1767225600123456790)
    assert high["nest.b"] == ["", "é"] and rows[0]["c_Map"] == []

    # 3. Every data file names each column's Iceberg field id, nested fields too (the
    # parquet transport's pages too: their footer is given them), and Polars reads
    # every value as pyiceberg does (Daft: test_every_type_but_uuid_read_by_daft).
    assert assert_field_ids_everywhere(env, "cold.every") >= 1
    assert assert_read_equal(env, "polars", "cold.every") == 5

    # 4. Readers we did not write: every column read, its non-NULL count as ClickHouse's.
    ice = IcebergCatalog(env.config().catalog).load("cold.every")
    assert ice is not None
    counted = ", ".join(f'count("{n}")' for n in columns)
    got = independent_reads(
        ice.table.location(), ice.table.metadata_location, f"SELECT count(*), {counted} FROM {{t}}"
    )
    # (isNotNull: count() counts a Variant, Dynamic or Geometry holding NULL.)
    mine = ", ".join(f"countIf(isNotNull(`{n}`))" for n in columns)
    expected = ",".join(str(v) for v in env.ch(f"SELECT count(), {mine} FROM {db}.every")[0])
    names = ["*", *columns]
    for reader, line in zip(("icebergLocal", "DuckDB"), got, strict=True):
        wrong = [
            f"{n}: {a} != {b}"
            for n, a, b in zip(names, line.split(","), expected.split(","), strict=True)
            if a != b
        ]
        assert not wrong, (reader, wrong)
    # ... and values: the ticks, an int's extremes, text of wide numbers, vectors.
    values = (
        "SELECT sum(ts), sum(c_Int32), sum(length(c_Int256)), sum(length(c_Decimal)), "
        "count(DISTINCT c_UUID), sum(length(c_QBit)) FROM {t}"
    )
    got = independent_reads(ice.table.location(), ice.table.metadata_location, values)
    hot = env.ch(
        "SELECT sum(reinterpretAsInt64(ts)), sum(c_Int32), sum(length(toString(c_Int256))), "
        "sum(length(toString(c_Decimal))), count(DISTINCT c_UUID), "
        f"sum(length(CAST(c_QBit, 'Array(Float32)'))) FROM {db}.every"
    )[0]
    expected = ",".join(str(v) for v in hot)
    assert got == [expected, expected], (got, expected)


def test_every_type_but_uuid_read_by_daft(env: Env) -> None:
    """Daft maps columns by field id and reads no data file without them. Every type
    family but those holding a UUID (Daft 0.7.26 cannot plan a scan of any table with an
    Iceberg uuid column: "ArrowNotImplementedError: extension", whoever wrote it), on
    every transport: every data file carries the ids, and Daft reads every value as
    pyiceberg does (itself equal to ClickHouse, test above)."""
    db = env.ch_database
    columns = create_every_table(env)
    keep = [n for n, t in columns.items() if "UUID" not in t]
    names = ", ".join(f"`{n}`" for n in ["ts", "id", *keep, "nest.a", "nest.b"])
    env.ch(
        f"CREATE TABLE {db}.every_daft ENGINE = MergeTree ORDER BY (ts, id) "
        f"AS SELECT {names} FROM {db}.every"
    )
    table = env.config().table("cold.every")
    env.write_config(
        [
            env.table(
                "every_daft",
                watermark="ts",
                keys=["id"],
                batch_rows=2,
                uint64=table.uint64,
            )
        ]
    )
    report = env.once()
    assert report.ok and report.tables[0].rows == 5, report.summary()
    assert env.assert_tiers_equal("cold.every_daft") == 5
    assert assert_field_ids_everywhere(env, "cold.every_daft") >= 1
    assert assert_read_equal(env, "daft", "cold.every_daft") == 5
