"""Least privilege, tested: ClickHouse users defined in a users.xml the embedded server
enforces. offloader runs as a user with exactly the grants `offloader grants` prints for
the tests' config, each on one table, view or system table (offload on every transport,
the view over both tiers, verify, status, hot retention); an analyst with SELECT on the
view only reads every row of both tiers through it and is refused the source table and
the table functions; with each feature's grants taken away in turn, the table fails with
one line naming the missing grant, and nothing is lost."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from offloader.dev import devserver
from tests import clusters
from tests.helpers import Env

pytestmark = pytest.mark.integration

SRC, VIEWS = "lp_src", "lp_views"  # the grants name these databases
# What `offloader grants` prints grants for, each feature known by its word.
FEATURES = ["cold", "detached", "parts", "retention", "source", "views"]
CLUSTER_FEATURES = ["clusters", "remote", "replicas"]
CLUSTER_NAMED = {
    "clusters": "SELECT ON system.clusters",
    "remote": "READ ON REMOTE",
    "replicas": "SELECT ON system.replicas",
}
PASSWORD = "s3cret-pass"
# What the line of a table run or a retention pass says when that grant is missing.
NAMED = {
    "source": f"SELECT(exchange_ts) ON {SRC}.trades",
    "parts": "SELECT ON system.parts",
    "detached": "SELECT ON system.detached_parts",
    "views": f"CREATE VIEW, DROP VIEW ON {VIEWS}.trades_all",
    "cold": "READ ON FILE",
    "retention": f"ALTER DELETE ON {SRC}.trades",
}


# Analysts of a view with SQL SECURITY INVOKER: the source only, and both tiers (whose
# reads of the source pass a row policy, ROW_POLICY).
ANALYST_HOT = [f"GRANT SELECT ON {VIEWS}.trades_all", f"GRANT SELECT ON {SRC}.trades"]
ANALYST_BOTH = [*ANALYST_HOT, "GRANT READ ON FILE, CREATE TEMPORARY TABLE ON *.*"]
ROW_POLICY = "symbol = 'a'"


def printed_grants(directory: Path, *args: str, **table: object) -> dict[str, list[str]]:
    """The grants `offloader grants --user offloader *args` prints for a config with the
    tests' table (`lp_src.trades`, its view `lp_views.trades_all`, `table`'s settings), as
    users.xml grant queries by feature: exactly what offloader runs with here."""
    env = Env(directory, 9000, 8123, SRC, "postgresql://offloader@127.0.0.1/lp", "lp", "cold")
    configure(env, "offloader", **table)
    printed = env.cli("grants", "--user", "offloader", *args)
    assert printed.returncode == 0, printed.stdout + printed.stderr
    grants: dict[str, list[str]] = {}
    for line in printed.stdout.splitlines():
        if line.startswith("GRANT") and " TO `offloader`;" in line:
            statement, _, comment = line.partition(" TO `offloader`;  -- ")
            grants.setdefault(comment.split(":")[0], []).append(statement)
    return grants


def users_xml(grants: dict[str, list[str]]) -> str:
    """default (every right, for the tests' own set-up), offloader (`grants`, as
    `offloader grants` printed them), one user per feature's grants taken away
    (offloader_no_<feature>), analyst (SELECT on the view) and analyst_hot and
    analyst_both (ANALYST_HOT, ANALYST_BOTH)."""
    users = {
        "offloader": [g for feature in grants.values() for g in feature],
        "analyst": [f"GRANT SELECT ON {VIEWS}.trades_all"],
        "analyst_hot": ANALYST_HOT,
        "analyst_both": ANALYST_BOTH,
    }
    policies = {
        "analyst_both": f"<databases><{SRC}><trades><filter>{ROW_POLICY}</filter></trades>"
        f"</{SRC}></databases>"
    }
    for name in grants:
        users[f"offloader_no_{name}"] = [g for k, gs in grants.items() if k != name for g in gs]
    return clusters.users_xml(
        *(
            clusters.User(user, PASSWORD, grants=granted, extra=policies.get(user, ""))
            for user, granted in users.items()
        )
    )


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devserver.Server]:
    directory = tmp_path_factory.mktemp("clickhouse-secured")
    # Every feature the tests below use: the view, hot retention, a retiring table.
    grants = printed_grants(
        tmp_path_factory.mktemp("grants"),
        partition_by=["day(exchange_ts)"],
        hot_retention="1d",
        retiring_table="trades_retiring",
    )
    assert sorted(grants) == FEATURES, grants
    users = directory / "users.xml"
    users.write_text(users_xml(grants))
    # Below the session's base directory, like the other server: icebergLocal (the
    # views) reads the tests' warehouses below it.
    server = devserver.start(directory, files_root=tmp_path_factory.getbasetemp(), users=users)
    try:
        yield server
    finally:
        devserver.stop(directory)


def lp_env(server: devserver.Server, pg_database: str, tmp_path: Path) -> Env:
    """A test's Env on `server`, its sources in SRC, its own state schema and catalog."""
    return clusters.fresh_env(server, pg_database, tmp_path, database=SRC)


@pytest.fixture
def secured(secured_server: devserver.Server, pg_database: str, tmp_path: Path) -> Iterator[Env]:
    env = lp_env(secured_server, pg_database, tmp_path)
    for db in (SRC, VIEWS):
        env.ch(f"DROP DATABASE IF EXISTS {db}")
        env.ch(f"CREATE DATABASE {db}")
    try:
        yield env
    finally:
        for db in (SRC, VIEWS):
            env.ch(f"DROP DATABASE IF EXISTS {db}")
        env.drop_pg_schema()


def configure(env: Env, user: str, transport: str = "native", **table: object) -> None:
    env.transport = transport
    env.write_config(
        [env.table("trades", view=f"{VIEWS}.trades_all", **table)],
        clickhouse_extra={"user": user, "password": PASSWORD},
    )


def http(env: Env, sql: str, user: str) -> str:
    """`sql` as `user` over HTTP: its result, or the server's error text."""
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"user": user, "password": PASSWORD})
    request = urllib.request.Request(
        f"http://127.0.0.1:{env.ch_http_port}/?{query}", data=sql.encode()
    )
    try:
        return urllib.request.urlopen(request, timeout=30).read().decode().strip()
    except urllib.error.HTTPError as exc:
        return "ERROR " + exc.read().decode()


ALL = "count(), sum(cityHash64(*))"


def trades(env: Env, rows: int) -> None:
    """`lp_src.trades`, partitioned by day, `rows` rows a minute apart from 2025-03-01."""
    env.ch(
        f"CREATE TABLE {SRC}.trades (exchange_ts DateTime64(6, 'UTC'), trade_id UInt64, "
        "price Decimal(18, 6), symbol LowCardinality(String)) ENGINE = MergeTree "
        "PARTITION BY toYYYYMMDD(exchange_ts) ORDER BY (exchange_ts, trade_id)"
    )
    env.ch(
        f"INSERT INTO {SRC}.trades SELECT toDateTime64('2025-03-01 00:00:00', 6, 'UTC') + "
        "toIntervalMinute(number), number, number / 7, ['a', 'b'][number % 2 + 1] "
        f"FROM numbers({rows})"
    )


@pytest.mark.parametrize("transport", ["native", "arrow", "parquet"])
def test_offloader_with_exactly_the_listed_grants(secured: Env, transport: str) -> None:
    env = secured
    trades(env, 10_000)
    configure(
        env,
        "offloader",
        transport,
        partition_by=["day(exchange_ts)"],
        hot_retention="1d",
        batch_rows=3000,
    )
    validate = env.cli("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    report = env.once()
    assert report.ok and report.tables[0].rows == 10_000, report.summary()
    assert report.tables[0].view_error is None, report.tables[0].view_error
    assert env.cli("verify").returncode == 0
    status = env.cli("status", "--check")
    assert status.returncode == 0, status.stdout + status.stderr
    everything = env.ch(f"SELECT {ALL} FROM {SRC}.trades")[0]
    # The analyst: every row of both tiers through the view, nothing else.
    assert http(env, f"SELECT {ALL} FROM {VIEWS}.trades_all FORMAT TSV", "analyst") == (
        "\t".join(str(v) for v in everything)
    )
    refused = http(env, f"SELECT count() FROM {SRC}.trades", "analyst")
    assert "ACCESS_DENIED" in refused and f"SELECT ON {SRC}.trades" in refused, refused
    cold = http(
        env, f"SELECT count() FROM icebergLocal('{env.tmp}/warehouse/cold/trades')", "analyst"
    )
    assert "ACCESS_DENIED" in cold, cold
    # Hot retention as offloader: the verified old days dropped, the view still whole.
    retain = env.cli("retain")
    assert retain.returncode == 0, retain.stdout + retain.stderr
    assert retain.stdout.count("dropped partition") >= 5, retain.stdout
    assert http(env, f"SELECT {ALL} FROM {VIEWS}.trades_all FORMAT TSV", "analyst") == (
        "\t".join(str(v) for v in everything)
    )


def test_view_security_definer_or_invoker(secured: Env) -> None:
    """Under SQL SECURITY DEFINER (the default) an analyst granted SELECT on the view only
    reads every row, and the source's row policy does not apply through the view. Under
    `view_security = "invoker"` the same analyst is refused, naming the source; one
    granted the source but not the cold tier is refused naming READ ON FILE; one granted
    both reads, the source's row policy applying to the hot rows (the cold tier's table
    function has no row policies)."""
    env = secured
    trades(env, 1_000)
    # Its own target: the tables' advisory locks are keyed by target name, in a
    # PostgreSQL database other test sessions may share.
    table = {"target": "cold.view_security"}
    configure(env, "offloader", **table)
    report = env.once()
    assert report.tables[0].status == "ok" and report.tables[0].view_error is None, report.summary()
    env.ch(  # hot rows no run reads yet (in the future), half of them symbol 'a'
        f"INSERT INTO {SRC}.trades SELECT now64(6, 'UTC') + toIntervalDay(1) + "
        "toIntervalMinute(number), 5000 + number, 1, ['a', 'b'][number % 2 + 1] "
        "FROM numbers(100)"
    )
    everything = env.ch(f"SELECT {ALL} FROM {SRC}.trades")[0]
    count = f"SELECT {ALL} FROM {VIEWS}.trades_all FORMAT TSV"
    whole = "\t".join(str(v) for v in everything)
    assert http(env, count, "analyst") == whole
    assert http(env, count, "analyst_both") == whole  # the row policy bypassed
    configure(env, "offloader", view_security="invoker", **table)
    report = env.once()
    assert report.tables[0].status == "idle" and report.tables[0].view_error is None, (
        report.summary()
    )
    refused = http(env, count, "analyst")
    assert "ACCESS_DENIED" in refused and f"ON {SRC}.trades" in refused, refused
    assert "SQL SECURITY INVOKER" in env.ch(f"SHOW CREATE TABLE {VIEWS}.trades_all")[0][0]
    refused = http(env, count, "analyst_hot")
    assert "ACCESS_DENIED" in refused and "READ ON FILE" in refused, refused
    split = (
        f"SELECT countIf(exchange_ts < '2025-03-02'), countIf(exchange_ts >= '2025-03-02'), "
        f"countIf(symbol != 'a') FROM {VIEWS}.trades_all FORMAT TSV"
    )
    # Every cold row (1,000, half not 'a'); of the 100 hot rows, the 50 the policy shows.
    assert http(env, split, "analyst_both") == "1000\t50\t500"
    configure(env, "offloader", **table)  # back to definer: the view is replaced again
    assert env.once().tables[0].status == "idle"
    assert http(env, count, "analyst") == whole


def test_retention_through_a_retiring_table_with_the_listed_grants(secured: Env) -> None:
    """The retention grants cover the retiring-table method too (MOVE PARTITION to it and
    back, DROP PARTITION there, both tables in the source's database); without them the
    pass cannot see the retiring table, says so with the command that prints the grants,
    and keeps every row."""
    env = secured
    trades(env, 10_000)
    env.ch(f"CREATE TABLE {SRC}.trades_retiring AS {SRC}.trades")
    table = {"partition_by": ["day(exchange_ts)"], "hot_retention": "1d"}
    configure(env, "offloader_no_retention", retiring_table="trades_retiring", **table)
    assert env.once().ok
    refused = env.cli("retain")
    assert refused.returncode == 1, refused.stdout
    assert "offloader grants" in refused.stdout and "trades_retiring" in refused.stdout
    assert env.ch(f"SELECT count() FROM {SRC}.trades") == [(10_000,)]
    configure(env, "offloader", retiring_table="trades_retiring", **table)
    retain = env.cli("retain")
    assert retain.returncode == 0, retain.stdout + retain.stderr
    assert retain.stdout.count("dropped partition") >= 5, retain.stdout
    assert env.ch(f"SELECT count() FROM {SRC}.trades_retiring") == [(0,)]
    everything = env.ch(f"SELECT {ALL} FROM {SRC}.trades")[0]
    assert everything[0] < 10_000
    cold = env.iceberg_arrow(env.config().table("cold.trades")).num_rows
    assert cold == 10_000


@pytest.mark.parametrize("missing", FEATURES)
def test_each_missing_grant_is_named_and_nothing_is_lost(secured: Env, missing: str) -> None:
    env = secured
    trades(env, 5_000)
    table = {"partition_by": ["day(exchange_ts)"], "hot_retention": "1d", "batch_rows": 2000}
    everything = env.ch(f"SELECT {ALL} FROM {SRC}.trades")[0]
    configure(env, f"offloader_no_{missing}", **table)
    report = env.once()
    failed = [*(t.error or "" for t in report.tables), report.tables[0].view_error or ""]
    retain = env.cli("retain")
    lines = " ".join([*failed, retain.stdout])
    assert "Not enough privileges" in lines, (missing, report.summary(), retain.stdout)
    assert f"it's necessary to have the grant {NAMED[missing]}" in lines, lines
    for error in failed:
        assert "\n" not in error.strip(), error  # one line
    # With every grant: every row exactly once in Iceberg and through the view (also
    # the days retention dropped, when only its own grant was missing).
    configure(env, "offloader", **table)
    again = env.once()
    assert again.ok and again.tables[0].view_error is None, again.summary()
    assert env.iceberg_arrow(env.config().table("cold.trades")).num_rows == 5000
    assert http(env, f"SELECT {ALL} FROM {VIEWS}.trades_all FORMAT TSV", "analyst") == (
        "\t".join(str(v) for v in everything)
    )


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True
    )


def test_the_state_database_with_exactly_the_printed_postgres_grants(secured: Env) -> None:
    """A PostgreSQL role with no rights but what `offloader grants` prints for the state
    database: refused before, offloads after (offloader creates its schema itself)."""
    env = secured
    trades(env, 100)
    admin, role = env.pg_dsn, f"lp_{uuid.uuid4().hex[:8]}"
    created = psql(admin, f"CREATE ROLE {role} LOGIN")
    assert created.returncode == 0, created.stderr
    assert psql(admin, f"CREATE DATABASE {role}").returncode == 0
    parts = urlsplit(admin)
    host = parts.netloc.rpartition("@")[2]
    env.pg_dsn = urlunsplit(parts._replace(netloc=f"{role}@{host}", path=f"/{role}"))
    try:
        configure(env, "offloader")
        refused = env.cli("once")
        assert refused.returncode == 1 and "permission denied" in refused.stdout, refused.stdout
        printed = env.cli("grants").stdout.split("-- PostgreSQL")[1].splitlines()[1:]
        assert printed and all(line.startswith("GRANT ") for line in printed), printed
        for line in printed:
            done = psql(urlunsplit(parts._replace(path=f"/{role}")), line)
            assert done.returncode == 0, (line, done.stderr)
        offloaded = env.cli("once")
        assert offloaded.returncode == 0, offloaded.stdout + offloaded.stderr
        assert "100 rows" in offloaded.stdout, offloaded.stdout
    finally:
        env.pg_dsn = admin
        psql(admin, f"DROP DATABASE IF EXISTS {role} WITH (FORCE)")
        psql(admin, f"DROP ROLE IF EXISTS {role}")


CLUSTER = "offloader_cluster"


@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devserver.Server]]:
    # lp_src.trades: a Distributed table over lp_src.trades_local (secured_sharded).
    local = f"{SRC}.trades={SRC}.trades_local"
    grants = printed_grants(tmp_path_factory.mktemp("grants"), "--local-table", local)
    assert sorted(grants) == sorted(["cold", "parts", "source", "views", *CLUSTER_FEATURES])
    with clusters.running(
        tmp_path_factory, "cluster-secured", name=CLUSTER, users=users_xml(grants)
    ) as nodes:
        yield nodes


@pytest.fixture
def secured_sharded(
    secured_cluster: list[devserver.Server], pg_database: str, tmp_path: Path
) -> Iterator[list[Env]]:
    """`lp_src.trades`: a Distributed table over `trades_local` on both nodes, 6,000 rows
    (two on each minute, on different shards); the first node's Env first."""
    env = lp_env(secured_cluster[0], pg_database, tmp_path)
    nodes = [clusters.node_env(n, env) for n in secured_cluster]
    for node in nodes:
        for db in (SRC, VIEWS):
            node.ch(f"DROP DATABASE IF EXISTS {db}")
            node.ch(f"CREATE DATABASE {db}")
    clusters.create_distributed(
        secured_cluster,
        env,
        CLUSTER,
        "trades",
        f"CREATE TABLE {SRC}.trades_local (exchange_ts DateTime64(6, 'UTC'), trade_id UInt64,"
        " price Decimal(18, 6)) ENGINE = MergeTree PARTITION BY toYYYYMMDD(exchange_ts) "
        "ORDER BY (exchange_ts, trade_id)",
    )
    env.ch(
        f"INSERT INTO {SRC}.trades SELECT toDateTime64('2025-03-01 00:00:00', 6, 'UTC') + "
        "toIntervalMinute(intDiv(number, 2)), number, number / 7 FROM numbers(6000) "
        "SETTINGS distributed_foreground_insert = 1"
    )
    try:
        yield nodes
    finally:
        for node in nodes:
            for db in (SRC, VIEWS):
                node.ch(f"DROP DATABASE IF EXISTS {db}")
        env.drop_pg_schema()


@pytest.mark.parametrize("transport", ["native", "parquet"])
def test_a_cluster_source_read_shard_by_shard_with_the_listed_grants(
    secured_sharded: list[Env], transport: str
) -> None:
    """On a 2-shard cluster whose nodes enforce the same users.xml: offloader, with the
    grants `offloader grants --local-table` prints on every node, reads each shard's local
    table on its own node (finding each node's HTTP port), audits the parts of every shard
    when idle, keeps the view on both nodes, and the analyst reads every row through
    either node's view."""
    env, nodes = secured_sharded[0], secured_sharded
    configure(env, "offloader", transport, batch_rows=1000)
    report = env.once()
    assert report.ok and report.tables[0].rows == 6_000, report.summary()
    assert report.tables[0].view_error is None, report.tables[0].view_error
    assert env.assert_tiers_equal("cold.trades") == 6_000
    for _ in range(2):  # the idle runs: the audit, then the parts of every shard
        idle = env.once()
        assert idle.ok and idle.tables[0].drifted == [], idle.summary()
    everything = env.ch(f"SELECT {ALL} FROM {SRC}.trades")[0]
    for node in nodes:
        got = http(node, f"SELECT {ALL} FROM {VIEWS}.trades_all FORMAT TSV", "analyst")
        assert got == "\t".join(str(v) for v in everything), (node.ch_port, got)


@pytest.mark.parametrize("missing", CLUSTER_FEATURES)
def test_each_missing_cluster_grant_is_named_and_nothing_is_lost(
    secured_sharded: list[Env], missing: str
) -> None:
    env = secured_sharded[0]
    configure(env, f"offloader_no_{missing}", "parquet", batch_rows=1000)
    report = env.once()
    [t] = report.tables
    assert t.status == "failed" and t.rows == 0, report.summary()
    assert CLUSTER_NAMED[missing] in (t.error or ""), t.error
    assert "\n" not in (t.error or "")
    configure(env, "offloader", "parquet", batch_rows=1000)
    again = env.once()
    assert again.ok and again.tables[0].rows == 6_000, again.summary()
    assert env.assert_tiers_equal("cold.trades") == 6_000
