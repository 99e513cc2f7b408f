"""The cold tier on object storage: PostgreSQL catalog + S3 warehouse, exactly as in
config/examples/postgres-s3.toml, against a real S3 server on loopback (SeaweedFS,
offloader/devstore.py): credentials, a missing bucket, the store stopped (SIGSTOP) and
killed (SIGKILL, then restarted) mid-run and during a compaction, two writers."""

from __future__ import annotations

import os
import signal
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from offloader.dev import devstore
from tests.conftest import S3Server
from tests.helpers import ROOT, Env

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "config" / "examples" / "postgres-s3.toml"


def production(
    env: Env, s3: S3Server, monkeypatch: pytest.MonkeyPatch, **overrides: str
) -> dict[str, Any]:
    """The example's [iceberg.catalog], its ${VARS} pointed at the test servers."""
    example = tomllib.loads(EXAMPLE.read_text())
    catalog = {k: v for k, v in example["iceberg"]["catalog"].items() if k != "name"}
    values = {
        "OFFLOADER_CATALOG_URI": env.pg_dsn.replace("postgresql://", "postgresql+psycopg2://"),
        "OFFLOADER_WAREHOUSE": f"s3://{s3.bucket}/{uuid.uuid4().hex[:8]}",
        "S3_ENDPOINT": s3.endpoint,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
        "S3_CONNECT_TIMEOUT": "2",
        "S3_REQUEST_TIMEOUT": "3",
    }
    values.update(overrides)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    assert example["postgres"]["dsn"].startswith("${OFFLOADER_PG_DSN")
    return catalog


def test_offload_into_s3_with_postgres_catalog(
    env: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.create_trades("s3t")
    env.insert_trades("s3t", 120_000, first_id=1, start="2026-01-01 00:00:00")
    catalog = production(env, s3_server, monkeypatch)
    env.write_config([env.table("s3t", partition_by=["day(exchange_ts)"])], catalog=catalog)
    validate = env.cli("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "writable (probe written and deleted)" in validate.stdout
    assert s3_server.secret_key not in validate.stdout + validate.stderr
    report = env.once()
    assert report.ok, report.summary()
    env.insert_trades("s3t", 1_000, first_id=500_000, start="2026-01-03 00:00:00")
    assert env.once().ok
    assert env.assert_tiers_equal("cold.s3t") == 121_000
    assert env.cli("verify").returncode == 0


def test_missing_bucket_and_wrong_credentials_are_clear(
    env: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.create_trades("cred")
    env.insert_trades("cred", 100, first_id=1, start="2026-01-01 00:00:00")
    catalog = production(env, s3_server, monkeypatch, OFFLOADER_WAREHOUSE="s3://no-such-bucket/w")
    env.write_config([env.table("cred")], catalog=catalog)
    result = env.cli("once")
    assert result.returncode == 1
    assert "the warehouse bucket does not exist" in result.stdout, result.stdout
    validate = env.cli("validate")
    assert validate.returncode == 1
    assert "is not writable: the warehouse bucket does not exist" in validate.stdout

    catalog = production(env, s3_server, monkeypatch, S3_SECRET_ACCESS_KEY="wrong-secret")
    env.write_config([env.table("cred")], catalog=catalog)
    result = env.cli("once")
    assert result.returncode == 1
    assert "access denied by the object store" in result.stdout, result.stdout
    assert "wrong-secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_object_store_stops_mid_append_then_recovers(
    env_long: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_long
    env.create_trades("stop")
    env.insert_trades("stop", 800_000, first_id=1, start="2026-01-01 00:00:00")
    catalog = production(env, s3_server, monkeypatch)
    env.write_config([env.table("stop", batch_rows=50_000, append_rows=200_000)], catalog=catalog)
    proc = env.popen("--log-format", "json", "once")
    assert proc.stderr is not None
    for line in proc.stderr:  # stop the object store right after the first commit
        if '"msg":"committed"' in line:
            break
    os.kill(s3_server.pid, signal.SIGSTOP)  # the object store stops answering
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        os.kill(s3_server.pid, signal.SIGCONT)
    assert proc.returncode == 1, out
    assert "FAILED cold.stop" in out
    report = env.once()
    assert report.ok, report.summary()
    assert env.cli("verify").returncode == 0
    assert env.assert_tiers_equal("cold.stop") == 800_000


def test_two_writers_on_the_postgres_catalog(
    env_long: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_long
    for name in ("w1", "w2", "w3"):
        env.create_trades(name)
        env.insert_trades(name, 60_000, first_id=1, start="2026-01-01 00:00:00")
    catalog = production(env, s3_server, monkeypatch)
    env.write_config(
        [env.table(n, append_rows=20_000) for n in ("w1", "w2", "w3")], catalog=catalog
    )
    procs = [env.popen("once") for _ in range(2)]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode in (0, 1)
    assert env.once().ok
    for name in ("w1", "w2", "w3"):
        assert env.assert_tiers_equal(f"cold.{name}") == 60_000


def test_object_store_killed_and_restarted(
    env_long: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store's process SIGKILLed while a run writes its pages (after its
    first commit), then restarted on the same data: the run fails with a clear reason,
    nothing half-committed; the next run continues; every row once. Then the store
    stopped (SIGSTOP) for a compaction: it fails, and succeeds once the store is back."""
    env = env_long
    store = devstore.start(tmp_path / "s3")
    server = S3Server(store.endpoint, store.access_key, store.secret_key, store.pid)
    try:
        env.create_trades("k")
        env.insert_trades("k", 600_000, first_id=1, start="2026-01-01 00:00:00")
        catalog = production(env, server, monkeypatch)
        env.write_config(
            [
                env.table(
                    "k", batch_rows=50_000, append_rows=200_000, partition_by=["day(exchange_ts)"]
                )
            ],
            catalog=catalog,
        )
        proc = env.popen("--log-format", "json", "once")
        assert proc.stderr is not None
        for line in proc.stderr:  # kill the store right after the first commit
            if '"msg":"committed"' in line:
                break
        os.kill(store.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 1, out
        assert "FAILED cold.k" in out and "Traceback" not in out
        store = devstore.start(tmp_path / "s3")  # same ports, same data
        for _ in range(3):  # the store may still be settling: a failure says why
            report = env.once()
            if report.ok:
                break
            assert "cold.k: internal error" not in report.summary(), report.summary()
        assert report.ok, report.summary()
        assert env.assert_tiers_equal("cold.k") == 600_000

        os.kill(store.pid, signal.SIGSTOP)
        try:
            stopped = env.cli("maintain", timeout=180)
        finally:
            os.kill(store.pid, signal.SIGCONT)
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "cold.k: failed" in stopped.stdout
        again = env.cli("maintain")
        assert again.returncode == 0, again.stdout + again.stderr
        assert env.assert_tiers_equal("cold.k") == 600_000
        assert env.cli("verify").returncode == 0
    finally:
        devstore.stop(tmp_path / "s3")
