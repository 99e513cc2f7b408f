"""ClickHouse SQL of hot retention: reading a table's partitions, parts and content,
parking a partition (DETACH, or MOVE to the retiring table), putting it back, dropping
it, and the retiring table's DDL. Pure: no driver.

Every table is named by its database and name (quoted here); partition ids and part
names are string literals (`quote_string`), whatever characters they hold."""

from __future__ import annotations

import re

from offloader.sql.system import table_row_query
from offloader.sql.text import NOW_MICROS, qualified, quote_string

# --- reading: the server's clock, the table's definition, its parts and content ---------


def now_query() -> str:
    """The server's current time, in microseconds since 1970 (UTC)."""
    return f"SELECT {NOW_MICROS}"


def partition_key_query(database: str, table: str) -> str:
    """The table's partition key (system.tables; '' when it is not partitioned)."""
    return table_row_query(database, table, "partition_key")


def engine_query(database: str, table: str) -> str:
    """The table's engine, engine clause and partition key (system.tables; no row when
    the table does not exist or is not granted)."""
    return table_row_query(database, table, "engine, engine_full, partition_key")


def _of_table(database: str, table: str) -> str:
    """The rows of system.parts and system.detached_parts that are the table's."""
    return f"database = {quote_string(database)} AND table = {quote_string(table)}"


def active_parts_query(database: str, table: str) -> str:
    """The table's active parts: partition_id, partition, name, hash_of_all_files, rows
    (system.parts)."""
    return (
        "SELECT partition_id, partition, name, hash_of_all_files, rows "
        f"FROM system.parts WHERE {_of_table(database, table)} AND active"
    )


def detached_parts_query(database: str, table: str, partition_id: str) -> str:
    """The names of the table's detached parts of the partition (system.detached_parts)."""
    return (
        f"SELECT name FROM system.detached_parts WHERE {_of_table(database, table)} "
        f"AND partition_id = {quote_string(partition_id)}"
    )


def partition_content_query(
    database: str, table: str, partition_id: str, hashed: str, final: bool
) -> str:
    """The partition's rows and the sum of their row hashes `hashed` (as a string: a
    UInt64 sum wraps mod 2^64), read with FINAL where `final`."""
    return (
        f"SELECT count(), toString(sum({hashed})) FROM {qualified(database, table)}"
        f"{' FINAL' if final else ''} WHERE _partition_id = {quote_string(partition_id)}"
    )


def sync_replica_queue_command(database: str, table: str) -> str:
    """Wait until the replica has run its whole replication queue (fetches, merges and
    moves: not LIGHTWEIGHT), so that retention's parts are its shard's others'."""
    return f"SYSTEM SYNC REPLICA {qualified(database, table)}"


# --- changing: park, put back, drop ----------------------------------------------------


def detach_partition(database: str, table: str, partition_id: str) -> str:
    """Detach the partition's parts (they go to the table's detached/, named as they were)."""
    return (
        f"ALTER TABLE {qualified(database, table)} DETACH PARTITION ID {quote_string(partition_id)}"
    )


def attach_part(database: str, table: str, part: str) -> str:
    """Attach one detached part again."""
    return f"ALTER TABLE {qualified(database, table)} ATTACH PART {quote_string(part)}"


def drop_detached_part(database: str, table: str, part: str) -> str:
    """Delete one detached part from disk."""
    return (
        f"ALTER TABLE {qualified(database, table)} DROP DETACHED PART {quote_string(part)} "
        "SETTINGS allow_drop_detached = 1"
    )


def move_partition(database: str, table: str, to_table: str, partition_id: str) -> str:
    """Move the partition's parts from `table` to `to_table` of the same database (a
    replicated ALTER on Replicated tables: every replica moves them)."""
    return (
        f"ALTER TABLE {qualified(database, table)} MOVE PARTITION ID "
        f"{quote_string(partition_id)} TO TABLE {qualified(database, to_table)}"
    )


def drop_partition(database: str, table: str, partition_id: str) -> str:
    """Drop the partition (every part of it) from the table."""
    return (
        f"ALTER TABLE {qualified(database, table)} DROP PARTITION ID {quote_string(partition_id)}"
    )


# --- the retiring table ----------------------------------------------------------------


def retiring_ddl(db: str, name: str, retiring: str, engine_full: str) -> str:
    """The statement that creates `retiring` for the table `name` whose engine clause is
    `engine_full` (system.tables): the same structure, keys and engine. A Replicated
    engine gets a ZooKeeper path of its own: the source's path + "_retiring", or the
    same path where it names the table by macro (`{table}`: the retiring table's own
    name), or `/clickhouse/tables/<retiring>` for an empty one; replicas keep their
    macro. `offloader add` prints it, and retention names it when the table is missing;
    to run on every replica (ON CLUSTER) before retention is turned on."""
    engine = engine_full
    match = re.match(r"(Replicated\w*MergeTree)\(\s*'((?:[^'\\]|\\.)*)'(.*)", engine_full, re.S)
    if match:
        kind, path, rest = match.groups()
        if not path:
            own = quote_string(f"/clickhouse/tables/{retiring}")
        elif "{table}" in path:
            own = f"'{path}'"
        else:
            own = f"'{path.rstrip('/')}_retiring'"
        engine = f"{kind}({own}{rest}"
    return f"CREATE TABLE {qualified(db, retiring)} AS {qualified(db, name)} ENGINE = {engine}"


def remove_ttl(database: str, table: str) -> str:
    """The statement that removes a table's TTL, which verified hot retention replaces
    (`offloader add` advises it once retention has verified partitions)."""
    return f"ALTER TABLE {qualified(database, table)} REMOVE TTL"
