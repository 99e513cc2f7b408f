"""`offloader run` as a service: schedule arithmetic, reload, metrics, graceful shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from offloader.errors import FAILURE_REASONS
from offloader.service.metrics import MAINTENANCE_RESULTS
from offloader.service.scheduler import after_cycle, next_tick
from tests.helpers import ROOT, Env

H = 3600.0
T0 = 1_780_000_000 // 3600 * 3600  # some top of the hour (UTC epoch seconds)


def test_ticks_align_to_the_hour() -> None:
    assert next_tick(T0, 900) == T0 + 900
    assert next_tick(T0 + 1, 900) == T0 + 900
    assert next_tick(T0 + 899.9, 900) == T0 + 900
    assert next_tick(T0 + 900, 900) == T0 + 1800
    assert next_tick(T0 + 3599, 900) == T0 + H
    # An interval that does not divide the hour restarts at the top of each hour.
    assert next_tick(T0 + 55 * 60, 7 * 60) == T0 + 56 * 60
    assert next_tick(T0 + 56 * 60, 7 * 60) == T0 + H
    # Longer than an hour: multiples since the epoch (midnight UTC for divisors of a day).
    assert next_tick(T0 + 1, 2 * H) % (2 * H) == 0


def test_overrun_skips_missed_ticks() -> None:
    on_time = after_cycle(T0, T0 + 30, 900)
    assert (on_time.next_at, on_time.skipped) == (T0 + 900, 0)
    late = after_cycle(T0, T0 + 2000, 900)  # ran 33 minutes: :15 and :30 were missed
    assert (late.next_at, late.skipped) == (T0 + 2700, 2)


class Service:
    """An `offloader run` subprocess whose JSON log lines are collected as they come."""

    def __init__(self, env: Env, extra_env: dict[str, str] | None = None) -> None:
        self.proc = env.popen("--log-format", "json", "run", "--now", extra_env=extra_env)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            with self._lock:
                self.events.append(event)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.events[seen:]
                seen = len(self.events)
            for event in fresh:
                if predicate(event):
                    return event
            if self.proc.poll() is not None and not fresh:
                break
            time.sleep(0.1)
        stderr = (
            self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        )
        raise AssertionError(f"no matching log event; last: {self.events[-5:]} {stderr}")

    def count(self, msg: str) -> int:
        with self._lock:
            return sum(1 for e in self.events if e.get("msg") == msg)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def scrape_until(url: str, expected: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        if expected in body or time.monotonic() > deadline:
            assert expected in body, body
            return body
        time.sleep(0.2)


def committed(table: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("msg") == "table ok" and e.get("table") == table


@pytest.mark.integration
def test_service_ticks_reloads_scrapes_and_stops_cleanly(env: Env) -> None:
    env.create_trades("s1")
    env.create_trades("s2")
    env.insert_trades("s1", 20_000, first_id=1, start="2026-01-01 00:00:00")
    env.insert_trades("s2", 20_000, first_id=1, start="2026-01-01 00:00:00")
    service_cfg = {"interval": "5s", "metrics_port": 0, "shutdown_grace": "20s"}
    env.write_config([env.table("s1")], service=service_cfg)
    svc = Service(env)
    try:
        metrics_at = svc.wait_for(lambda e: e.get("msg") == "metrics listening")["address"]
        svc.wait_for(committed("cold.s1"))
        tick = svc.wait_for(lambda e: e.get("msg") == "next cycle")
        assert int(tick["at"].split(":")[2]) % 5 == 0, tick  # aligned to the 5s grid

        # Onboard a table by editing the file: picked up on the next cycle, no restart.
        env.write_config([env.table("s1"), env.table("s2")], service=service_cfg)
        svc.wait_for(committed("cold.s2"))

        # A broken edit is rejected; the last good config keeps running.
        good = env.config_path.read_text()
        env.config_path.write_text(good.replace("batch_rows = 20000", "batch_rows = -1", 1))
        rejected = svc.wait_for(lambda e: e.get("msg", "").startswith("config reload rejected"))
        assert "batch_rows must be a positive integer, got -1" in rejected["error"]
        env.insert_trades("s1", 10, first_id=100_000, start="2026-01-02 00:00:00")
        svc.wait_for(lambda e: committed("cold.s1")(e) and e.get("rows") == 10)
        env.config_path.write_text(good)

        # The scrape catches up with the log line within moments (metrics are updated
        # when the supervisor collects the table's report).
        body = scrape_until(metrics_at, 'offloader_rows_total{table="cold.s1"} 20010.0')
        assert 'offloader_rows_total{table="cold.s2"} 20000.0' in body
        assert 'offloader_table_duration_seconds_count{table="cold.s2"}' in body
        assert 'offloader_lag_seconds{table="cold.s1"}' in body
        errors = re.search(r"^offloader_config_reload_errors_total (\S+)$", body, re.M)
        assert errors is not None and float(errors.group(1)) >= 1

        # SIGTERM in the middle of a big backlog: exits 0 within the grace period.
        env.insert_trades("s2", 300_000, first_id=1_000_000, start="2026-01-03 00:00:00")
        svc.wait_for(lambda e: e.get("msg") == "table started" and e.get("table") == "cold.s2")
        svc.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert svc.proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 25
        svc.wait_for(lambda e: e.get("msg") == "offloader stopped", timeout=5)
    finally:
        svc.stop()
    # Nothing half-done: no recovery needed, and a final cycle makes the tiers equal.
    report = env.once()
    assert report.ok
    assert not any(t.recovered for t in report.tables)
    assert env.assert_tiers_equal("cold.s1") == 20_010
    assert env.assert_tiers_equal("cold.s2") == 320_000


@pytest.mark.integration
def test_second_signal_exits_at_once(env: Env) -> None:
    env.create_trades("q")
    env.insert_trades("q", 300_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("q", batch_rows=5_000)], service={"shutdown_grace": "60s"})
    svc = Service(env)
    try:
        svc.wait_for(lambda e: e.get("msg") == "table started")
        time.sleep(0.5)
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=30) in (0, 1)
    finally:
        svc.stop()
    assert env.once().ok
    assert env.assert_tiers_equal("cold.q") == 300_000


def test_validate_runs_without_servers_offline() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "offloader",
            "--config",
            "config/tables.toml",
            "validate",
            "--offline",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("env", ["native"], indirect=True)
def test_one_minute_interval_ticks_on_the_minute_and_notifies_systemd(
    env: Env, tmp_path: Any
) -> None:
    """A 1-minute interval, the shortest a user sets. The first cycle runs at once
    (--now); the second starts at second :00 of the next minute. Readiness, watchdog and
    stopping are sent to a NOTIFY_SOCKET the way systemd listens for them."""
    import socket as socketlib

    env.create_trades("m1")
    env.insert_trades("m1", 1_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("m1")], service={"interval": "1m"})
    sock_path = str(tmp_path / "notify.sock")
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(0.2)
    messages: list[str] = []

    def collect() -> None:
        while True:
            try:
                messages.append(listener.recv(1024).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=collect, daemon=True).start()
    svc = Service(env, extra_env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "2000000"})
    try:
        svc.wait_for(committed("cold.m1"))
        env.insert_trades("m1", 10, first_id=10_000, start="2026-01-02 00:00:00")
        second = svc.wait_for(
            lambda e: e.get("msg") == "cycle started" and svc.count("cycle started") >= 2,
            timeout=75,
        )
        assert second["ts"][17:19] == "00", second["ts"]  # hh:mm:00
        svc.wait_for(lambda e: committed("cold.m1")(e) and e.get("rows") == 10)
        svc.proc.send_signal(signal.SIGHUP)
        svc.wait_for(lambda e: e.get("msg") == "SIGHUP: re-reading config")
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=30) == 0
    finally:
        svc.stop()
        listener.close()
    assert "READY=1" in messages
    assert "WATCHDOG=1" in messages
    assert "STOPPING=1" in messages
    assert env.assert_tiers_equal("cold.m1") == 1_010


@pytest.mark.integration
@pytest.mark.parametrize("env", ["native"], indirect=True)
def test_big_new_table_is_worked_off_in_bounded_chunks(env: Env) -> None:
    env.create_trades("big")
    env.create_trades("small")
    env.insert_trades("big", 60_000, first_id=1, start="2026-01-01 00:00:00")
    env.insert_trades("small", 100, first_id=1, start="2026-01-01 00:00:00")
    env.write_config(
        [env.table("big", batch_rows=10_000, max_rows_per_cycle=25_000), env.table("small")]
    )
    rows = []
    for _ in range(4):
        report = env.once()
        assert report.ok
        big = report.tables[0]
        rows.append(big.rows)
        assert report.tables[1].status in ("ok", "idle")  # never starved
    assert rows == [30_000, 30_000, 0, 0]  # 25k cap reached at a page boundary
    assert env.assert_tiers_equal("cold.big") == 60_000


def _used_metric_families() -> set[str]:
    """The metric names ops/alerts.yml and ops/grafana-dashboard.json read, as families
    (a histogram's _bucket, a counter's _total are samples of the family)."""
    used = set()
    for path in ("ops/alerts.yml", "ops/grafana-dashboard.json"):
        for name in re.findall(r"offloader_[a-z_]+", (ROOT / path).read_text()):
            used.add(_family(name))
    return used


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count|total)$", "", name)


@pytest.mark.integration
def test_a_fresh_service_exports_every_metric_at_zero(env_one: Env) -> None:
    """Scraped right after start: every metric the alert rules and the dashboard read is
    exported, and every labelled counter they take increase() of has its series at 0 for
    each configured table and label value — so OffloaderTableFailing fires on the second
    failure, as its summary says, not the third. A table removed by a config reload
    loses its series; one added gains them at 0."""
    env = env_one
    service_cfg = {"interval": "1h", "metrics_port": 0}
    env.write_config([env.table("missing")], service=service_cfg)  # fails every cycle
    svc = Service(env)
    try:
        metrics_at = svc.wait_for(lambda e: e.get("msg") == "metrics listening")["address"]
        body = urllib.request.urlopen(metrics_at, timeout=10).read().decode()
        families = {_family(n) for n in re.findall(r"^# TYPE (offloader_\w+) ", body, re.M)}
        missing = _used_metric_families() - families
        assert not missing, missing
        for reason in FAILURE_REASONS:
            zero = f'offloader_table_failures_total{{reason="{reason}",table="cold.missing"}} '
            assert zero in body, (reason, body)
        for result in MAINTENANCE_RESULTS:
            assert (
                f'offloader_maintenance_runs_total{{result="{result}",table="cold.missing"}}'
                in body
            )
        assert 'offloader_view_failures_total{table="cold.missing"} 0.0' in body
        assert 'offloader_cycles_total{result="failed"} ' in body
        failed = scrape_until(
            metrics_at,
            'offloader_table_failures_total{reason="missing_table",table="cold.missing"} 1.0',
        )
        assert (
            'offloader_table_failures_total{reason="clickhouse",table="cold.missing"} 0.0' in failed
        )
        # Reload: the table replaced by another.
        env.write_config([env.table("other")], service=service_cfg)
        svc.proc.send_signal(signal.SIGHUP)
        after = scrape_until(
            metrics_at, 'offloader_table_failures_total{reason="data",table="cold.other"} 0.0'
        )
        assert 'table="cold.missing"' not in after
    finally:
        svc.stop()
