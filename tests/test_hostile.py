"""A settings profile on offloader's ClickHouse user changes nothing it reads: a 2-shard
cluster of embedded ClickHouse 26.9 servers whose users.xml gives offloader's user the
guard shared clusters often set (`max_result_rows = 1000`, `result_overflow_mode =
'break'`, `skip_unavailable_shards = 1`). Every query offloader sends pins those settings
(offloader.pinned) to ClickHouse 26.9's defaults, checked here against the server's
own system.settings; a profile that refuses a pinned setting fails the run naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offloader.dev import devserver
from offloader.pinned import PINNED
from offloader.sql.text import quote_string
from tests import clusters
from tests.helpers import Env, trades_rows

pytestmark = pytest.mark.integration

CLUSTER = "hostile_cluster"
PASSWORD = "hostile-secret"
# 20,000 rows over three UTC days, three rows a timestamp.
ROWS = 20_000
STEP_US = 38_880_000
START = "2025-05-01 00:00:00"

# offloader's user under the guard shared clusters often set; `frozen` a read-only one.
PROFILES = {
    "cut": {"max_result_rows": 1000, "result_overflow_mode": "break", "skip_unavailable_shards": 1},
    "frozen": {"readonly": 1, "max_result_rows": 1000, "result_overflow_mode": "break"},
}
USERS = [clusters.User("offloader", PASSWORD, "cut"), clusters.User("frozen", PASSWORD, "frozen")]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devserver.Server]]:
    users = clusters.users_xml(*USERS, profiles=PROFILES)
    with clusters.running(tmp_path_factory, "hostile", name=CLUSTER, users=users) as nodes:
        yield nodes


@pytest.fixture
def env(hostile: list[devserver.Server], pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """`trades` (MergeTree) on node 1, and `sharded`: a Distributed table on node 1 over
    `sharded_local` on both shards, sharded by trade_id."""
    for e in clusters.sharded_env(hostile, pg_database, tmp_path, cluster=CLUSTER, table="sharded"):
        e.create_trades("trades")
        yield e


def run_as(env: Env, user: str, table: str, transport: str) -> None:
    """Offload `table` to cold.hostile_<table> (a target of this module's own: the
    table lock is PostgreSQL's, shared with any other suite on the same server)."""
    env.transport = transport
    env.write_config(
        [env.table(table, batch_rows=5_000, target=f"cold.hostile_{table}")],
        clickhouse_extra={"user": user, "password": PASSWORD},
    )


def test_every_pinned_setting_is_clickhouse_default(env: Env) -> None:
    """Each pinned value is the server's own default (a wrong pin would change reads)."""
    names = ", ".join(quote_string(n) for n in PINNED)
    found = dict(env.ch(f"SELECT name, default FROM system.settings WHERE name IN ({names})"))
    assert found == PINNED


@pytest.mark.parametrize("transport", ["native", "arrow", "parquet"])
def test_a_result_limiting_profile_loses_no_row_of_a_sharded_source(
    env: Env, hostile: list[devserver.Server], transport: str
) -> None:
    """A Distributed source read shard by shard under the `cut` profile: one cycle
    offloads every row of the three days, each once."""
    sql = trades_rows(env.ch_database, "sharded", ROWS, 1, START, STEP_US)
    env.ch(sql + " SETTINGS distributed_foreground_insert = 1")
    run_as(env, "offloader", "sharded", transport)
    report = env.once()
    assert report.ok and report.tables[0].rows == ROWS, report.summary()
    assert env.assert_tiers_equal("cold.hostile_sharded") == ROWS


@pytest.mark.parametrize("transport", ["native", "arrow"])
def test_a_result_limiting_profile_offloads_a_table_in_one_cycle(env: Env, transport: str) -> None:
    """A plain MergeTree under the `cut` profile: one cycle offloads every row."""
    env.ch(trades_rows(env.ch_database, "trades", ROWS, 1, START, STEP_US))
    run_as(env, "offloader", "trades", transport)
    report = env.once()
    assert report.ok and report.tables[0].rows == ROWS, report.summary()
    assert env.assert_tiers_equal("cold.hostile_trades") == ROWS


@pytest.mark.parametrize("transport", ["native", "arrow"])
def test_a_profile_refusing_a_pinned_setting_is_named(env: Env, transport: str) -> None:
    """readonly = 1 with a changed max_result_rows: the run fails, nothing is committed,
    and the error names the setting and what to change in the profile."""
    env.ch(trades_rows(env.ch_database, "trades", 100, 1, START, STEP_US))
    run_as(env, "frozen", "trades", transport)
    table = env.once().tables[0]
    assert table.status == "failed" and table.rows == 0, table
    assert table.error is not None
    assert "max_result_rows" in table.error and "readonly = 2" in table.error, table.error
