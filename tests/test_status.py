"""`offloader status`: watermark, rows, last run, lag, TTL warning and --check exit codes."""

from __future__ import annotations

import orjson
import pytest

from offloader.status import ttl_seconds
from tests.helpers import Env


def test_ttl_parsing() -> None:
    assert ttl_seconds("toDateTime(ts) + toIntervalDay(30)") == 30 * 86400
    assert ttl_seconds("ts + INTERVAL 6 HOUR DELETE") == 6 * 3600
    assert ttl_seconds(None) is None
    assert ttl_seconds("ts + toIntervalHour(1), ts + toIntervalDay(1) TO VOLUME 'x'") == 3600


@pytest.mark.integration
def test_status_and_check(env: Env) -> None:
    env.ch(
        f"CREATE TABLE {env.ch_database}.ttl (exchange_ts DateTime64(6, 'UTC'), trade_id UInt64) "
        "ENGINE = MergeTree ORDER BY (exchange_ts, trade_id) "
        "TTL toDateTime(exchange_ts) + toIntervalDay(3)"
    )
    env.ch(
        f"INSERT INTO {env.ch_database}.ttl SELECT now64(6, 'UTC') - toIntervalHour(48 - number), "
        "number FROM numbers(10)"
    )
    env.write_config([env.table("ttl", lag="47h")], service={"lag_alert": "1h"})
    assert env.once().ok  # takes only the oldest rows (older than 47h)
    result = env.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    [st] = orjson.loads(result.stdout)
    assert st["target"] == "cold.ttl"
    assert st["last_status"] == "ok"
    assert st["rows_offloaded"] in (1, 2)
    assert st["rows_behind"] in (8, 9)
    assert st["lag_seconds"] > 40 * 3600
    assert "of the ClickHouse TTL" in st["ttl_warning"]
    assert st["data_files"] == 1 and st["snapshots"] == 1 and st["manifests"] == 1, st
    check = env.cli("status", "--check")
    assert check.returncode == 1
    assert "CHECK FAILED cold.ttl" in check.stderr
    assert "WARNING: lag" in check.stdout
    assert "Iceberg: 1 data files, 1 manifests, 1 snapshots" in check.stdout

    env.write_config([env.table("ttl", lag="0s")], service={"lag_alert": "1h"})
    assert env.once().ok
    check = env.cli("status", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
