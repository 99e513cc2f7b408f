"""ClickHouse SQL on the system tables (parts, columns, tables, clusters, replicas) and
replication (SYSTEM SYNC REPLICA), and the parsing of what they answer. Pure: no driver."""

from __future__ import annotations

import re
from collections.abc import Sequence

from offloader.days import SECONDS_PER_DAY
from offloader.sql.text import qualified, quote_string

# Engines whose merges keep every row (the others fold rows together: replace, collapse,
# sum or aggregate them), as system.parts names them.
ROW_KEEPING_ENGINES = ("MergeTree", "ReplicatedMergeTree", "SharedMergeTree")


def fingerprints_query(tables: Sequence[tuple[str, str]], cluster: str | None = None) -> str:
    """The parts fingerprint of each (database, table) that has active parts: database,
    table, fingerprint (a table without any has none: '').

    It names the data a MergeTree table holds but not how merges laid it out: a hash of,
    per partition (and with `cluster`, a Distributed source's, per replica: the local
    table on every replica of every shard, each node's parts apart), these
    merge-invariant values of its active parts (system.parts):

    - the highest block number. Every insert, and every part attached or taken by
      REPLACE PARTITION, takes new block numbers; a merge keeps its parts' lowest and
      highest (and bumps the level only);
    - the highest mutation version: a part's data_version where it differs from its
      lowest block number. A merged part's data_version is its lowest block number
      again unless its parts were mutated, so the plain highest data_version is not
      merge-invariant. Every ALTER UPDATE/DELETE, lightweight DELETE and MATERIALIZE
      TTL raises it once it rewrote the parts; a merge keeps its parts' highest;
    - whether a part still awaits the partition's newest mutation (a part older than
      it, max_block_number below its version, not rewritten by it yet): a mutation
      rewrites a partition's parts one by one, and the highest version moves with the
      first of them only; this moves when the last is done. A merge keeps it (merging
      parts that await gives one that awaits; a part newer than the mutation never
      awaits it). Without it, an audit between the first part and the last could agree
      with a repair of the half-mutated day and the rest of the mutation go unseen;
    - the rows, in engines whose merges keep every row (ROW_KEEPING_ENGINES): MOVE
      PARTITION leaves empty covering parts with the moved parts' block numbers, a TTL
      merge removes rows. The other engines' merges fold rows (ReplacingMergeTree keeps
      one row per key, CollapsingMergeTree cancels pairs), so there only whether the
      partition holds any rows counts (a collapsing merge that cancels every row of a
      partition moves the fingerprint once: an audit too many, never one too few);
    - the partition itself: DROP and DETACH PARTITION remove its parts;
    - the table's UUID (the directory holding its parts' directories, in an Atomic
      database): a table dropped and created again numbers its blocks from 1 again.

    So a merge does not move it, and every insert, finished mutation, lightweight
    delete, dropped, detached, attached, replaced or moved partition, truncation or
    recreation does. Not seen: a mutation applied on the fly, until it rewrites the
    parts; a table recreated in an Ordinary database; in engines that fold rows, DROP
    PART of one part among others and a background TTL merge that removes some of a
    partition's rows. Moved once without a change of rows: by the merge that removes
    rows a lightweight DELETE masked (in ROW_KEEPING_ENGINES) or that applies a
    lightweight UPDATE's patch parts.

    Per replica, not per shard: an audit read through the Distributed table may land on
    a lagging replica and agree without a late row; when that replica catches up (fetches
    the part), its own parts move the fingerprint, where a shard's merged state may not
    (its highest block number is the in-sync replica's already, and in engines that fold
    rows only "any rows" counts; and each replica's table UUID is its own). A node is
    (_shard_num, hostName(), getServerPort('tcp_port')), the last two evaluated by each
    node clusterAllReplicas asks (two replicas on one host differ by port): inside
    clusterAllReplicas _shard_num numbers the nodes asked on ClickHouse 26.9, not the
    cluster's shards, but it was 0 on every node in old servers. A node moved to another
    host or port, or a cluster renumbered, moves it once: an audit too many, never one
    too few. (Over 60 lines for this docstring: the code is 24.)"""
    where = f"active AND (database, table) IN ({_pairs(tables)})"
    parts, node = "system.parts", "0"
    if cluster is not None:
        parts = f"clusterAllReplicas({quote_string(cluster)}, system.parts)"
        node = "(_shard_num, hostName(), getServerPort('tcp_port'))"
    kept = ", ".join(quote_string(e) for e in ROW_KEEPING_ENGINES)
    rows = f"if(any(engine) IN ({kept}), sum(rows), toUInt64(sum(rows) > 0))"
    mutation = "if(data_version = toUInt64(min_block_number), 0, data_version)"
    uuid = "any(extract(path, '/([0-9a-f-]{36})/[^/]+/$'))"
    awaits = "toUInt64(countIf(max_block_number < newest AND mutation < newest) > 0)"
    each_part = (
        f"SELECT database, table, {node} AS node, partition_id, max_block_number, rows, "
        f"engine, path, {mutation} AS mutation, max({mutation}) OVER (PARTITION BY "
        f"database, table, {node}, partition_id) AS newest FROM {parts} WHERE {where}"
    )
    states = (
        "SELECT database, table, (node, partition_id, max(max_block_number), "
        f"max(mutation), {awaits}, {rows}, {uuid}) AS state FROM ({each_part}) "
        "GROUP BY database, table, node, partition_id"
    )
    return (
        "SELECT database, table, toString(cityHash64(arraySort(groupArray(state)))) "
        f"AS fingerprint FROM ({states}) GROUP BY database, table"
    )


def parts_fingerprint(database: str, table: str, cluster: str | None = None) -> str:
    """A scalar subquery of the table's parts fingerprint (fingerprints_query), '' when
    the table has no parts (empty, or not a MergeTree: a view or a Merge table), which
    the audit takes as "unknown"."""
    found = fingerprints_query([(database, table)], cluster)
    return f"(SELECT any(fingerprint) FROM ({found}))"


def fingerprint_query(database: str, table: str, cluster: str | None = None) -> str:
    """The table's parts fingerprint (parts_fingerprint) as a query of its own: one row,
    one value."""
    return f"SELECT {parts_fingerprint(database, table, cluster)}"


def _pairs(tables: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"({quote_string(d)}, {quote_string(t)})" for d, t in tables)


def survey_columns_query(tables: Sequence[tuple[str, str]]) -> str:
    """Every column of each (database, table), in table order, with its table's engine
    clause: what each table's run would ask for itself, for all tables at once."""
    return (
        "SELECT c.database, c.table, c.name, c.type, t.engine_full FROM system.columns AS c "
        "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
        f"WHERE (c.database, c.table) IN ({_pairs(tables)}) "
        "ORDER BY c.database, c.table, c.position"
    )


def table_row_query(database: str, table: str, what: str) -> str:
    """`what` (columns or aggregates) of the table's row of system.tables: every reader of
    one table's row builds on it (no row: no such table, or not granted)."""
    return (
        f"SELECT {what} FROM system.tables WHERE database = {quote_string(database)} "
        f"AND name = {quote_string(table)}"
    )


def columns_query(database: str, table: str, engine: bool = False) -> str:
    """The table's columns as system.columns lists them, in table order: name, type (and
    with `engine`, a third column: its engine clause, system.tables' engine_full, the same
    on every row). No row: no such table, or it has no columns (table_count_query tells)."""
    engine_full = f", ({table_row_query(database, table, 'any(engine_full)')})" if engine else ""
    return (
        f"SELECT name, type{engine_full} FROM system.columns WHERE database = "
        f"{quote_string(database)} AND table = {quote_string(table)} ORDER BY position"
    )


def table_count_query(database: str, table: str) -> str:
    """Whether the table exists: its rows of system.tables (1 or 0)."""
    return table_row_query(database, table, "count()")


def create_statement_query(database: str, table: str) -> str:
    """The table's CREATE statement (system.tables' create_table_query; no row: no such
    table)."""
    return table_row_query(database, table, "create_table_query")


# What offloader reads of a table's row of system.tables (table_query), in this order.
TABLE_COLUMNS = (
    "engine",
    "engine_full",
    "sorting_key",
    "partition_key",
    "create_table_query",
    "comment",
)


def table_query(database: str, table: str) -> str:
    """The table's row of system.tables (TABLE_COLUMNS); no row when there is no such
    table (or view)."""
    return table_row_query(database, table, ", ".join(TABLE_COLUMNS))


def readable_tables_query(database: str) -> str:
    """The names of `database`'s tables offloader can read (the MergeTree family or
    Distributed; no temporary table), in name order."""
    return (
        f"SELECT name FROM system.tables WHERE database = {quote_string(database)} "
        "AND (engine LIKE '%MergeTree' OR engine = 'Distributed') "
        "AND NOT is_temporary ORDER BY name"
    )


def distributed_over(engine_full: str) -> tuple[str, str, str] | None:
    """The cluster, database and table a `Distributed` table's engine clause names, or
    None for another engine (its `engine_full` in system.tables)."""
    match = re.match(
        r"\s*Distributed\(\s*'?([^',\s]+)'?\s*,\s*'?([^',\s]+)'?\s*,\s*'?([^',\s)]+)'?", engine_full
    )
    if match is None:
        return None
    return match.group(1), match.group(2), match.group(3)


_INTERVAL = re.compile(
    r"(?:toInterval(Second|Minute|Hour|Day|Week|Month|Quarter|Year)\((\d+)\)"
    r"|INTERVAL\s+(\d+)\s+(SECOND|MINUTE|HOUR|DAY|WEEK|MONTH|QUARTER|YEAR))",
    re.IGNORECASE,
)
_UNIT = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": SECONDS_PER_DAY,
    "week": 7 * SECONDS_PER_DAY,
    "month": 30 * SECONDS_PER_DAY,
    "quarter": 91 * SECONDS_PER_DAY,
    "year": 365 * SECONDS_PER_DAY,
}


def ttl_seconds(ttl: str | None) -> float | None:
    """The shortest interval in a TTL clause such as `toDateTime(ts) + toIntervalDay(30)`."""
    if not ttl:
        return None
    found = []
    for m in _INTERVAL.finditer(ttl):
        unit, count = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        found.append(int(count) * _UNIT[unit.lower()])
    return float(min(found)) if found else None


# What offloader reads of a cluster's nodes (system.clusters), in this order.
CLUSTER_COLUMNS = ("shard_num", "replica_num", "host_name", "host_address", "port", "is_local")


def cluster_query(cluster: str) -> str:
    """Every node of `cluster` as system.clusters lists it (CLUSTER_COLUMNS), in shard and
    replica order: offloader's one reader of system.clusters (shard reads, the view on
    every node, retention's replica counts)."""
    return (
        f"SELECT {', '.join(CLUSTER_COLUMNS)} FROM system.clusters "
        f"WHERE cluster = {quote_string(cluster)} ORDER BY shard_num, replica_num"
    )


def server_ports_query(cluster: str) -> str:
    """Every reachable node of `cluster`, asked through the cluster: its shard number, native
    (TCP) port and HTTP port, as the node itself reports them (getServerPort). It reads
    system.clusters, the one system table offloader needs here anyway (no grant on
    system.one): evaluated on each node, getServerPort is that node's. A node that does
    not answer is left out."""
    return (
        "SELECT DISTINCT shardNum(), getServerPort('tcp_port'), getServerPort('http_port') "
        f"FROM clusterAllReplicas({quote_string(cluster)}, system.clusters) "
        "SETTINGS skip_unavailable_shards = 1"
    )


# What a replica of a Replicated local table says of its replication (system.replicas).
REPLICA_STATE = (
    "is_readonly",
    "is_session_expired",
    "absolute_delay",
    "queue_size",
    "inserts_in_queue",
    "log_pointer",
    "log_max_index",
)


def replica_state_query(database: str, table: str) -> str:
    """The local table's row of system.replicas on the replica asked (none: the table is
    not Replicated), its columns REPLICA_STATE."""
    return (
        f"SELECT {', '.join(REPLICA_STATE)} FROM system.replicas WHERE database = "
        f"{quote_string(database)} AND table = {quote_string(table)}"
    )


def sync_replica_command(database: str, table: str) -> str:
    """Wait until the replica has fetched every part its replication log names (the
    fetches only, not merges): where granted, a lagging replica catches up this way."""
    return f"SYSTEM SYNC REPLICA {qualified(database, table)} LIGHTWEIGHT"
