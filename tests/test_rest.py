"""The cold tier behind a real Iceberg REST catalog: SeaweedFS's (`tests/conftest.py`
s3_server), its tables on its S3 API, offloader configured with exactly
config/examples/rest.toml. Exactly-once through the REST protocol itself: the marker
in the snapshot summary, compare-and-set through the catalog's 409, recovery of a
commit whose PostgreSQL half was lost, two processes racing; maintenance, repair,
status, verify, validate and the view over both tiers on it."""

from __future__ import annotations

import datetime as dt
import signal
import tomllib
from typing import Any

import pytest

from offloader import faults
from tests.conftest import S3Server
from tests.helpers import ROOT, Env

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "config" / "examples" / "rest.toml"


def rest(env: Env, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The example's [iceberg.catalog], its ${VARS} pointed at the test's REST catalog."""
    assert s3.store is not None
    example = tomllib.loads(EXAMPLE.read_text())
    catalog = {k: v for k, v in example["iceberg"]["catalog"].items() if k != "name"}
    served = s3.store.rest_catalog()
    values = {
        "ICEBERG_REST_URI": served["uri"],
        "ICEBERG_WAREHOUSE": served["warehouse"],
        "ICEBERG_REST_CREDENTIAL": served["credential"],
        "ICEBERG_REST_OAUTH_URI": served["oauth2-server-uri"],
        "S3_ENDPOINT": s3.endpoint,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
        "S3_CONNECT_TIMEOUT": "2",
        "S3_REQUEST_TIMEOUT": "5",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return catalog


def table(env: Env, name: str, **extra: Any) -> dict[str, Any]:
    """A table of this test's own namespace (the REST catalog is the session's)."""
    return env.table(name, target=f"{env.catalog_name}.{name}", **extra)


def test_offload_verify_status_validate_and_the_view(
    env: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = env.ch_database
    collection = f"nc_{db}"
    env.ch(
        f"CREATE NAMED COLLECTION {collection} AS access_key_id = '{s3_server.access_key}', "
        f"secret_access_key = '{s3_server.secret_key}'"
    )
    try:
        env.create_trades("r")
        env.insert_trades("r", 60_000, 1, "2026-01-01 00:00:00", step_us=5_000_000)
        catalog = rest(env, s3_server, monkeypatch)
        views = {"s3_collection": collection}
        tables = [table(env, "r", partition_by=["day(exchange_ts)"], view=True)]
        env.write_config(tables, catalog=catalog, views=views)
        validate = env.cli("validate")
        assert validate.returncode == 0, validate.stdout + validate.stderr
        assert "tables are written where the REST catalog places them" in validate.stdout
        report = env.once()
        assert report.ok and report.tables[0].rows == 60_000, report.summary()
        assert report.tables[0].view_error is None, report.tables[0].view_error
        env.insert_trades("r", 1_000, 900_000, "2026-01-04 00:00:00")
        assert env.once().ok
        target = f"{env.catalog_name}.r"
        assert env.assert_tiers_equal(target) == 61_000
        verify = env.cli("verify")
        assert verify.returncode == 0 and "EQUAL" in verify.stdout, verify.stdout
        status = env.cli("status", "--check")
        assert status.returncode == 0, status.stdout + status.stderr
        # The view reads the REST catalog's table from its S3 location, pinned: every
        # row once, every column equal.
        every = "count(), sum(cityHash64(*))"
        assert env.ch(f"SELECT {every} FROM {db}.r_all") == env.ch(f"SELECT {every} FROM {db}.r")
        assert env.ch(f"SELECT count() FROM {db}.r_all") == [(61_000,)]
        assert "icebergS3" in env.ch(f"SHOW CREATE TABLE {db}.r_all")[0][0]
    finally:
        env.ch(f"DROP NAMED COLLECTION IF EXISTS {collection}")


@pytest.mark.parametrize("point", ["iceberg_commit", "watermark_txn"])
def test_a_kill_between_the_commits_is_recovered(
    env_one: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """SIGKILL right after the REST commit (PostgreSQL not yet) and inside the
    PostgreSQL transaction: the next run recovers from the snapshot's marker."""
    env = env_one
    env.create_trades("k")
    env.insert_trades("k", 50_000, 1, "2026-01-01 00:00:00")
    catalog = rest(env, s3_server, monkeypatch)
    env.write_config([table(env, "k", batch_rows=10_000, append_rows=20_000)], catalog=catalog)
    killed = env.cli("once", extra_env={faults.ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    report = env.once()
    assert report.ok and report.tables[0].recovered, report.summary()
    assert report.tables[0].rows == 30_000
    assert env.assert_tiers_equal(f"{env.catalog_name}.k") == 50_000


def test_two_processes_racing_commit_each_row_once(
    env_one: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `once` processes on the same tables: the advisory lock splits them, and a
    stale commit would be answered 409 by the catalog; every row lands once."""
    env = env_one
    names = ("a", "b", "c")
    for name in names:
        env.create_trades(name)
        env.insert_trades(name, 40_000, 1, "2026-01-01 00:00:00")
    catalog = rest(env, s3_server, monkeypatch)
    env.write_config([table(env, n, append_rows=10_000) for n in names], catalog=catalog)
    procs = [env.popen("once") for _ in range(2)]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode in (0, 1)
    assert env.once().ok
    for name in names:
        assert env.assert_tiers_equal(f"{env.catalog_name}.{name}") == 40_000


def test_maintenance_and_repair(
    env_one: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_one
    db = env.ch_database
    env.create_trades("m")
    catalog = rest(env, s3_server, monkeypatch)
    env.write_config(
        [table(env, "m", partition_by=["day(exchange_ts)"], batch_rows=100, append_rows=100)],
        catalog=catalog,
    )
    for day in (1, 2, 3):
        env.insert_trades("m", 300, day * 10_000, f"2026-02-0{day} 00:00:00")
    assert env.once().ok
    maintained = env.cli("maintain", "--json")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    assert '"groups": 2' in maintained.stdout, maintained.stdout
    target = f"{env.catalog_name}.m"
    assert env.assert_tiers_equal(target) == 900
    env.ch(
        f"INSERT INTO {db}.m SELECT * REPLACE (777 AS trade_id) FROM {db}.m "
        "WHERE toDate(exchange_ts) = '2026-02-02' LIMIT 1"
    )
    day = dt.date(2026, 2, 2)
    fixed = env.cli("repair", target, "--since", f"{day}", "--until", f"{day + dt.timedelta(1)}")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert env.assert_tiers_equal(target) == 901
    assert env.cli("verify").returncode == 0


def test_catalog_unreachable_and_a_409_storm(
    env_one: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The REST catalog unreachable: the table fails saying so, nothing is written. Then
    a second writer commits to the same table right before each of offloader's first
    three commit attempts: the catalog answers each attempt 409, offloader refreshes and
    tries again, and its fourth attempt lands — every row once (with the retry removed
    the run fails on the first 409)."""
    from offloader.iceberg import table as iceberg_table

    env = env_one
    env.create_trades("s")
    env.insert_trades("s", 200_000, 1, "2026-01-01 00:00:00")
    catalog = rest(env, s3_server, monkeypatch)
    monkeypatch.setenv("ICEBERG_REST_URI", "http://127.0.0.1:9")  # nothing listens
    env.write_config([table(env, "s", append_rows=20_000)], catalog=catalog)
    down = env.once()
    assert not down.ok and down.tables[0].rows == 0
    assert "Connection refused" in (down.tables[0].error or ""), down.tables[0].error
    assert s3_server.store is not None
    monkeypatch.setenv("ICEBERG_REST_URI", s3_server.store.rest_uri)
    env.write_config([table(env, "s", append_rows=1_000_000)], catalog=catalog)
    env.insert_trades("s", 10, 900_000, "2026-01-05 00:00:00")
    assert env.once().ok  # creates the table (and commits)
    target = f"{env.catalog_name}.s"

    from pyiceberg.catalog import load_catalog

    other = load_catalog("storm", **s3_server.store.rest_catalog())
    competing = []
    original = iceberg_table.transaction

    def first_another_writer(t: Any) -> Any:
        if len(competing) < 3:
            theirs = other.load_table(target)
            with theirs.transaction() as tx, tx.update_snapshot().fast_append():
                pass
            competing.append(1)
        return original(t)

    monkeypatch.setattr(iceberg_table, "transaction", first_another_writer)
    env.insert_trades("s", 200_000, 2_000_000, "2026-01-10 00:00:00")
    during = env.once()
    monkeypatch.setattr(iceberg_table, "transaction", original)
    assert len(competing) == 3
    assert during.ok and during.tables[0].rows == 200_000, during.summary()
    assert during.tables[0].snapshots == 1
    assert env.assert_tiers_equal(target) == 400_010
    snapshots = other.load_table(target).metadata.snapshots
    assert len(snapshots) == 1 + 3 + 1, snapshots  # the run before, three others', ours
