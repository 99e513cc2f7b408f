"""`offloader status`: watermark, rows, last run, lag, TTL warning and --check exit codes."""

from __future__ import annotations

import orjson
import pytest

from offloader.ops.status import ttl_seconds
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
    # One data file a UTC day of the rows offloaded: two when the run falls between 23:00
    # and midnight UTC (rows 48 and 47 hours old then lie on both sides of a midnight).
    [(files,)] = env.ch(
        f"SELECT uniqExact(toDate(exchange_ts)) FROM (SELECT exchange_ts FROM "
        f"{env.ch_database}.ttl ORDER BY exchange_ts LIMIT {st['rows_offloaded']})"
    )
    assert st["data_files"] == files and st["snapshots"] == 1 and st["manifests"] == 1, st
    check = env.cli("status", "--check")
    assert check.returncode == 1
    assert "CHECK FAILED cold.ttl" in check.stderr
    assert "WARNING: lag" in check.stdout
    assert f"Iceberg: {files} data files, 1 manifests, 1 snapshots" in check.stdout

    env.write_config([env.table("ttl", lag="0s")], service={"lag_alert": "1h"})
    assert env.once().ok
    check = env.cli("status", "--check")
    assert check.returncode == 0, check.stdout + check.stderr


def _gauge(exposition: str, name: str, table: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(f'{name}{{table="{table}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {table} in the scrape")


@pytest.mark.integration
def test_status_check_and_metrics_agree_on_lag(env: Env) -> None:
    """A quiet source is not lagging; a table that falls behind is — and `status`,
    `status --check` and the scraped metrics say the same about both."""
    import anyio
    from prometheus_client import generate_latest

    from offloader.offload.supervisor import run_once
    from offloader.service.metrics import Metrics

    env.create_trades("quiet")
    env.create_trades("behind")
    # Both hold only rows from 2024: the quiet one is offloaded in one cycle, the other
    # can take only 1,000 rows a cycle (max_rows_per_cycle) and falls behind.
    env.insert_trades("quiet", 3_000, first_id=1, start="2024-03-01 00:00:00")
    env.insert_trades("behind", 20_000, first_id=1, start="2024-03-01 00:00:00")
    env.write_config(
        [
            env.table("quiet"),
            env.table("behind", batch_rows=500, max_rows_per_cycle=1_000),
        ],
        service={"lag_alert": "1h"},
    )
    metrics = Metrics()
    for _ in range(2):
        report = anyio.run(lambda: run_once(env.config(), on_table=metrics.table))
        assert report.ok, report.summary()
    scrape = generate_latest(metrics.registry).decode()
    assert "_created" not in scrape

    statuses = {s["target"]: s for s in orjson.loads(env.cli("status", "--json").stdout)}
    quiet, behind = statuses["cold.quiet"], statuses["cold.behind"]
    # Quiet: nothing waits, lag 0 everywhere, although its newest row is years old.
    assert quiet["rows_behind"] == 0 and quiet["lag_seconds"] == 0
    assert _gauge(scrape, "offloader_lag_seconds", "cold.quiet") == 0
    assert _gauge(scrape, "offloader_rows_behind", "cold.quiet") == 0
    assert _gauge(scrape, "offloader_newest_offloaded_row_age_seconds", "cold.quiet") > 86400
    # Behind: 18,000 rows wait; the oldest is from 2024.
    assert behind["rows_behind"] == 18_000
    assert _gauge(scrape, "offloader_rows_behind", "cold.behind") == 18_000
    scraped_lag = _gauge(scrape, "offloader_lag_seconds", "cold.behind")
    assert scraped_lag > 86400
    assert abs(behind["lag_seconds"] - scraped_lag) < 120  # the same measure, moments apart

    check = env.cli("status", "--check")
    assert check.returncode == 1
    assert "CHECK FAILED cold.behind" in check.stderr
    assert "cold.quiet" not in check.stderr


@pytest.mark.integration
def test_alert_rules_pass_promtool() -> None:
    """ops/alerts.yml is valid, and its unit tests (ops/alerts.test.yml) show the lag
    alert firing for a stuck table and not for a quiet one."""
    import subprocess

    from tests.helpers import ROOT

    promtool = ROOT / ".venv" / "promtool" / "usr" / "bin" / "promtool"
    assert promtool.exists(), "promtool is missing: run scripts/test.sh"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [str(promtool), *args], cwd=ROOT / "ops", capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
