"""A sharded hot tier: a `Distributed` table over a real 2-shard cluster of embedded
ClickHouse 26.9 servers (one node a shard; replication cannot run here), read through
the Distributed table. Every row once over many pages and appends with ties on the
watermark spread across shards, on every transport; the idle audit fingerprints the
local table's parts on every shard; a shard killed mid-run commits nothing partial and
the next run, once it is back, completes with no row twice. And a cluster of one shard
of two replicas (plain local tables at different progress): a lagging replica catching
up moves the fingerprint."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offloader import faults
from offloader.dev import devserver
from offloader.iceberg import IcebergCatalog
from offloader.ops import retention
from offloader.sql.system import (
    columns_query,
    distributed_over,
    fingerprint_query,
    parts_fingerprint,
)
from tests import clusters
from tests.clusters import node_env
from tests.helpers import Env, independent_reads, trades_rows

pytestmark = pytest.mark.integration

CLUSTER = "offloader_cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devserver.Server]]:
    with clusters.running(tmp_path_factory, "cluster", name=CLUSTER) as nodes:
        yield nodes


@pytest.fixture(params=["native", "arrow", "parquet"])
def sharded(
    request: pytest.FixtureRequest,
    cluster: list[devserver.Server],
    pg_database: str,
    tmp_path: Path,
) -> Iterator[Env]:
    """A sharded source on every transport: `trades`, a Distributed table on node 1 over
    `trades_local` on both shards (sharded by trade_id, so rows tied on the watermark
    land on both)."""
    yield from clusters.sharded_env(
        cluster, pg_database, tmp_path, cluster=CLUSTER, transport=request.param
    )


@pytest.fixture
def sharded_one(cluster: list[devserver.Server], pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """A sharded source on the default transport, for what no transport changes."""
    yield from clusters.sharded_env(cluster, pg_database, tmp_path, cluster=CLUSTER)


def insert(env: Env, count: int, first_id: int, start: str, step_us: int = 1_000_000) -> None:
    """Rows through the Distributed table, written to the shards before it returns."""
    sql = trades_rows(env.ch_database, "trades", count, first_id, start, step_us, ties=3)
    env.ch(sql + " SETTINGS distributed_foreground_insert = 1")


def shard_counts(env: Env, cluster: list[devserver.Server]) -> list[int]:
    return [
        int(node_env(n, env).ch(f"SELECT count() FROM {env.ch_database}.trades_local")[0][0])
        for n in cluster
    ]


def page_queries(env: Env, cluster: list[devserver.Server]) -> tuple[int, int]:
    """Keyset pages (LIMIT … WITH TIES) offloader asked for itself: through the
    Distributed table (on node 1), and of the local table on node 2 (shard 2's own)."""
    counts = []
    for node, table in ((cluster[0], "trades"), (cluster[1], "trades_local")):
        shard = node_env(node, env)
        shard.ch("SYSTEM FLUSH LOGS")
        counts.append(
            int(
                shard.ch(
                    "SELECT count() FROM system.query_log WHERE type = 'QueryFinish' AND "
                    f"is_initial_query AND query LIKE '%FROM `{env.ch_database}`.`{table}` %' "
                    "AND query LIKE '%WITH TIES%'"
                )[0][0]
            )
        )
    return counts[0], counts[1]


def test_a_sharded_source_offloads_every_row_once(
    sharded: Env, cluster: list[devserver.Server]
) -> None:
    """Read shard by shard: every column of every row once, over many rounds and
    appends, ties on the watermark across shards; shard 2's pages asked of shard 2 itself,
    none through the Distributed table."""
    env = sharded
    insert(env, 9_001, 1, "2025-05-01 00:00:00")
    counts = shard_counts(env, cluster)
    assert sum(counts) == 9_001 and min(counts) > 3_000, counts  # both shards hold rows
    env.write_config([env.table("trades", batch_rows=1_000, append_rows=2_000)])
    report = env.once()
    assert report.ok and report.tables[0].rows == 9_001, report.summary()
    assert report.tables[0].snapshots >= 3
    insert(env, 500, 100_000, "2025-05-03 00:00:00")
    assert env.once().tables[0].rows == 500
    assert env.assert_tiers_equal("cold.trades") == 9_501
    assert env.cli("verify").returncode == 0
    through, local = page_queries(env, cluster)
    assert through == 0 and local >= 5, (through, local)
    # Readers nobody here wrote (icebergLocal, DuckDB) read the shard pages' files equal
    # to the Distributed table.
    ice = IcebergCatalog(env.config().catalog).load("cold.trades")
    assert ice is not None
    query = "SELECT count(*), sum(trade_id), count(DISTINCT trade_id) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    [(count, ids, distinct)] = env.ch(
        f"SELECT count(), sum(trade_id), uniqExact(trade_id) FROM {env.ch_database}.trades"
    )
    assert got == [f"{count},{ids},{distinct}"] * 2, got


def test_a_sharded_source_read_through_the_distributed_table(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """`distributed = "through"`: the same rows, every page asked of the Distributed
    table on node 1, none of shard 2."""
    env = sharded_one
    insert(env, 5_000, 1, "2025-05-01 00:00:00")
    env.write_config([env.table("trades", batch_rows=1_000, distributed="through")])
    report = env.once()
    assert report.ok and report.tables[0].rows == 5_000, report.summary()
    assert env.assert_tiers_equal("cold.trades") == 5_000
    through, local = page_queries(env, cluster)
    assert through >= 5 and local == 0, (through, local)


def test_offloader_killed_at_every_point_with_a_cluster_source(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """SIGKILL of `offloader once` at every kill point of a run reading shard by shard,
    while rows keep arriving on both shards: each node's view returns every row once
    after every kill, and a clean run leaves the tiers equal."""
    env = sharded_one
    db = env.ch_database
    env.write_config(
        [env.table("trades", batch_rows=2_000, append_rows=4_000, view=True, lag="0s")]
    )
    every = "count(), sum(cityHash64(*))"

    def views_exact() -> None:
        for node in cluster:
            shard = node_env(node, env)
            if not shard.ch(f"EXISTS TABLE {db}.trades_all")[0][0]:
                continue  # the first run died before it made the view
            got = shard.ch(
                f"SELECT (SELECT {every} FROM {db}.trades_all), (SELECT {every} FROM {db}.trades)"
            )[0]
            assert got[0] == got[1], (node.tcp_port, got)

    kills = 0
    for step, point in enumerate(faults.POINTS):
        insert(env, 9_000, 1 + step * 100_000, f"2025-05-{1 + step:02d} 00:00:00")
        result = env.cli("once", extra_env={faults.ENV: f"{point}:2"})
        if result.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert result.returncode == 0, result.stdout + result.stderr
        views_exact()
    assert kills == len(faults.POINTS), kills
    final = env.cli("once")
    assert final.returncode == 0, final.stdout + final.stderr
    assert env.assert_tiers_equal("cold.trades") == 9_000 * len(faults.POINTS)
    assert env.cli("verify").returncode == 0
    views_exact()


def test_the_idle_audit_fingerprints_every_shard(
    sharded_one: Env, cluster: list[devserver.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts fingerprint of a Distributed source is its local table's on every
    shard: an idle cycle whose window agreed reads no window, nor does one right after
    every shard merged its parts; a late row inserted into one shard's local table
    changes it, and the next cycle reports the day."""
    from offloader.offload import checkup
    from offloader.tiers import audit

    env = sharded_one
    windows: list[str] = []
    real = audit.clickhouse_days

    async def counting(*args: Any, **kwargs: Any) -> Any:
        windows.append("window")
        return await real(*args, **kwargs)

    monkeypatch.setattr(audit, "clickhouse_days", counting)
    monkeypatch.setattr(checkup, "clickhouse_days", counting)
    for day in ("2025-05-01", "2025-05-02"):  # two parts on each shard
        insert(env, 1_500, 1 if day.endswith("1") else 1_501, f"{day} 00:00:00", step_us=10**7)
    env.write_config([env.table("trades", audit_days=4)])
    assert env.once().ok
    assert env.once().ok  # the first audit of the window after the offload agrees
    windows.clear()
    idle = env.once()
    assert idle.ok and idle.tables[0].drifted == [], idle.summary()
    assert windows == [], "an idle cycle over unchanged shards read the window"
    db = env.ch_database
    for node in cluster:
        node_env(node, env).ch(f"OPTIMIZE TABLE {db}.trades_local FINAL")
    merged = env.once()
    assert merged.ok and merged.tables[0].drifted == [], merged.summary()
    assert windows == [], "an idle cycle after merges on every shard read the window"
    node_env(cluster[1], env).ch(
        f"INSERT INTO {db}.trades_local SELECT * REPLACE (999999 AS trade_id) "
        f"FROM {db}.trades_local LIMIT 1"
    )
    late = env.once()
    assert windows, "a changed shard was not audited"
    assert late.tables[0].drifted, late.summary()


def test_a_mutation_on_one_shard_moves_the_fingerprint(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """Each shard's parts count apart in a Distributed source's fingerprint: an ALTER
    UPDATE on the shard with fewer blocks takes a mutation version below the other
    shard's highest, and still moves it."""
    env = sharded_one
    db = env.ch_database
    insert(env, 30, 1, "2025-05-01 00:00:00")
    first, second = (node_env(node, env) for node in cluster)
    for i in range(3):  # shard 1 numbers more blocks than shard 2
        first.ch(trades_rows(db, "trades_local", 1, 1_000 + i, "2025-05-01 01:00:00", 1, 1))
    sync = "SETTINGS mutations_sync = 2"
    first.ch(f"ALTER TABLE {db}.trades_local UPDATE side = 'buy' WHERE trade_id = 1000 {sync}")
    query = f"SELECT {parts_fingerprint(db, 'trades_local', CLUSTER)}"
    [(before,)] = env.ch(query)
    second.ch(f"ALTER TABLE {db}.trades_local UPDATE side = 'buy' WHERE trade_id % 2 = 0 {sync}")
    [(after,)] = env.ch(query)
    assert after != before, "a mutation on shard 2 left the fingerprint as it was"


REPLICAS = "offloader_replicas"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devserver.Server]]:
    """Two nodes, the two replicas of the one shard of the cluster REPLICAS."""
    with clusters.running(
        tmp_path_factory, "replicas", name=REPLICAS, shards=1, replicas=2
    ) as nodes:
        yield nodes


def test_a_lagging_replica_catching_up_moves_the_fingerprint(
    replicas: list[devserver.Server], tmp_path: Path
) -> None:
    """One shard, two replicas (plain ReplacingMergeTree local tables standing in for
    Replicated ones at different progress): replica 2 holds 1 block of the partition,
    replica 1 holds 3. Replica 2 catching up leaves the shard's highest block number and
    "any rows" as they were, and still moves the Distributed source's fingerprint (an
    audit that agreed reading the lagging replica is repeated); a merge on either replica
    does not. Both nodes read the same value."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    first, second = nodes = [
        Env(tmp_path, n.tcp_port, n.http_port, db, pg_dsn="", pg_schema="", catalog_name="")
        for n in replicas
    ]
    local = f"{db}.t_local"
    for node in nodes:
        node.ch(f"CREATE DATABASE {db}")
        node.ch(
            f"CREATE TABLE {local} (d Date, k UInt64) ENGINE = ReplacingMergeTree "
            "PARTITION BY toYYYYMM(d) ORDER BY k"
        )
        node.ch(f"CREATE TABLE {db}.t AS {local} ENGINE = Distributed({REPLICAS}, {db}, t_local)")
    try:
        for k in (1, 2, 3):
            first.ch(f"INSERT INTO {local} VALUES ('2026-01-0{k}', {k})")
        second.ch(f"INSERT INTO {local} VALUES ('2026-01-01', 1)")
        # The source's own fingerprint query: its local table's parts on the cluster.
        over = distributed_over(str(first.ch(columns_query(db, "t", engine=True))[0][2]))
        assert over == (REPLICAS, db, "t_local"), over
        query = fingerprint_query(over[1], over[2], over[0])
        shard = (
            f"SELECT max(max_block_number), sum(rows) > 0 FROM clusterAllReplicas({REPLICAS}, "
            f"system.parts) WHERE active AND database = '{db}' AND table = 't_local'"
        )

        def read() -> str:
            [(one,)], [(two,)] = first.ch(query), second.ch(query)
            assert one == two, "the nodes read different fingerprints"
            return str(one)

        lagging, merged_state = read(), first.ch(shard)
        second.ch(f"INSERT INTO {local} VALUES ('2026-01-02', 2)")
        assert first.ch(shard) == merged_state == [(3, True)]  # the shard's state as it was
        caught_up = read()
        assert caught_up != lagging, "a lagging replica catching up left the fingerprint"
        for node in nodes:
            node.ch(f"OPTIMIZE TABLE {local} FINAL")
            assert read() == caught_up, f"a merge on {node.ch_port} moved the fingerprint"
    finally:
        for node in nodes:
            node.ch(f"DROP DATABASE IF EXISTS {db}")


def test_a_shard_killed_mid_run_commits_nothing_partial(
    sharded_one: Env, cluster: list[devserver.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard 2's server is SIGKILLed after the run's second page: the table fails naming
    the shard's address, what it committed before are whole appends (every row at or
    before the committed position, from both shards), and once the shard is back the
    next run completes with every row once."""
    env = sharded_one
    insert(env, 12_000, 1, "2025-05-01 00:00:00")
    env.write_config([env.table("trades", batch_rows=1_000, append_rows=1_000)])
    node = cluster[1]
    pages = 0
    real = faults.point

    def kill_shard_after_two_pages(name: str) -> None:
        nonlocal pages
        if name == "read":
            pages += 1
            if pages == 2:
                devserver.kill(node.pid, sig=signal.SIGKILL)
        real(name)

    monkeypatch.setattr(faults, "point", kill_shard_after_two_pages)
    report = env.once()
    monkeypatch.undo()
    [t] = report.tables
    assert t.status == "failed", report.summary()
    assert f"127.0.0.1:{node.tcp_port}" in (t.error or ""), t.error
    committed = env.iceberg_arrow(env.config().table("cold.trades"))
    assert committed.num_rows == t.rows > 0, (committed.num_rows, t.rows)
    ids = committed.column("trade_id").to_pylist()
    assert len(set(ids)) == len(ids)
    # Whole appends: every source row at or before the last committed row is there.
    last = committed.slice(committed.num_rows - 1).to_pylist()[0] if ids else None
    restarted = devserver.start(
        node.directory,
        node.tcp_port,
        node.http_port,
        files_root=node.directory.parent.parent,  # the session's base, as at the start
        cluster=(CLUSTER, [n.tcp_port for n in cluster]),
    )
    cluster[1] = restarted
    if last is not None:
        before = env.ch(
            f"SELECT count() FROM {env.ch_database}.trades WHERE (exchange_ts, trade_id) <= "
            f"(toDateTime64('{last['exchange_ts']:%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC'), "
            f"{last['trade_id']})"
        )
        assert before == [(committed.num_rows,)], (before, committed.num_rows)
    again = env.once()
    assert again.ok, again.summary()
    assert env.assert_tiers_equal("cold.trades") == 12_000


def test_the_view_is_kept_on_every_node(sharded: Env, cluster: list[devserver.Server]) -> None:
    """Each node keeps its own view definition: offloader replaces the view over both
    tiers on every node of the source's cluster, each at the same (commit, position),
    and a reader on any node gets every row of both tiers once."""
    env = sharded
    db = env.ch_database
    insert(env, 4_000, 1, "2025-05-01 00:00:00")
    env.write_config([env.table("trades", view=True, batch_rows=1_500)])
    report = env.once()
    assert report.ok and report.tables[0].view_error is None, report.summary()
    insert(env, 300, 50_000, "2025-05-02 00:00:00")  # in the hot tier only, for now
    every = "count(), sum(cityHash64(*))"
    source = env.ch(f"SELECT {every} FROM {db}.trades")
    comment = f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    for node in cluster:
        reader = node_env(node, env)
        assert reader.ch(f"SELECT {every} FROM {db}.trades_all") == source, node
        assert "commit 1," in reader.ch(comment)[0][0]
    assert env.once().tables[0].rows == 300
    for node in cluster:
        reader = node_env(node, env)
        assert "commit 2," in reader.ch(comment)[0][0], node
        assert reader.ch(f"SELECT {every} FROM {db}.trades_all") == source, node


def test_the_view_is_exact_on_every_node_at_every_read_while_rows_stream_in(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """12 cycles read shard by shard, rows arriving on both shards before each (ties on
    the watermark across shards), pages of 900 rows and appends of two: a reader on each
    node queries that node's view in a loop all the while, and every read equals the
    Distributed table (count and the hash of every row), while commits and the view
    replacements on both nodes go on. Any error a reader meets fails the test."""
    env = sharded_one
    db = env.ch_database
    env.write_config([env.table("trades", view=True, batch_rows=900, append_rows=1800, lag="0s")])
    every = "count(), sum(cityHash64(*))"
    assert env.once().ok  # nothing yet: the view is the Distributed table, on each node
    stop = threading.Event()
    quiet = threading.Lock()  # held while rows are inserted: the source changes then
    reads = [0 for _ in cluster]
    wrong: list[str] = []

    def reader(index: int) -> None:
        on = node_env(cluster[index], env)
        while not stop.is_set():
            with quiet:
                try:
                    got = on.ch(
                        f"SELECT (SELECT {every} FROM {db}.trades_all), "
                        f"(SELECT {every} FROM {db}.trades)"
                    )[0]
                except Exception as exc:
                    wrong.append(f"node {index + 1}: {exc!r}")
                    continue
            reads[index] += 1
            if got[0] != got[1]:
                wrong.append(f"node {index + 1}: view {got[0]} != source {got[1]}")

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        for cycle in range(12):
            with quiet:
                insert(env, 1_000 + 97 * cycle, 1 + cycle * 10_000, f"2025-06-01 {cycle:02d}:00:00")
            report = env.once()
            assert report.ok and report.tables[0].view_error is None, report.summary()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not wrong, wrong[:5]
    assert min(reads) >= 12, reads
    assert env.assert_tiers_equal("cold.trades") == sum(1_000 + 97 * c for c in range(12))


def test_validate_probes_the_view_on_every_node(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """`validate` checks each node can keep and read the view (its database, the cold
    tier), and names the node that cannot."""
    env = sharded_one
    db = env.ch_database
    insert(env, 1_000, 1, "2025-05-01 00:00:00")
    env.write_config([env.table("trades", view=True)])
    assert env.once().ok
    ok = env.cli("validate")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"the same on the 1 other nodes of cluster {CLUSTER}" in ok.stdout, ok.stdout
    env.write_config([env.table("trades", view=f"{db}_views.trades_all")])
    env.ch(f"CREATE DATABASE {db}_views")  # on node 1 only
    try:
        bad = env.cli("validate")
        assert bad.returncode == 1, bad.stdout
        assert f"on node 127.0.0.1:{cluster[1].tcp_port}: cold.trades: the view's database" in (
            bad.stdout
        ), bad.stdout
    finally:
        env.ch(f"DROP DATABASE {db}_views")


def test_status_names_a_node_whose_view_is_missing(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """`status --check` fails naming the node whose view is missing or behind; the next
    run, idle or not, makes it there again."""
    env = sharded_one
    db = env.ch_database
    insert(env, 1_000, 1, "2025-05-01 00:00:00")
    env.write_config([env.table("trades", view=True)])
    assert env.once().ok
    ok = env.cli("status", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    node_env(cluster[1], env).ch(f"DROP VIEW {db}.trades_all")
    bad = env.cli("status", "--check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"does not exist on node 127.0.0.1:{cluster[1].tcp_port} of the cluster" in (
        bad.stderr
    ), bad.stderr
    # The next run, idle, makes it again there, at the same commit.
    idle = env.once()
    assert idle.tables[0].status == "idle" and idle.tables[0].view_error is None
    assert env.cli("status", "--check").returncode == 0
    comment = f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    assert node_env(cluster[1], env).ch(comment) == env.ch(comment)
    insert(env, 10, 90_000, "2025-05-02 00:00:00")
    assert env.once().tables[0].rows == 10
    assert env.cli("status", "--check").returncode == 0


def detached_on(env: Env, cluster: list[devserver.Server], method: str = "detach") -> list[int]:
    """Each node's parts retention parked: detached, or (method "move") in its retiring
    table."""
    query = (
        "SELECT count() FROM system.detached_parts WHERE database = "
        f"'{env.ch_database}' AND table = 'trades_local'"
    )
    if method == "move":
        query = (
            f"SELECT count() FROM system.parts WHERE database = '{env.ch_database}' "
            "AND table = 'trades_local_retiring' AND active AND rows > 0"
        )
    return [int(node_env(n, env).ch(query)[0][0]) for n in cluster]


def days_on(env: Env, cluster: list[devserver.Server]) -> list[list[str]]:
    return [
        [
            str(r[0])
            for r in node_env(n, env).ch(
                "SELECT DISTINCT partition_id FROM system.parts WHERE database = "
                f"'{env.ch_database}' AND table = 'trades_local' AND active AND rows > 0 "
                "ORDER BY 1"
            )
        ]
        for n in cluster
    ]


def test_retention_drops_verified_days_on_every_shard(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """Old days verified over the whole cluster are dropped from both shards' local
    tables, nothing left detached on either; a late row on shard 2 blocks its day on
    both shards (and every later day); the hot tier plus Iceberg still hold every row."""
    env = sharded_one
    db = env.ch_database
    for day in range(1, 7):
        insert(env, 600, day * 10_000, f"2025-05-{day:02d} 00:00:00", step_us=60_000_000)
    env.write_config([env.table("trades", hot_retention="1d", partition_by=["day(exchange_ts)"])])
    assert env.once().ok
    # A late row on shard 2 only, in 2025-05-04 (before the position: not offloaded).
    node_env(cluster[1], env).ch(
        f"INSERT INTO {db}.trades_local SELECT * REPLACE (999999 AS trade_id) "
        f"FROM {db}.trades_local WHERE toDate(exchange_ts) = '2025-05-04' LIMIT 1"
    )
    validate = env.cli("validate")
    assert "on every shard" in validate.stdout, validate.stdout + validate.stderr
    result = env.cli("retain")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("dropped partition") == 3, result.stdout
    assert "REFUSED partition 20250504" in result.stdout, result.stdout
    old = {"20250501", "20250502", "20250503"}
    for days in days_on(env, cluster):
        assert not old & set(days) and "20250504" in days, days
    assert detached_on(env, cluster) == [0, 0]
    hot = int(env.ch(f"SELECT count() FROM {db}.trades")[0][0])
    assert hot == 3 * 600 + 1
    cold = env.iceberg_arrow(env.config().table("cold.trades")).num_rows
    assert cold == 6 * 600


@pytest.mark.parametrize("method", ["detach", "move"])
def test_a_cluster_retention_pass_killed_inside_the_drop_is_finished_on_every_shard(
    sharded_one: Env, cluster: list[devserver.Server], method: str
) -> None:
    """Killed after the first of a partition's parts (shard 1's) was dropped: shard 2's
    part stays parked (detached, or in shard 2's retiring table: the method Replicated
    shards need) until the next pass drops it; no part is put back, no late rows, and
    the hot tier keeps the days it should on both shards."""
    env = sharded_one
    db = env.ch_database
    for day in range(1, 5):
        insert(env, 300, day * 10_000, f"2025-05-{day:02d} 00:00:00", step_us=60_000_000)
    extra = {}
    if method == "move":
        for node in cluster:
            on = node_env(node, env)
            full = on.ch(
                f"SELECT engine_full FROM system.tables WHERE database = '{db}' "
                "AND name = 'trades_local'"
            )[0][0]
            on.ch(retention.retiring_ddl(db, "trades_local", "trades_local_retiring", str(full)))
        extra["retiring_table"] = "trades_local_retiring"
    env.write_config([env.table("trades", hot_retention="1d", **extra)])
    assert env.once().ok
    killed = env.cli("retain", extra_env={faults.ENV: "retain_drop_part"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert detached_on(env, cluster, method) == [0, 1]
    again = env.cli("retain")
    assert again.returncode == 0, again.stdout + again.stderr
    left = "parts left detached"
    if method == "move":
        left = "nodes' parts left in the retiring table"
    assert f"1 of its 2 {left} by a stopped pass" in again.stdout, again.stdout
    assert "LATE ROWS" not in again.stdout and "REFUSED" not in again.stdout, again.stdout
    assert detached_on(env, cluster, method) == [0, 0]
    assert detached_on(env, cluster) == [0, 0]
    for days in days_on(env, cluster):
        assert days == ["20250504"], days
    assert env.once().ok
    verify = env.cli("verify")
    assert verify.returncode == 0 and "LATE" not in verify.stdout, verify.stdout


def test_add_proposes_a_distributed_source_read_shard_by_shard(
    sharded_one: Env, cluster: list[devserver.Server]
) -> None:
    """`offloader add --all` proposes the Distributed table (from its local table's keys
    and partitioning), not the local table it reads, and the block offloads every row."""
    env = sharded_one
    insert(env, 600, 1, "2026-01-01 00:00:00")
    env.write_config([])
    result = env.cli("add", "--all", env.ch_database)
    assert result.returncode == 0, result.stderr
    (table,) = env.config().tables
    assert table.source == f"{env.ch_database}.trades"
    assert (table.watermark, table.keys, table.distributed) == (
        "exchange_ts",
        ("trade_id",),
        "shards",
    )
    assert [str(p) for p in table.partition_by] == ["day(exchange_ts)"]
    assert env.once().ok
    assert env.assert_tiers_equal(table.target) == 600 == sum(shard_counts(env, cluster))


def test_a_uuid_keyed_source_tied_across_shards_is_read_in_clickhouse_order(
    cluster: list[devserver.Server], pg_database: str, tmp_path: Path
) -> None:
    """Keyed by a UUID whose two halves order the other way round in ClickHouse (by its
    last 8 bytes first) than in Python (by its text), with rows tied on the whole
    position (watermark and key) on both shards: every round's end and the scan's last
    position are ClickHouse's, so a second run finds no row to read again."""
    for env in clusters.sharded_env(cluster, pg_database, tmp_path, cluster=CLUSTER):
        db = env.ch_database
        local = (
            f"CREATE TABLE {db}.keyed_local (ts DateTime64(6, 'UTC'), id UUID, v Int64) "
            "ENGINE = MergeTree ORDER BY (ts, id)"
        )
        clusters.create_distributed(cluster, env, CLUSTER, "keyed", local, key="v")
        # Ten rows a second; the key k = number % 7 is the UUID 0000000k-…-00000000000(6-k),
        # so rows 7 apart share a position, and land on the other shard (v % 2).
        env.ch(
            f"INSERT INTO {db}.keyed SELECT toDateTime64('2025-05-01 00:00:00', 6, 'UTC') + "
            "intDiv(number, 10), toUUID(concat('0000000', toString(number % 7), "
            "'-0000-0000-0000-00000000000', toString(6 - number % 7))), number "
            "FROM numbers(2000) SETTINGS distributed_foreground_insert = 1"
        )
        assert min(shard_counts_of(env, cluster, "keyed_local")) > 900
        env.write_config([env.table("keyed", watermark="ts", keys=["id"], batch_rows=97)])
        first = env.once()
        assert first.ok and first.tables[0].rows == 2_000, first.summary()
        again = env.once()
        assert again.ok and again.tables[0].rows == 0, again.summary()
        ice = IcebergCatalog(env.config().catalog).load("cold.keyed")
        assert ice is not None
        stored = ice.table.scan(selected_fields=("v",)).to_arrow().column("v").to_pylist()
        assert sorted(stored) == list(range(2_000)), "a row was lost or stored twice"


def shard_counts_of(env: Env, cluster: list[devserver.Server], table: str) -> list[int]:
    return [
        int(node_env(n, env).ch(f"SELECT count() FROM {env.ch_database}.{table}")[0][0])
        for n in cluster
    ]
