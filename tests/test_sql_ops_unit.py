"""The ClickHouse SQL of verify, status, add, grants and repair (offloader.sql.verify,
system, profile, grants): exact text, odd identifiers quoted. Pure: no server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from offloader.ops.verify import Bucket, compare
from offloader.sql import grants, profile, system
from offloader.sql import verify as sql
from offloader.sql.scan import behind_query
from offloader.types import parse_type
from offloader.wire import ColumnPlan

TS = parse_type("DateTime64(6, 'UTC')")
ID = parse_type("UInt64")
ODD = "we`ird 'col\\"  # a backtick, a quote and a backslash
ODD_Q = "`we\\`ird 'col\\\\`"


def plan(name: str, type_: str) -> ColumnPlan:
    """A column as canonical_sql reads it (its name and type only)."""
    return cast(ColumnPlan, SimpleNamespace(name=name, ch_type=parse_type(type_)))


# verify


def test_canonical_text_of_scalars() -> None:
    assert sql.canonical_sql(plan("n", "Int32")) == "toString(`n`)"
    assert sql.canonical_sql(plan("f", "Float64")) == (
        "toString(reinterpretAsUInt64(toFloat64(`f`)))"
    )
    assert sql.canonical_sql(plan("b", "Bool")) == "toString(toUInt8(`b`))"
    assert sql.canonical_sql(plan("d", "Date32")) == "toString(toInt32(`d`))"
    assert sql.canonical_sql(plan("t", "DateTime64(3, 'UTC')")) == (
        "toString(toUnixTimestamp64Micro(toDateTime64(`t`, 6)))"
    )
    assert sql.canonical_sql(plan("h", "FixedString(4)")) == "hex(`h`)"
    assert sql.canonical_sql(plan(ODD, "Nullable(String)")) == (
        f"ifNull(toString({ODD_Q}), '\\\\N')"
    )


def test_canonical_text_of_containers() -> None:
    assert sql.canonical_sql(plan("a", "Array(Int32)")) == (
        "concat(toString(length(`a`)), ':', "
        "arrayStringConcat(arrayMap(__c0 -> toString(__c0), `a`), '\x1e'))"
    )
    assert sql.canonical_sql(plan("m", "Map(String, Bool)")) == (
        "concat(toString(length(`m`)), ':', arrayStringConcat(arrayMap((__k0, __v0) -> "
        "concat(toString(__k0), '\x1d', toString(toUInt8(__v0))), mapKeys(`m`), "
        "mapValues(`m`)), '\x1e'))"
    )
    assert sql.canonical_sql(plan("t", "Tuple(a Int8, b Nullable(Date))")) == (
        "concat('(', toString(tupleElement(`t`, 1)), '\x1d', "
        "ifNull(toString(toInt32(tupleElement(`t`, 2))), '\\\\N'), ')')"
    )
    assert sql.canonical_sql(plan("e", "Array(Nothing)")) is not None
    assert sql.canonical_sql(plan("x", "Tuple()")) is None  # not checksummed


def test_value_kind_is_the_same_word_on_both_sides() -> None:
    assert sql.value_kind(parse_type("Nullable(Float32)")) == "float"
    assert sql.value_kind(parse_type("Decimal(10, 2)")) == "decimal"
    assert sql.value_kind(parse_type("LowCardinality(String)")) == "bytes"
    assert sql.value_kind(parse_type("UUID")) == "text"


def test_buckets_are_utc_days_or_integer_ranges() -> None:
    assert sql.bucket_sql(ODD, TS) == f"toString(toDate32(toTimeZone({ODD_Q}, 'UTC')))"
    assert sql.bucket_sql("d", parse_type("Date")) == "toString(`d`)"
    assert sql.bucket_sql("n", ID) == "toString(intDiv(`n`, 1000000) * 1000000)"


def test_row_text_joins_columns_with_the_separator() -> None:
    assert sql.row_text_sql([]) == "''"
    assert sql.row_text_sql(["a"]) == "concat(a)"
    assert sql.row_text_sql(["a", "b", "c"]) == "concat(a, '\x1f', b, '\x1f', c)"


SETTINGS = (
    " SETTINGS session_timezone = '', date_time_output_format = 'simple', "
    "interval_output_format = 'numeric', output_format_json_quote_64bit_integers = 0, "
    "output_format_json_quote_64bit_floats = 0, output_format_json_quote_decimals = 0, "
    "output_format_json_quote_denormals = 0, output_format_json_escape_forward_slashes = 1, "
    "output_format_json_named_tuples_as_objects = 1, output_format_decimal_trailing_zeros = 0"
)


def test_day_sums_up_to_the_committed_position_in_a_day_range() -> None:
    order = [("ts", TS), (ODD, ID)]
    got = sql.day_sums_query("`db`.`t` FINAL", order, ["2026-01-02 00:00:00", 7], ["a", "b"],
                             "2026-01-01", "2026-02-01")  # fmt: skip
    bucket = "toString(toDate32(toTimeZone(`ts`, 'UTC')))"
    keyset = (
        "`ts` >= toDateTime64('2026-01-02 00:00:00', 6, 'UTC') AND "
        "(`ts` > toDateTime64('2026-01-02 00:00:00', 6, 'UTC') OR "
        f"(`ts` = toDateTime64('2026-01-02 00:00:00', 6, 'UTC') AND ({ODD_Q} > 7)))"
    )
    assert got == (
        f"SELECT {bucket} AS __offloader_day, count(), "
        "toString(sum(toUInt64(CRC32(concat(a, '\x1f', b))))) FROM `db`.`t` FINAL "
        f"WHERE NOT ({keyset}) AND {bucket} >= '2026-01-01' AND {bucket} < '2026-02-01' "
        "GROUP BY __offloader_day ORDER BY __offloader_day" + SETTINGS
    )


def test_day_sums_with_nothing_committed_read_no_row() -> None:
    got = sql.day_sums_query("t", [("n", ID)], None, [], since="a'b")
    assert got == (
        "SELECT toString(intDiv(`n`, 1000000) * 1000000) AS __offloader_day, count(), "
        "toString(sum(toUInt64(CRC32('')))) FROM t WHERE 0 "
        "GROUP BY __offloader_day ORDER BY __offloader_day" + SETTINGS
    )


def test_table_days_up_to_the_committed_position() -> None:
    assert sql.table_days_query("t", [("d", parse_type("Date"))], ["2026-01-05"]) == (
        "SELECT min(toString(`d`)), max(toString(`d`)), count() FROM t "
        "WHERE NOT (`d` >= toDate('2026-01-05') AND (`d` > toDate('2026-01-05')))"
    )


def test_compare_finds_missing_extra_changed_and_retained_days() -> None:
    hot = {
        "2026-01-01": Bucket(3, 1),  # retained: ClickHouse should not hold it
        "2026-01-03": Bucket(5, 9),
        "2026-01-04": Bucket(2, 4),
        "2026-01-05": Bucket(1, 1),
    }
    cold = {
        "2026-01-02": Bucket(4, 4),  # retained, Iceberg's alone: fine
        "2026-01-03": Bucket(4, 9),
        "2026-01-04": Bucket(2, 5),
        "2026-01-05": Bucket(1, 1),
        "2026-01-06": Bucket(2, 0),
    }
    found = compare(hot, cold, "2026-01-03")
    assert (found.days, found.rows, found.retained_days) == (4, 8, 2)
    assert found.differences == [
        "2026-01-01: ClickHouse holds 3 rows of a day hot_retention dropped from it: they "
        "arrived after the drop and are not in Iceberg",
        "2026-01-03: ClickHouse 5 rows, Iceberg 4 rows (missing 1)",
        "2026-01-04: 2 rows on both sides but values differ (checksum "
        "0000000000000004 vs 0000000000000005)",
        "2026-01-06: ClickHouse 0 rows, Iceberg 2 rows (extra 2)",
    ]
    assert compare(hot, hot, None).differences == []
    assert compare({}, {}, None).days == 0


# system.tables


def test_a_tables_row_of_system_tables() -> None:
    assert system.table_query("d'b", ODD) == (
        "SELECT engine, engine_full, sorting_key, partition_key, create_table_query, comment "
        "FROM system.tables WHERE database = 'd\\'b' AND name = 'we`ird \\'col\\\\'"
    )
    assert system.TABLE_COLUMNS.index("engine_full") == 1


def test_the_tables_offloader_can_read() -> None:
    assert system.readable_tables_query("m\\'x") == (
        "SELECT name FROM system.tables WHERE database = 'm\\\\\\'x' "
        "AND (engine LIKE '%MergeTree' OR engine = 'Distributed') "
        "AND NOT is_temporary ORDER BY name"
    )


# profile


def test_the_extent_of_the_rows_is_what_is_behind_no_position() -> None:
    assert behind_query("`db`.`t` FINAL", [(ODD, TS)], None) == (
        f"SELECT count(), toUnixTimestamp64Micro(toDateTime64(min({ODD_Q}), 6, 'UTC')), "
        "toUnixTimestamp64Micro(now64(6, 'UTC')), "
        f"toUnixTimestamp64Micro(toDateTime64(max({ODD_Q}), 6, 'UTC')) FROM `db`.`t` FINAL"
    )
    assert behind_query("t", [("d", parse_type("Date"))], None).startswith(
        "SELECT count(), toInt32(min(`d`)), toUnixTimestamp64Micro(now64(6, 'UTC')), "
        "toInt32(max(`d`)) FROM t"
    )


def test_ties_of_the_newest_day() -> None:
    assert profile.ties_query("r", "ts", ["ts", ODD]) == (
        "SELECT max(c) FROM (SELECT count() AS c FROM r WHERE `ts` >= "
        f"(SELECT max(`ts`) FROM r) - INTERVAL 1 DAY GROUP BY `ts`, {ODD_Q})"
    )


def test_misfits_of_uint64_and_strings() -> None:
    assert profile.misfits_query("`d`.`t`", [("big", "uint64"), (ODD, "strings")]) == (
        f"SELECT max(`big`) > 9223372036854775807, NOT min(isValidUTF8({ODD_Q})) FROM `d`.`t`"
    )
    with pytest.raises(KeyError):
        profile.misfits_query("t", [("x", "floats")])


# grants


def test_grant_statements() -> None:
    assert grants.grant_statement(grants.SELECT, "system.parts", "off`loader", "parts: why") == (
        "GRANT SELECT ON system.parts TO `off\\`loader`;  -- parts: why"
    )
    assert grants.grant_statement(grants.VIEWS, "`v`.`t`", "u", "views") == (
        "GRANT CREATE VIEW, DROP VIEW, SELECT ON `v`.`t` TO `u`;  -- views"
    )
    assert grants.postgres_grant('st"ate', "o'ff", "schema") == (
        'GRANT CONNECT, CREATE ON DATABASE "st""ate" TO "o\'ff";  -- schema'
    )
