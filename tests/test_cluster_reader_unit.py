"""The one reader of system.clusters (sql.system.cluster_query, source.shards.cluster_of)
and what its three users take of it: shard reads, the view's other nodes, retention's
replica counts. No server: a fake session answers the query."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from offloader.config import ClickHouseConfig
from offloader.errors import SourceUnavailable
from offloader.ops import retention
from offloader.source import shards
from offloader.sql.system import CLUSTER_COLUMNS, cluster_query
from offloader.tiers import view

# shard, replica, host_name, host_address, port, is_local
NODES = [
    (1, 1, "ch-a", "10.0.0.1", 9000, 1),
    (1, 2, "ch-b", "10.0.0.2", 9000, 0),
    (2, 1, "ch-c", "10.0.0.3", 9000, 0),
    (2, 2, "ch-c", "10.0.0.3", 9001, 0),
    (2, 3, "ch-d", "10.0.0.4", 9000, 0),
]


class Session:
    label = "test"
    endpoint = "10.0.0.1:9000"

    def __init__(self, nodes: list[tuple[Any, ...]]) -> None:
        self.nodes = nodes
        self.queries: list[str] = []

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        self.queries.append(query)
        assert query == cluster_query("main's"), query
        return self.nodes


def test_cluster_query_is_one_statement_in_shard_and_replica_order() -> None:
    assert cluster_query("main's") == (
        "SELECT shard_num, replica_num, host_name, host_address, port, is_local "
        "FROM system.clusters WHERE cluster = 'main\\'s' ORDER BY shard_num, replica_num"
    )
    assert CLUSTER_COLUMNS[-1] == "is_local"


def test_cluster_of_parses_every_node() -> None:
    nodes = anyio.run(shards.cluster_of, Session(NODES), "main's")
    assert [(n.shard, n.replica, n.host, n.address, n.tcp_port, n.local) for n in nodes] == [
        (1, 1, "ch-a", "10.0.0.1", 9000, True),
        (1, 2, "ch-b", "10.0.0.2", 9000, False),
        (2, 1, "ch-c", "10.0.0.3", 9000, False),
        (2, 2, "ch-c", "10.0.0.3", 9001, False),
        (2, 3, "ch-d", "10.0.0.4", 9000, False),
    ]


def test_an_unknown_cluster_names_it_and_the_server() -> None:
    with pytest.raises(SourceUnavailable, match=r"cluster \"main's\".*10\.0\.0\.1:9000"):
        anyio.run(shards.cluster_of, Session([]), "main's")


def test_retention_counts_each_shards_replicas() -> None:
    counts = anyio.run(retention._replicas, Session(NODES), "main's")
    assert dict(counts) == {1: 2, 2: 3}


def test_the_views_other_nodes_leave_out_the_one_connected_to() -> None:
    cfg = ClickHouseConfig(host="10.0.0.3", port=9001)
    others = anyio.run(view.nodes_of, Session(NODES), "main's", cfg)
    # not the local node (is_local), not the node of the configured connection
    assert [(c.host, c.port) for c in others] == [
        ("10.0.0.2", 9000),
        ("10.0.0.3", 9000),
        ("10.0.0.4", 9000),
    ]
    assert all(c.user == cfg.user for c in others)


def test_shard_reads_take_each_shards_replicas_in_order() -> None:
    cfg = ClickHouseConfig(host="10.0.0.1", port=9000)
    got = anyio.run(shards.replicas_of, Session(NODES), "main's", cfg, False)
    assert [[r.node for r in shard] for shard in got] == [
        ["ch-a:9000", "ch-b:9000"],
        ["ch-c:9000", "ch-c:9001", "ch-d:9000"],
    ]
