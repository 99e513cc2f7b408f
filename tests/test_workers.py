"""Worker processes (service/workers.py): every enabled table in exactly one worker's
share; `once` and `run` in several processes offload every row once, also when a worker
is killed between its Iceberg and PostgreSQL commits; SIGTERM drains every worker."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from offloader import faults
from offloader.config import Config, ServiceConfig, TableConfig
from offloader.configfile import load_config
from offloader.service.workers import parse_worker, share, worker_count
from tests.helpers import ROOT, Env
from tests.test_service import Service


def config(tables: int, **service: object) -> Config:
    """`tables` tables (every fifth disabled) and `service` over a parsed example."""
    ts = tuple(
        TableConfig(f"db.t{i}", f"cold.t{i}", "ts", ("id",), enabled=i % 5 != 4)
        for i in range(tables)
    )
    return dataclasses.replace(
        _EXAMPLE, tables=ts, service=dataclasses.replace(ServiceConfig(), **service)
    )


_EXAMPLE = load_config(ROOT / "config" / "tables.toml", env={})


@pytest.mark.parametrize(("tables", "count"), [(1, 2), (7, 2), (30, 3), (1000, 2)])
def test_every_enabled_table_is_in_exactly_one_share(tables: int, count: int) -> None:
    cfg = config(tables)
    shares = [share(cfg, i, count) for i in range(count)]
    seen = [t.target for s in shares for t in s.enabled_tables]
    assert sorted(seen) == sorted(t.target for t in cfg.enabled_tables)
    sizes = [len(s.enabled_tables) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    assert all(t.enabled for s in shares for t in s.tables)


def test_each_worker_serves_its_metrics_on_its_own_port() -> None:
    cfg = config(4, metrics_port=9464)
    assert [share(cfg, i, 3).service.metrics_port for i in range(3)] == [9464, 9465, 9466]
    free = config(4, metrics_port=0)
    assert share(free, 1, 2).service.metrics_port == 0


def test_auto_workers_take_the_cores_but_not_more_than_the_tables_need() -> None:
    cores = os.cpu_count() or 1
    assert worker_count(config(1)) == 1
    assert worker_count(config(1000)) == cores
    assert worker_count(config(1000, workers=3)) == 3
    assert worker_count(config(6, max_parallel_tables=4)) == min(cores, 2)  # 5 enabled


@pytest.mark.parametrize("text", ["2/2", "-1/2", "a/2", "1", "1/0"])
def test_a_malformed_worker_option_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--worker"):
        parse_worker(text)


TABLES = ("w0", "w1", "w2", "w3")


def _setup(env: Env, workers: int, **service: object) -> None:
    for name in TABLES:
        env.create_trades(name)
        env.insert_trades(name, 3_000, 1, "2026-01-01 00:00:00")
    env.write_config(
        [env.table(name, batch_rows=1_000) for name in TABLES],
        service={"workers": workers, "max_parallel_tables": 2, **service},
    )


def _cycle_starts(stderr: str) -> list[tuple[int, int]]:
    """(worker, tables) of every "cycle started" line a run logged."""
    starts = []
    for line in stderr.splitlines():
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if event.get("msg") == "cycle started":
            starts.append((event.get("worker"), event["tables"]))
    return sorted(starts)


@pytest.mark.integration
def test_once_in_two_workers_offloads_every_row_once_also_after_a_worker_is_killed(
    env_one: Env,
) -> None:
    env = env_one
    _setup(env, workers=2)
    # Worker 1 dies between the Iceberg commit of its first page and PostgreSQL's.
    killed = env.cli(
        "--log-format",
        "json",
        "once",
        "--json",
        extra_env={faults.ENV: "iceberg_commit", faults.WORKER: "1"},
    )
    assert killed.returncode == 1, killed.stderr
    assert _cycle_starts(killed.stderr) == [(0, 2), (1, 2)]
    report = orjson.loads(killed.stdout)
    by_status = {t["target"]: (t["status"], t.get("reason")) for t in report["tables"]}
    assert sorted(by_status) == [f"cold.{n}" for n in TABLES]
    dead = [t for t, s in by_status.items() if s == ("failed", "worker")]
    assert len(dead) == 2, by_status
    assert all(s == ("ok", None) for t, s in by_status.items() if t not in dead), by_status

    for name in TABLES:
        env.insert_trades(name, 500, 100_000, "2026-01-02 00:00:00")
    again = env.cli("--log-format", "json", "once")
    assert again.returncode == 0, again.stderr
    for name in TABLES:
        assert env.assert_tiers_equal(f"cold.{name}") == 3_500


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.integration
def test_run_restarts_a_killed_worker_and_sigterm_drains_every_worker(env_one: Env) -> None:
    env = env_one
    _setup(env, workers=2, interval="3s", shutdown_grace="30s")
    svc = Service(env)
    try:
        for name in TABLES:
            svc.wait_for(lambda e, n=name: e.get("msg") == "table ok" and e["table"] == f"cold.{n}")
        workers = _children(svc.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        svc.wait_for(lambda e: e.get("msg") == "worker exited; restarting it")
        for name in TABLES:
            env.insert_trades(name, 700, 200_000, "2026-01-03 00:00:00")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = [env.ch(f"SELECT count() FROM {env.ch_database}.{n}")[0][0] for n in TABLES]
            done = [_iceberg_rows(env, n) for n in TABLES]
            if done == counts:
                break
            time.sleep(1)
        assert len(_children(svc.proc.pid)) == 2
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=60) == 0
        assert _children(svc.proc.pid) == []
        assert svc.count("offloader stopped") == 3  # two workers and the parent
    finally:
        svc.stop()
    for name in TABLES:
        assert env.assert_tiers_equal(f"cold.{name}") == 3_700


def _iceberg_rows(env: Env, name: str) -> int:
    return int(env.iceberg_arrow(env.config().table(f"cold.{name}")).num_rows)
