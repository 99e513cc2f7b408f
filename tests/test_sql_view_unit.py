"""The view's SQL builders (offloader/sql/view.py) without servers: the exact text of
each, and the quoting of odd names and values."""

from __future__ import annotations

from offloader.sql import view as sql
from offloader.types import parse_type

PIN = "metadata/00003-a.metadata.json"
ORDER = [("ts", parse_type("DateTime64(6, 'UTC')")), ("id", parse_type("UInt64"))]
TS = "2025-01-01 00:00:00.5"
TS_SQL = "toDateTime64('2025-01-01 00:00:00.5', 6, 'UTC')"


def test_view_names_are_quoted_part_by_part() -> None:
    assert sql.view_name("market.trades_all") == "`market`.`trades_all`"
    assert sql.view_name("trades_all") == "`trades_all`"
    assert sql.view_name("we`ird.vi'ew") == "`we\\`ird`.`vi'ew`"


def test_the_cold_side_is_pinned_to_one_metadata_file() -> None:
    assert sql.pinned_metadata(PIN) == (
        "SETTINGS iceberg_metadata_file_path = 'metadata/00003-a.metadata.json'"
    )
    assert sql.iceberg_local("/w/cold/t", PIN) == (
        "icebergLocal('/w/cold/t', SETTINGS iceberg_metadata_file_path = "
        "'metadata/00003-a.metadata.json')"
    )
    assert sql.iceberg_local("/w/c o'ld/t", "metadata/it's.json") == (
        "icebergLocal('/w/c o\\'ld/t', SETTINGS iceberg_metadata_file_path = "
        "'metadata/it\\'s.json')"
    )
    assert sql.iceberg_s3("cold_s3", "http://minio:9000/bucket/t/", PIN) == (
        "icebergS3(cold_s3, url = 'http://minio:9000/bucket/t/', SETTINGS "
        "iceberg_metadata_file_path = 'metadata/00003-a.metadata.json')"
    )
    assert sql.describe_query("icebergLocal('/w', x)") == "DESCRIBE TABLE icebergLocal('/w', x)"


def test_the_ways_back_of_stored_forms() -> None:
    ticks = sql.BACK_LEAVES["DateTime64Ticks"](parse_type("DateTime64(9, 'UTC')"))
    assert ticks.format("`ts`") == "reinterpret(`ts`, 'DateTime64(9)')"
    assert sql.BACK_LEAVES["Time64"].format("`t`") == "reinterpret(`t`, 'Decimal64(9)')"


def test_column_expressions() -> None:
    assert sql.cast_as("`id`", "UInt64", "id") == "CAST(`id`, 'UInt64') AS `id`"
    assert sql.cast_as(sql.NULL, "Enum8('b' = 1)", "si`de") == (
        "CAST(NULL, 'Enum8(\\'b\\' = 1)') AS `si\\`de`"
    )
    assert sql.type_default("Int8") == "defaultValueOfTypeName('Int8')"
    assert sql.type_default("Enum8('a' = 1)") == "defaultValueOfTypeName('Enum8(\\'a\\' = 1)')"
    assert sql.or_default("`venue`", "String", "'x'") == (
        "ifNull(CAST(`venue`, 'Nullable(String)'), 'x')"
    )
    assert sql.EMPTY_ARRAY == "[]"


def test_a_columns_default_is_cast_and_evaluated() -> None:
    value = sql.cast_default("'b'", "Enum8('b' = 1)")
    assert value == "CAST(('b'), 'Enum8(\\'b\\' = 1)')"
    assert sql.value_query(value) == "SELECT CAST(('b'), 'Enum8(\\'b\\' = 1)')"


def test_each_tier_and_both() -> None:
    hot = sql.hot_select(["`ts`", "`id`"], "`market`.`trades` FINAL")
    assert hot == "SELECT `ts`, `id` FROM `market`.`trades` FINAL"
    after = sql.hot_after(["`ts`", "`id`"], "`market`.`trades`", ORDER, (TS, 9))
    assert after == (
        f"SELECT `ts`, `id` FROM `market`.`trades` WHERE `ts` >= {TS_SQL} AND (`ts` > "
        f"{TS_SQL} OR (`ts` = {TS_SQL} AND (`id` > 9)))"
    )
    cold = sql.cold_select(["`ts`", "CAST(`id`, 'UInt64') AS `id`"], "icebergLocal('/w', x)")
    assert cold == "SELECT `ts`, CAST(`id`, 'UInt64') AS `id` FROM icebergLocal('/w', x)"
    assert sql.union_all("SELECT 1", "SELECT 2") == "SELECT 1\nUNION ALL\nSELECT 2"


def test_create_view() -> None:
    assert sql.create_view("market.v", "SELECT 1", "offloader: it's", invoker=False) == (
        "CREATE OR REPLACE VIEW `market`.`v` DEFINER = CURRENT_USER SQL SECURITY DEFINER AS\n"
        "SELECT 1\nCOMMENT 'offloader: it\\'s'"
    )
    assert sql.create_view("we`ird.v", "SELECT 1", "c", invoker=True) == (
        "CREATE OR REPLACE VIEW `we\\`ird`.`v` SQL SECURITY INVOKER AS\nSELECT 1\nCOMMENT 'c'"
    )
    assert sql.sql_security(False) == "DEFINER = CURRENT_USER SQL SECURITY DEFINER"
    assert sql.sql_security(True) == "SQL SECURITY INVOKER"


def test_a_view_over_both_tiers() -> None:
    hot = sql.hot_after(["`ts`", "`id`"], "`market`.`trades`", ORDER, (TS, 9))
    cold = sql.cold_select(
        ["`ts`", sql.cast_as("`id`", "UInt64", "id")], sql.iceberg_local("/w", PIN)
    )
    ddl = sql.create_view("market.all", sql.union_all(hot, cold), "offloader: c", invoker=False)
    assert ddl == (
        "CREATE OR REPLACE VIEW `market`.`all` DEFINER = CURRENT_USER SQL SECURITY DEFINER AS\n"
        f"SELECT `ts`, `id` FROM `market`.`trades` WHERE `ts` >= {TS_SQL} AND (`ts` > {TS_SQL} "
        f"OR (`ts` = {TS_SQL} AND (`id` > 9)))\n"
        "UNION ALL\n"
        "SELECT `ts`, CAST(`id`, 'UInt64') AS `id` FROM icebergLocal('/w', SETTINGS "
        "iceberg_metadata_file_path = 'metadata/00003-a.metadata.json')\n"
        "COMMENT 'offloader: c'"
    )


def test_drop_view() -> None:
    assert sql.drop_view("market.v") == "DROP VIEW IF EXISTS `market`.`v`"
    assert sql.drop_view("we`ird.vi'ew") == "DROP VIEW IF EXISTS `we\\`ird`.`vi'ew`"


def test_column_defaults_query() -> None:
    assert sql.column_defaults_query("mar'ket", "tr`ades", ["n", "o'dd"]) == (
        "SELECT name, type, default_expression FROM system.columns WHERE database = "
        "'mar\\'ket' AND table = 'tr`ades' AND name IN ('n', 'o\\'dd') AND default_kind IN "
        "('DEFAULT', 'MATERIALIZED') AND default_expression != ''"
    )


def test_view_on_nodes_query() -> None:
    assert sql.view_on_nodes_query("we'ird", "market.v", "offloader: it's") == (
        "SELECT (SELECT count() FROM (SELECT DISTINCT host_address, port FROM (SELECT "
        "shard_num, replica_num, host_name, host_address, port, is_local FROM system.clusters "
        "WHERE cluster = 'we\\'ird' ORDER BY shard_num, replica_num))), (SELECT count() FROM "
        "clusterAllReplicas('we\\'ird', system.tables) WHERE database = 'market' AND name = "
        "'v' AND comment = 'offloader: it\\'s')"
    )
    # A view named without its database: database = '' (as before).
    assert "WHERE database = '' AND name = 'v' AND" in sql.view_on_nodes_query("c", "v", "x")


def test_existence_queries() -> None:
    assert sql.database_exists_query("mar'ket") == (
        "SELECT count() FROM system.databases WHERE name = 'mar\\'ket'"
    )
    assert sql.named_collection_exists_query("cold_s3") == (
        "SELECT count() FROM system.named_collections WHERE name = 'cold_s3'"
    )


def test_view_format() -> None:
    # Changing it replaces every view once: only with a change of the SQL above.
    assert sql.VIEW_FORMAT == "2"
