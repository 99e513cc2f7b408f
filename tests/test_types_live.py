"""Every ClickHouse type of DESIGN.md's mapping through a real server into Iceberg."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from offloader.iceberg import IcebergCatalog
from tests.helpers import Env, independent_reads

pytestmark = pytest.mark.integration

ALL_TYPES = """
CREATE TABLE {db}.alltypes (
    ts   DateTime64(6, 'UTC'),
    id   UInt64,
    i8 Int8, i16 Int16, i32 Int32, u8 UInt8, u16 UInt16, u32 UInt32, i64 Int64, u64 UInt64,
    f32 Float32, f64 Float64,
    d   Decimal(38, 10), d9 Decimal(9, 2),
    s   String, fs FixedString(3),
    dd  Date, d32 Date32,
    dt  DateTime('Asia/Tokyo'), dt3 DateTime64(3, 'Europe/Paris'),
    b   Bool, u UUID,
    e8  Enum8('buy' = 1, 'sell' = 2), e16 Enum16('x' = 1000),
    lc  LowCardinality(String), lcn LowCardinality(Nullable(String)),
    n   Nullable(Int32), ns Nullable(String), nd Nullable(DateTime64(6, 'UTC')),
    arr Array(Int32), arrn Array(Nullable(String)),
    m   Map(String, Int64), t Tuple(a Int32, b String), tu Tuple(UUID, Float64),
    ip4 IPv4, ip6 IPv6, j JSON
) ENGINE = MergeTree ORDER BY (ts, id)
"""

ROWS = """
INSERT INTO {db}.alltypes VALUES
('2026-01-01 00:00:00.000001', 1, -128, -32768, -2147483648, 255, 65535, 4294967295,
 -9223372036854775808, 9223372036854775807, 1.5, nan, -12345678901234567890.0123456789, 1234567.89,
 'héllo', 'abc', '1970-01-01', '1900-01-01', '2026-01-01 09:00:00', '2026-01-01 01:00:00.123',
 true, '00000000-0000-0000-0000-000000000001', 'buy', 'x', 'BTC', NULL, NULL, NULL, NULL,
 [1, 2, 3], ['a', NULL], {{'k': 1}}, (1, 'one'), ('00000000-0000-0000-0000-000000000002', -inf),
 '1.2.3.4', '::1', '{{"a": {{"b": 1}}}}'),
('2026-01-01 00:00:00.000001', 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, inf, 0, 0,
 '', 'xyz', '2149-06-06', '2299-12-31', '2106-01-01 00:00:00', '2262-01-01 00:00:00.999',
 false, '00000000-0000-0000-0000-000000000003', 'sell', 'x', '', 'v', 7, '', '2026-01-01 00:00:00',
 [], [], {{}}, (0, ''), ('00000000-0000-0000-0000-000000000004', 0), '0.0.0.0', '::ffff:1.2.3.4',
 '{{}}')
"""


def test_every_mapped_type_round_trips(env: Env) -> None:
    env.ch(ALL_TYPES.format(db=env.ch_database))
    env.ch(ROWS.format(db=env.ch_database))
    env.write_config([env.table("alltypes", watermark="ts", keys=["id"])])
    env.drop_for_parquet("alltypes", "fs")
    report = env.once()
    assert report.ok, report.summary()
    assert env.assert_tiers_equal("cold.alltypes") == 2
    rows = env.iceberg_arrow(env.config().table("cold.alltypes")).to_pylist()
    first, second = rows
    assert first["ts"] == dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)
    assert first["i64"] == -(2**63)
    assert first["u64"] == 2**63 - 1
    assert first["u32"] == 4294967295
    assert first["d"] == decimal.Decimal("-12345678901234567890.0123456789")
    assert first["s"] == "héllo"
    assert first.get("fs", b"abc") == b"abc"
    assert first["dd"] == dt.date(1970, 1, 1)
    assert first["d32"] == dt.date(1900, 1, 1)
    assert first["dt"] == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)  # 09:00 Tokyo
    assert first["dt3"] == dt.datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=dt.UTC)
    assert first["u"] == uuid.UUID(int=1)
    assert first["e8"] == "buy" and first["e16"] == "x"
    assert first["lcn"] is None and first["n"] is None and first["nd"] is None
    assert first["arr"] == [1, 2, 3] and first["arrn"] == ["a", None]
    assert first["m"] == [("k", 1)]
    assert first["t"] == {"a": 1, "b": "one"}
    assert first["tu"] == {"_1": uuid.UUID(int=2), "_2": float("-inf")}
    assert first["ip4"] == "1.2.3.4" and first["ip6"] == "::1"
    assert second["ip6"] == "::ffff:1.2.3.4"  # ClickHouse's text form, not Python's
    assert first["j"] == '{"a":{"b":1}}'
    assert first["f64"] != first["f64"]  # NaN stays NaN
    assert second["f64"] == float("inf")
    assert second["d32"] == dt.date(2299, 12, 31)
    assert second["ns"] == "" and second["lc"] == ""


def test_uint64_above_int64_fails_naming_column_and_value(env: Env) -> None:
    env.ch(
        f"CREATE TABLE {env.ch_database}.big (ts DateTime, id UInt64, v UInt64) "
        "ENGINE = MergeTree ORDER BY (ts, id)"
    )
    env.ch(
        f"INSERT INTO {env.ch_database}.big VALUES ('2026-01-01 00:00:00', 1, 18446744073709551615)"
    )
    env.write_config([env.table("big", watermark="ts", keys=["id"])])
    report = env.once()
    assert not report.ok
    error = report.tables[0].error or ""
    assert "'v'" in error and "18446744073709551615" in error
    # The option changes the Iceberg type (long -> decimal(20,0)), so it takes a new target.
    env.write_config(
        [env.table("big", watermark="ts", keys=["id"], uint64="decimal", target="cold.big2")]
    )
    assert env.once().ok
    assert env.assert_tiers_equal("cold.big2") == 1


WIDE = """
CREATE TABLE {db}.wide (
    ts DateTime64(6, 'UTC'), id UInt64,
    i128 Int128, u128 UInt128, i256 Int256, u256 UInt256,
    d76 Decimal(76, 10), dn Nullable(Decimal256(2)), ai Array(Nullable(Int128)),
    bf BFloat16
) ENGINE = MergeTree ORDER BY (ts, id)
"""

WIDE_ROWS = """
INSERT INTO {db}.wide VALUES
('2026-01-01 00:00:00', 1, -170141183460469231731687303715884105728,
 340282366920938463463374607431768211455,
 -57896044618658097711785492504343953926634992332820282019728792003956564819968,
 115792089237316195423570985008687907853269984665640564039457584007913129639935,
 -123456789012345678901234567890123456789012345678901234567890.1234567890, NULL,
 [1, NULL, -170141183460469231731687303715884105728], 1.5),
('2026-01-01 00:00:01', 2, 0, 0, 0, 0, 0, 12345678901234567890123456789012345678901.25, [], -inf)
"""


def test_wide_integers_and_decimals_are_exact_text_bfloat16_a_float(env: Env) -> None:
    env.ch(WIDE.format(db=env.ch_database))
    env.ch(WIDE_ROWS.format(db=env.ch_database))
    env.write_config([env.table("wide", watermark="ts", keys=["id"])])
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    rows = env.iceberg_arrow(env.config().table("cold.wide")).to_pylist()
    first, second = sorted(rows, key=lambda r: r["id"])
    assert first["i128"] == str(-(2**127)) and first["u128"] == str(2**128 - 1)
    assert first["i256"] == str(-(2**255)) and first["u256"] == str(2**256 - 1)
    assert first["d76"] == "-123456789012345678901234567890123456789012345678901234567890.123456789"
    assert first["dn"] is None and second["dn"] == "12345678901234567890123456789012345678901.25"
    assert first["ai"] == ["1", None, str(-(2**127))] and second["ai"] == []
    assert first["bf"] == 1.5 and second["bf"] == float("-inf")
    # The text is ClickHouse's own: what a reader compares is what ClickHouse shows.
    shown = env.ch(f"SELECT toString(d76), toString(u256) FROM {env.ch_database}.wide WHERE id = 1")
    assert [first["d76"], first["u256"]] == list(shown[0])
    # Engines we did not write read the same text, and can turn it back into the number.
    ice = IcebergCatalog(env.config().catalog).load("cold.wide")
    assert ice is not None
    query = "SELECT max(u256), min(length(i256)), sum(bf) FROM {t} WHERE id = 1"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    assert got[0] == f'"{2**256 - 1}",78,1.5', got
    assert got[1] == f"{2**256 - 1},78,1.5", got


FINE = """
CREATE TABLE {db}.fine (
    ts DateTime64(6, 'UTC'), id UInt64,
    ns DateTime64(9, 'UTC'), n7 Nullable(DateTime64(7, 'UTC')), ans Array(DateTime64(9)),
    v Variant(String, UInt64), dy Dynamic, aj Array(JSON), mj Map(String, JSON),
    ad Array(Dynamic)
) ENGINE = MergeTree ORDER BY (ts, id)
"""

FINE_ROWS = """
INSERT INTO {db}.fine VALUES
('2026-01-01 00:00:00', 1, '2026-01-01 00:00:00.123456789', '2299-12-31 23:59:59.9999999',
 ['1900-01-01 00:00:00.000000001', '2262-04-11 23:47:16.854775807'], 'text', 42,
 ['{{"a": 1}}', '{{}}'], {{'k': '{{"b": [1, 2]}}'}}, [1, 'x', NULL]),
('2026-01-01 00:00:01', 2, '1970-01-01 00:00:00', NULL, [], NULL, NULL, [], {{}}, []),
('2026-01-01 00:00:02', 3, '2026-01-01 00:00:00.123456788', '1970-01-01 00:00:00.0000001',
 [], '', '', [], {{}}, [''])
"""


def test_nanosecond_times_variant_dynamic_and_nested_json(env: Env) -> None:
    env.ch(FINE.format(db=env.ch_database))
    env.ch(FINE_ROWS.format(db=env.ch_database))
    env.write_config([env.table("fine", watermark="ts", keys=["id"])])
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    rows = sorted(
        env.iceberg_arrow(env.config().table("cold.fine")).to_pylist(), key=lambda r: r["id"]
    )
    first, second, third = rows
    # DateTime64(P > 6): the value's own ticks (10^-P s since 1970 UTC), exact.
    assert first["ns"] == 1767225600123456789 and third["ns"] == 1767225600123456788
    assert first["n7"] == 104137919999999999 and second["n7"] is None
    assert first["ans"] == [-2208988799999999999, 9223372036854775807]
    # Variant and Dynamic: ClickHouse's text; NULL stays NULL, apart from ''.
    assert (first["v"], second["v"], third["v"]) == ("text", None, "")
    assert (first["dy"], second["dy"], third["dy"]) == ("42", None, "")
    assert first["ad"] == ["1", "x", None] and third["ad"] == [""]
    assert first["aj"] == ['{"a":1}', "{}"] and first["mj"] == [("k", '{"b":[1,2]}')]
    # Engines we did not write read the same values.
    ice = IcebergCatalog(env.config().catalog).load("cold.fine")
    assert ice is not None
    query = "SELECT count(*), sum(ns), count(v), count(dy) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    expected = f"3,{1767225600123456789 + 1767225600123456788},2,2"
    assert got == [expected, expected], got
    # The same table with the nanosecond column as its watermark (tests/test_nanos.py).
    env.write_config([env.table("fine", watermark="ns", keys=["id"], target="cold.fine2")])
    again = env.once()
    assert again.ok and again.tables[0].rows == 3, again.summary()
    assert env.assert_tiers_equal("cold.fine2") == 3


TIMES = """
CREATE TABLE {db}.times (
    ts DateTime64(6, 'UTC'), id UInt64,
    t Time, t3 Time64(3), t9 Nullable(Time64(9)), at Array(Time64(6)),
    iv IntervalDay, ms Map(String, IntervalSecond)
) ENGINE = MergeTree ORDER BY (ts, id)
"""
TIMES_ROWS = """
INSERT INTO {db}.times VALUES
('2026-01-01 00:00:00', 1, '-999:59:59', '-999:59:59.999', NULL, [], toIntervalDay(-5),
 map('a', toIntervalSecond(86400))),
('2026-01-01 00:00:01', 2, '999:59:59', '12:00:00.001', '23:59:59.999999999',
 ['01:00:00.000001', '-00:00:00.5'], toIntervalDay(0), map())
"""


def test_times_intervals_and_nothing_are_stored_as_exact_counts(env: Env) -> None:
    """Time (seconds), Time64 (nanoseconds) and intervals (their unit) as signed longs,
    over ClickHouse's whole ±999:59:59; Nullable(Nothing) and Array(Nothing) (a view's
    NULL and []) as string. Read back by pyiceberg, `verify`, icebergLocal and DuckDB."""
    db = env.ch_database
    env.ch(TIMES.format(db=db))
    env.ch(TIMES_ROWS.format(db=db))
    env.ch(f"CREATE VIEW {db}.times_v AS SELECT *, NULL AS n, [] AS an FROM {db}.times")
    env.write_config([env.table("times_v", watermark="ts", keys=["id"], audit_days=0)])
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    table = env.config().table("cold.times_v")
    first, second = sorted(env.iceberg_arrow(table).to_pylist(), key=lambda r: r["id"])
    hours = 999 * 3600 + 59 * 60 + 59
    assert (first["t"], second["t"]) == (-hours, hours)
    assert (first["t3"], second["t3"]) == (-(hours * 10**9 + 999_000_000), 43_200_001_000_000)
    assert (first["t9"], second["t9"]) == (None, 86_399_999_999_999)
    assert second["at"] == [3_600_000_001_000, -500_000_000]
    assert (first["iv"], second["iv"]) == (-5, 0)
    assert first["ms"] == [("a", 86400)] and second["ms"] == []
    assert (first["n"], first["an"]) == (None, [])
    ice = IcebergCatalog(env.config().catalog).load("cold.times_v")
    assert ice is not None
    docs = {f.name: f.doc for f in ice.table.schema().fields}
    assert "nanoseconds" in (docs["t3"] or "") and "days" in (docs["iv"] or "")
    query = "SELECT count(*), sum(t), sum(t3), sum(iv), count(n) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    expected = f"2,0,{-(hours * 10**9 + 999_000_000) + 43_200_001_000_000},-5,0"
    assert got == [expected, expected], got


GEO_TABLE = """
CREATE TABLE {db}.geo (
    ts DateTime64(6, 'UTC'), id UInt64,
    p Point, r Ring, l LineString, mp MultiPoint, pg Polygon, ml MultiLineString,
    mpg MultiPolygon, g Geometry,
    n Nested(a Int32, b String),
    q QBit(Float32, 3), qb QBit(BFloat16, 2), aq Array(QBit(Float64, 2))
) ENGINE = MergeTree ORDER BY (ts, id)
"""
GEO_ROWS = """
INSERT INTO {db}.geo VALUES
('2026-01-01 00:00:00', 1, (1.5, -2), [(0, 0), (1, 0), (1, 1), (0, 0)], [(0, 0), (2, 2)],
 [(3, 3)], [[(0, 0), (4, 0), (4, 4), (0, 0)], [(1, 1), (2, 1), (2, 2), (1, 1)]],
 [[(0, 0), (1, 1)], [(2, 2), (3, 3)]], [[[(0, 0), (1, 0), (1, 1), (0, 0)]]], (5.5, 6.5),
 [7, 8], ['x', 'y'], [1.5, -2, 1e30], [0.1, 3], [[1e300, -0.5]]),
('2026-01-01 00:00:01', 2, (0, 0), [], [], [], [], [], [], NULL, [], [], [0, 0, 0], [0, 0], [])
"""


def test_geo_types_and_nested_round_trip(env: Env) -> None:
    """Geo types as structs of (x, y) doubles and lists of them, Geometry as WKT text,
    a Nested column flattened by ClickHouse (`n.a`, `n.b` arrays) as two lists, one
    not flattened as a list of structs, QBit vectors as lists of floats or doubles."""
    db = env.ch_database
    env.ch(GEO_TABLE.format(db=db))
    env.ch(GEO_ROWS.format(db=db))
    env.ch(
        f"CREATE TABLE {db}.nest (ts DateTime64(6, 'UTC'), id UInt64, "
        "n Nested(a Int32, b Enum8('x' = 1, 'y' = 2), t DateTime64(3, 'UTC'))) "
        "ENGINE = MergeTree ORDER BY (ts, id) SETTINGS flatten_nested = 0"
    )
    env.ch(
        f"INSERT INTO {db}.nest VALUES ('2026-01-01 00:00:00', 1, "
        "[(1, 'x', '2026-01-01 00:00:00.001'), (2, 'y', '1960-01-01 00:00:00')]), "
        "('2026-01-01 00:00:01', 2, [])"
    )
    env.write_config(
        [
            env.table("geo", watermark="ts", keys=["id"]),
            env.table("nest", watermark="ts", keys=["id"]),
        ]
    )
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    first, second = sorted(
        env.iceberg_arrow(env.config().table("cold.geo")).to_pylist(), key=lambda r: r["id"]
    )
    assert first["p"] == {"x": 1.5, "y": -2.0} and second["p"] == {"x": 0.0, "y": 0.0}
    assert first["l"] == [{"x": 0.0, "y": 0.0}, {"x": 2.0, "y": 2.0}]
    assert len(first["pg"]) == 2 and first["pg"][1][2] == {"x": 2.0, "y": 2.0}
    assert first["mpg"][0][0][1] == {"x": 1.0, "y": 0.0}
    assert (first["g"], second["g"]) == ("POINT(5.5 6.5)", None)
    assert (first["n.a"], first["n.b"]) == ([7, 8], ["x", "y"])
    # QBit: the vector at full precision (BFloat16 0.1 is 0.099609375 exactly).
    assert first["q"] == [1.5, -2.0, pytest.approx(1e30, rel=1e-7)] and second["q"] == [0, 0, 0]
    assert first["qb"] == [0.099609375, 3.0] and first["aq"] == [[1e300, -0.5]]
    assert second["aq"] == []
    # Nested, not flattened: a list of structs.
    nested = sorted(
        env.iceberg_arrow(env.config().table("cold.nest")).to_pylist(), key=lambda r: r["id"]
    )
    assert nested[0]["n"] == [
        {"a": 1, "b": "x", "t": dt.datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=dt.UTC)},
        {"a": 2, "b": "y", "t": dt.datetime(1960, 1, 1, tzinfo=dt.UTC)},
    ]
    assert nested[1]["n"] == []
    ice = IcebergCatalog(env.config().catalog).load("cold.geo")
    assert ice is not None
    query = "SELECT count(*), sum(p.x), count(g), sum(length(q)), sum(length(aq)) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    assert got == ["2,1.5,1,6,1", "2,1.5,1,6,1"], got
