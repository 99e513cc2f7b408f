"""Retention and the offload cycle know of each other, against real servers: a pass
recovering a parked partition compares it again once Iceberg moved since."""

from __future__ import annotations

import signal

import pytest

from offloader import faults
from offloader.dev.demo import trades_ddl
from offloader.iceberg import IcebergCatalog
from tests.helpers import Env

pytestmark = pytest.mark.integration

PER_DAY = 120
DAYS = 4  # 2025-05-01 to 2025-05-04
# Table locks are PostgreSQL advisory locks on the target's name, shared by every schema
# of the test database: a name no other test uses.
TARGET = "cold.intent_trades"


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
    killed = env.cli("retain", extra_env={faults.ENV: "retain_parked"})
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
