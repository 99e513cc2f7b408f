"""Small clusters of embedded ClickHouse 26.9 servers for the integration tests: the
users.xml their nodes enforce, the nodes started and stopped, and the Distributed tables
over their local tables.

Every module starts its own cluster (module-scoped): the users, profiles and grants
differ between modules, and no module sees another's state."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from offloader.dev import devserver
from offloader.dev.demo import trades_ddl
from tests.helpers import Env

USER_XML = """
    <{name}>
      <password>{password}</password>
      <networks><ip>::/0</ip></networks>
      <profile>{profile}</profile>
      <quota>default</quota>{grants}{extra}
    </{name}>"""

USERS_XML = """<clickhouse>
  <profiles><default/>{profiles}</profiles>
  <quotas><default/></quotas>
  <users>{users}
  </users>
</clickhouse>
"""


@dataclasses.dataclass(frozen=True)
class User:
    """A user of a users.xml, from anywhere. `grants`: exactly these GRANT queries
    (None: every right, a users.xml user's default). `extra`: more of its XML (a row
    policy's <databases>)."""

    name: str
    password: str = ""
    profile: str = "default"
    grants: Sequence[str] | None = None
    extra: str = ""

    def xml(self) -> str:
        grants = ""
        if self.grants is not None:
            queries = "".join(f"<query>{g}</query>" for g in self.grants)
            grants = f"\n      <grants>{queries}</grants>"
        extra = f"\n      {self.extra}" if self.extra else ""
        return USER_XML.format(
            name=self.name,
            password=self.password,
            profile=self.profile,
            grants=grants,
            extra=extra,
        )


def users_xml(*users: User, profiles: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """A users.xml: the `default` profile and `profiles` (each its settings), the
    `default` quota, the `default` user (every right, no password: the tests' own
    set-up, and the Distributed tables' connections between nodes), then `users`."""
    more = "".join(
        f"\n    <{name}>" + "".join(f"<{k}>{v}</{k}>" for k, v in settings.items()) + f"</{name}>"
        for name, settings in (profiles or {}).items()
    )
    if more:
        more += "\n  "
    body = "".join(user.xml() for user in (User("default"), *users))
    return USERS_XML.format(profiles=more, users=body)


@contextmanager
def running(
    tmp_path_factory: pytest.TempPathFactory,
    basename: str,
    *,
    name: str,
    shards: int = 2,
    replicas: int = 1,
    users: str | list[str] | None = None,
) -> Iterator[list[devserver.Server]]:
    """`shards` × `replicas` servers (node1, node2, …, shard after shard, in a new
    directory `basename`) forming the cluster `name`, every one stopped on leaving
    (those started, if one fails to start).

    One replica a shard: each node's config names the cluster (devserver's `cluster`,
    which also keeps system.query_log), and the servers run from the session's base
    directory (icebergLocal, the views, reads the tests' warehouses below it). More
    replicas (devserver writes one replica a shard): remote_servers in a config.d file
    beside the config.xml they start from, their own directory (a config.d in the
    session's base directory would reach every server started there later).

    `users`: the users.xml text every node enforces, or one a node (default: the one
    `default` user, every right)."""
    directory = tmp_path_factory.mktemp(basename)
    ports = [(devserver.free_port(), devserver.free_port()) for _ in range(shards * replicas)]
    tcp = [port for port, _ in ports]
    cluster: tuple[str, list[int]] | None = (name, tcp)
    root = tmp_path_factory.getbasetemp()
    if replicas > 1:
        directory.joinpath("config.d").mkdir()
        (directory / "config.d" / f"{name}.xml").write_text(
            f"<clickhouse>\n{remote_servers(name, tcp, replicas)}</clickhouse>\n"
        )
        cluster, root = None, directory
    nodes: list[devserver.Server] = []
    try:
        for i, (tcp_port, http_port) in enumerate(ports, 1):
            text = users if users is None or isinstance(users, str) else users[i - 1]
            path = None
            if text is not None:
                path = directory / f"users{i}.xml"
                path.write_text(text)
            node = devserver.start(
                directory / f"node{i}",
                tcp_port,
                http_port,
                files_root=root,
                users=path,
                cluster=cluster,
            )
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            devserver.stop(node.directory)


def remote_servers(name: str, tcp_ports: Sequence[int], replicas: int) -> str:
    """The cluster `name` of these nodes (native ports), `replicas` of them a shard."""
    replica = "<replica><host>127.0.0.1</host><port>{}</port></replica>"
    shards = "".join(
        "      <shard>"
        + "".join(replica.format(p) for p in tcp_ports[first : first + replicas])
        + "</shard>\n"
        for first in range(0, len(tcp_ports), replicas)
    )
    return devserver.CLUSTER_XML.format(name=name, shards=shards)


def node_env(node: devserver.Server, env: Env) -> Env:
    """The same test's databases, seen from another node."""
    return dataclasses.replace(env, ch_port=node.tcp_port, ch_http_port=node.http_port)


def fresh_env(node: devserver.Server, pg_database: str, tmp_path: Path, database: str = "") -> Env:
    """A test's Env on `node`: its ClickHouse database (`database`, or its own), its own
    PostgreSQL state schema and Iceberg catalog."""
    tag = uuid.uuid4().hex[:10]
    return Env(
        tmp=tmp_path,
        ch_port=node.tcp_port,
        ch_http_port=node.http_port,
        ch_database=database or f"t_{tag}",
        pg_dsn=pg_database,
        pg_schema=f"t_{tag}",
        catalog_name=f"cold_{tag}",
    )


def create_distributed(
    nodes: Sequence[devserver.Server],
    env: Env,
    cluster: str,
    table: str,
    local_ddl: str,
    key: str = "trade_id",
) -> None:
    """On every node, in env's database: the local table `table`_local (`local_ddl`),
    and `table` a Distributed table over it on `cluster`, sharded by `key`."""
    db = env.ch_database
    for node in nodes:
        on = node_env(node, env)
        on.ch(local_ddl)
        on.ch(
            f"CREATE TABLE {db}.{table} AS {db}.{table}_local "
            f"ENGINE = Distributed({cluster}, {db}, {table}_local, {key})"
        )


def sharded_env(
    nodes: Sequence[devserver.Server],
    pg_database: str,
    tmp_path: Path,
    *,
    cluster: str,
    table: str = "trades",
    transport: str = "native",
) -> Iterator[Env]:
    """A test's Env on the first node (fresh_env), reading on `transport`, whose
    database, made on every node, holds `table`: a Distributed table over `table`_local
    (the trades table, partitioned by day) on every node, sharded by trade_id.
    Afterwards the database is dropped on every node still running, and the state
    schema."""
    env = fresh_env(nodes[0], pg_database, tmp_path)
    env.transport = transport
    db = env.ch_database
    for node in nodes:
        node_env(node, env).ch(f"CREATE DATABASE {db}")
    create_distributed(
        nodes, env, cluster, table, trades_ddl(db, f"{table}_local", partitioned=True)
    )
    try:
        yield env
    finally:
        for node in nodes:
            if devserver.running(node.directory) is not None:
                node_env(node, env).ch(f"DROP DATABASE IF EXISTS {db}")
        env.drop_pg_schema()
