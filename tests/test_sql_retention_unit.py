"""Hot retention's ClickHouse SQL (offloader.sql.retention), without servers: the exact
statements that park, put back and drop a partition, the reads of system.parts,
system.detached_parts and system.tables, and the quoting of odd names and ids."""

from __future__ import annotations

from offloader.sql import retention as sql

# A database, table and partition id that need quoting: a backtick, a quote, a backslash.
ODD_DB, ODD_TABLE = "my-db", "t`x"
ODD_PID = "2025'05\\01"


def test_detach_partition() -> None:
    assert sql.detach_partition("market", "trades", "20250501") == (
        "ALTER TABLE `market`.`trades` DETACH PARTITION ID '20250501'"
    )


def test_attach_part() -> None:
    assert sql.attach_part("market", "trades", "20250501_1_1_0") == (
        "ALTER TABLE `market`.`trades` ATTACH PART '20250501_1_1_0'"
    )


def test_drop_detached_part() -> None:
    assert sql.drop_detached_part("market", "trades", "20250501_1_1_0") == (
        "ALTER TABLE `market`.`trades` DROP DETACHED PART '20250501_1_1_0' "
        "SETTINGS allow_drop_detached = 1"
    )


def test_move_partition_both_ways() -> None:
    assert sql.move_partition("market", "trades", "trades_retiring", "20250501") == (
        "ALTER TABLE `market`.`trades` MOVE PARTITION ID '20250501' "
        "TO TABLE `market`.`trades_retiring`"
    )
    assert sql.move_partition("market", "trades_retiring", "trades", "20250501") == (
        "ALTER TABLE `market`.`trades_retiring` MOVE PARTITION ID '20250501' "
        "TO TABLE `market`.`trades`"
    )


def test_drop_partition() -> None:
    assert sql.drop_partition("market", "trades_retiring", "20250501") == (
        "ALTER TABLE `market`.`trades_retiring` DROP PARTITION ID '20250501'"
    )


def test_odd_identifiers_and_partition_ids_are_quoted() -> None:
    table = "`my-db`.`t\\`x`"
    pid = "'2025\\'05\\\\01'"
    assert sql.detach_partition(ODD_DB, ODD_TABLE, ODD_PID) == (
        f"ALTER TABLE {table} DETACH PARTITION ID {pid}"
    )
    assert sql.attach_part(ODD_DB, ODD_TABLE, "p'1") == f"ALTER TABLE {table} ATTACH PART 'p\\'1'"
    assert sql.drop_detached_part(ODD_DB, ODD_TABLE, "p'1") == (
        f"ALTER TABLE {table} DROP DETACHED PART 'p\\'1' SETTINGS allow_drop_detached = 1"
    )
    assert sql.move_partition(ODD_DB, ODD_TABLE, "r`", ODD_PID) == (
        f"ALTER TABLE {table} MOVE PARTITION ID {pid} TO TABLE `my-db`.`r\\``"
    )
    assert sql.drop_partition(ODD_DB, ODD_TABLE, ODD_PID) == (
        f"ALTER TABLE {table} DROP PARTITION ID {pid}"
    )
    assert sql.sync_replica_queue_command(ODD_DB, ODD_TABLE) == f"SYSTEM SYNC REPLICA {table}"


def test_active_parts_query() -> None:
    assert sql.active_parts_query("market", "trades") == (
        "SELECT partition_id, partition, name, hash_of_all_files, rows FROM system.parts "
        "WHERE database = 'market' AND table = 'trades' AND active"
    )
    assert "database = 'my-db' AND table = 't`x'" in sql.active_parts_query(ODD_DB, ODD_TABLE)


def test_detached_parts_query() -> None:
    assert sql.detached_parts_query("market", "trades", "20250501") == (
        "SELECT name FROM system.detached_parts WHERE database = 'market' AND "
        "table = 'trades' AND partition_id = '20250501'"
    )
    assert sql.detached_parts_query("d'b", "t", ODD_PID).endswith(
        "WHERE database = 'd\\'b' AND table = 't' AND partition_id = '2025\\'05\\\\01'"
    )


def test_partition_content_query_with_and_without_final() -> None:
    hashed = "cityHash64(tuple(`id`))"
    assert sql.partition_content_query("market", "trades", "20250501", hashed, False) == (
        "SELECT count(), toString(sum(cityHash64(tuple(`id`)))) FROM `market`.`trades` "
        "WHERE _partition_id = '20250501'"
    )
    assert sql.partition_content_query("market", "trades", "20250501", hashed, True) == (
        "SELECT count(), toString(sum(cityHash64(tuple(`id`)))) FROM `market`.`trades` FINAL "
        "WHERE _partition_id = '20250501'"
    )


def test_sync_replica_queue_command_waits_for_the_whole_queue() -> None:
    assert sql.sync_replica_queue_command("market", "trades") == (
        "SYSTEM SYNC REPLICA `market`.`trades`"
    )


def test_system_tables_reads() -> None:
    assert sql.partition_key_query("market", "trades") == (
        "SELECT partition_key FROM system.tables WHERE database = 'market' AND name = 'trades'"
    )
    assert sql.engine_query("market", "trades") == (
        "SELECT engine, engine_full, partition_key FROM system.tables WHERE "
        "database = 'market' AND name = 'trades'"
    )
    assert sql.engine_query("d'b", "t\\") == (
        "SELECT engine, engine_full, partition_key FROM system.tables WHERE "
        "database = 'd\\'b' AND name = 't\\\\'"
    )


def test_now_query() -> None:
    assert sql.now_query() == "SELECT toUnixTimestamp64Micro(now64(6, 'UTC'))"


def test_retiring_ddl_of_a_replicated_and_a_plain_table() -> None:
    zk = "ReplicatedMergeTree('/clickhouse/tables/{shard}/m/t', '{replica}')"
    assert sql.retiring_ddl("m", "t", "t_retiring", f"{zk} ORDER BY id") == (
        "CREATE TABLE `m`.`t_retiring` AS `m`.`t` ENGINE = "
        "ReplicatedMergeTree('/clickhouse/tables/{shard}/m/t_retiring', '{replica}') "
        "ORDER BY id"
    )
    plain = "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id)"
    assert sql.retiring_ddl("m", "t", "r", plain) == (
        f"CREATE TABLE `m`.`r` AS `m`.`t` ENGINE = {plain}"
    )


def test_the_retiring_table_has_a_zookeeper_path_of_its_own() -> None:
    engine = "ReplicatedMergeTree('/clickhouse/tables/{shard}/trades/', '{replica}') ORDER BY ts"
    assert sql.retiring_ddl("m", "trades", "trades_retiring", engine) == (
        "CREATE TABLE `m`.`trades_retiring` AS `m`.`trades` ENGINE = ReplicatedMergeTree("
        "'/clickhouse/tables/{shard}/trades_retiring', '{replica}') ORDER BY ts"
    )
    # {table} expands to the retiring table's own name: the path is its own already
    kept = "ReplicatedMergeTree('/t/{shard}/{table}', '{replica}') ORDER BY ts"
    assert sql.retiring_ddl("m", "x", "x_r", kept).endswith(
        "ENGINE = ReplicatedMergeTree('/t/{shard}/{table}', '{replica}') ORDER BY ts"
    )
    assert sql.retiring_ddl("m", "x", "x_r", "ReplicatedMergeTree('', 'r')").endswith(
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/x_r', 'r')"
    )
    # a quote in the path stays escaped as the engine clause had it
    odd = "ReplicatedMergeTree( '/t/it\\'s', '{replica}') ORDER BY ts"
    assert sql.retiring_ddl("m", "x", "x_r", odd).endswith(
        "ENGINE = ReplicatedMergeTree('/t/it\\'s_retiring', '{replica}') ORDER BY ts"
    )


def test_remove_ttl() -> None:
    assert sql.remove_ttl("d b", "t`") == "ALTER TABLE `d b`.`t\\`` REMOVE TTL"
