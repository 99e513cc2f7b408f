"""The builders of offloader/sql/system.py that read one table's rows of the system tables,
a cluster's ports and a replica's state, without servers: the exact SQL of each."""

from __future__ import annotations

from offloader.sql.system import (
    columns_query,
    create_statement_query,
    fingerprint_query,
    parts_fingerprint,
    replica_state_query,
    server_ports_query,
    sync_replica_command,
    table_count_query,
)


def test_a_tables_columns_in_table_order() -> None:
    assert columns_query("db", "t'x") == (
        "SELECT name, type FROM system.columns WHERE database = 'db' AND table = 't\\'x' "
        "ORDER BY position"
    )


def test_a_tables_columns_with_its_engine_clause_in_one_query() -> None:
    assert columns_query("db", "t'x", engine=True) == (
        "SELECT name, type, (SELECT any(engine_full) FROM system.tables WHERE database = 'db' "
        "AND name = 't\\'x') FROM system.columns WHERE database = 'db' AND table = 't\\'x' "
        "ORDER BY position"
    )


def test_a_tables_row_of_system_tables() -> None:
    assert table_count_query("db", "t'x") == (
        "SELECT count() FROM system.tables WHERE database = 'db' AND name = 't\\'x'"
    )
    assert create_statement_query("d`b", "t") == (
        "SELECT create_table_query FROM system.tables WHERE database = 'd`b' AND name = 't'"
    )


def test_the_parts_fingerprint_as_a_query_of_its_own() -> None:
    assert fingerprint_query("db", "t") == f"SELECT {parts_fingerprint('db', 't')}"
    on_cluster = fingerprint_query("db", "t_local", "c")
    assert on_cluster == f"SELECT {parts_fingerprint('db', 't_local', 'c')}"
    assert "clusterAllReplicas('c', system.parts)" in on_cluster


def test_every_nodes_ports_are_asked_through_the_cluster() -> None:
    assert server_ports_query("c'l") == (
        "SELECT DISTINCT shardNum(), getServerPort('tcp_port'), getServerPort('http_port') "
        "FROM clusterAllReplicas('c\\'l', system.clusters) SETTINGS skip_unavailable_shards = 1"
    )


def test_the_replica_state_is_asked_of_the_local_table() -> None:
    assert replica_state_query("db", "t'local") == (
        "SELECT is_readonly, is_session_expired, absolute_delay, queue_size, "
        "inserts_in_queue, log_pointer, log_max_index FROM system.replicas "
        "WHERE database = 'db' AND table = 't\\'local'"
    )
    assert sync_replica_command("db", "t_local") == "SYSTEM SYNC REPLICA `db`.`t_local` LIGHTWEIGHT"
