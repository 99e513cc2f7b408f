"""Retention and the offload cycle know of each other, against real servers: a day under
a pending retention intent is neither audited as different nor repaired (by the cycle's
`late_rows = "repair"`, by `offloader repair`, even with --force), and a pass
recovering a parked partition compares it again once Iceberg moved since.

The failing shard is real: a 2-shard cluster whose second node gives offloader's user a
`readonly = 2` profile (reads work, ALTER is refused), so a retention pass parks the
day on shard 1 and fails on shard 2."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloader import faults
from offloader.dev import devserver
from offloader.dev.demo import trades_ddl
from offloader.iceberg import IcebergCatalog
from tests import clusters
from tests.helpers import Env
from tests.test_cluster import CLUSTER, detached_on, insert

pytestmark = pytest.mark.integration

PER_DAY = 120
DAYS = 4  # 2025-05-01 to 2025-05-04
# Table locks are PostgreSQL advisory locks on the target's name, shared by every schema
# of the test database: a name no other test uses.
TARGET = "cold.intent_trades"


def users_xml(*, refusing: bool) -> str:
    """`default` (the tests' own set-up, and the Distributed table's connections) and
    `offloader`, whose profile on a refusing node is readonly = 2."""
    offloader = clusters.User("offloader", profile="refusing" if refusing else "default")
    return clusters.users_xml(offloader, profiles={"refusing": {"readonly": 2}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devserver.Server]]:
    """Two nodes, one shard each; node 2 refuses offloader's ALTERs."""
    users = [users_xml(refusing=False), users_xml(refusing=True)]
    with clusters.running(tmp_path_factory, "cluster-refusing", name=CLUSTER, users=users) as nodes:
        yield nodes


@pytest.fixture
def parked(cluster: list[devserver.Server], pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """4 days offloaded from a Distributed source (late_rows = "repair", a 10-day audit
    window), then a retention pass that parked 2025-05-01 on shard 1 and failed on
    shard 2: its intent is pending."""
    for env in clusters.sharded_env(cluster, pg_database, tmp_path, cluster=CLUSTER):
        for day in range(1, DAYS + 1):
            start = f"2025-05-{day:02d} 00:00:00"
            insert(env, PER_DAY, day * 10_000, start, step_us=60_000_000)
        table = env.table(
            "trades", target=TARGET, hot_retention="1d", late_rows="repair", audit_days=10
        )
        env.write_config([table], clickhouse_extra={"user": "offloader"})
        assert env.once().ok
        failed = env.cli("retain")
        assert failed.returncode != 0, failed.stdout + failed.stderr
        assert "(shard 2," in failed.stdout and "readonly mode" in failed.stdout, failed.stdout
        on_shards = detached_on(env, cluster)
        assert on_shards[0] > 0 and on_shards[1] == 0, on_shards
        yield env


def cold_day(env: Env, day: str) -> int:
    data = env.iceberg_arrow(env.config().table(TARGET))
    return sum(1 for v in data.column("exchange_ts").to_pylist() if v.date().isoformat() == day)


def test_the_cycle_never_repairs_a_day_a_failed_pass_left_parked_on_one_shard(
    parked: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The cycle's audit sees only shard 2's rows of 2025-05-01 (shard 1's are parked):
    with late_rows = "repair" it would replace Iceberg's day with half of it. The day is
    under the pending intent: not drifted, not repaired, Iceberg keeps every row."""
    env = parked
    hot_day = int(
        env.ch(
            f"SELECT count() FROM {env.ch_database}.trades WHERE toDate(exchange_ts) = '2025-05-01'"
        )[0][0]
    )
    assert 0 < hot_day < PER_DAY  # what the cycle's audit sees of the day
    with caplog.at_level(logging.WARNING, "offloader.offload.checkup"):
        report = env.once()
    assert report.ok, report.summary()
    assert (cold_day(env, "2025-05-01"), report.tables[0].repaired) == (PER_DAY, [])
    assert env.iceberg_arrow(env.config().table(TARGET)).num_rows == DAYS * PER_DAY
    table = report.tables[0]
    assert not [d for d in table.drifted or [] if d["day"] == "2025-05-01"], table.as_dict()
    held = [r for r in caplog.records if r.getMessage().startswith("day not audited")]
    assert [getattr(r, "day", None) for r in held] == ["2025-05-01"], caplog.text
    assert "retention pass of partition 20250501" in getattr(held[0], "reason", "")


def test_repair_refuses_a_day_under_a_pending_retention_intent_even_forced(parked: Env) -> None:
    env = parked
    for args in (("--since", "2025-05-01", "--until", "2025-05-02", "--force"), ()):
        result = env.cli("repair", TARGET, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            f"REFUSED 2025-05-01: {TARGET}: a retention pass of partition 20250501 "
            "(2025-05-01 to 2025-05-01) is pending" in result.stdout
        ), result.stdout
        assert "days repaired in commit" not in result.stdout, result.stdout
    assert cold_day(env, "2025-05-01") == PER_DAY


def test_a_parked_partition_is_compared_again_once_iceberg_moved(env_one: Env) -> None:
    """A pass killed once the partition was parked (every part: nothing stops the
    drop but the comparison being stale); then a snapshot removes the day's rows from
    Iceberg. The next pass must not drop what Iceberg no longer holds: it puts the
    parts back, compares again, and refuses the day."""
    env = env_one
    db = env.ch_database
    env.ch(trades_ddl(db, "t", partitioned=True))
    for day in range(1, DAYS + 1):
        env.insert_trades("t", PER_DAY, day * 10_000, f"2025-05-{day:02d} 00:00:00", 60_000_000)
    table = env.table("t", target=TARGET, hot_retention="1d", partition_by=["day(exchange_ts)"])
    env.write_config([table])
    assert env.once().ok
    killed = env.cli("retain", extra_env={faults.ENV: "retain_park"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    count = f"SELECT count() FROM {db}.t WHERE toDate(exchange_ts) = '2025-05-01'"
    assert env.ch(count) == [(0,)]  # parked
    ice = IcebergCatalog(env.config().catalog).load(TARGET)
    assert ice is not None
    before = ice.snapshot_id
    ice.table.delete("exchange_ts < '2025-05-02T00:00:00+00:00'")
    assert cold_day_t(env) == 0
    again = env.cli("retain")
    assert env.ch(count) == [(PER_DAY,)], again.stdout  # ClickHouse still holds the day
    assert f"Iceberg moved from snapshot {before} to " in again.stdout, again.stdout
    assert "put partition 20250501 back" in again.stdout, again.stdout
    assert "REFUSED partition 20250501: the tiers differ on 2025-05-01" in again.stdout


def cold_day_t(env: Env) -> int:
    data = env.iceberg_arrow(env.config().table(TARGET))
    return sum(1 for v in data.column("exchange_ts").to_pylist() if v.date().day == 1)
