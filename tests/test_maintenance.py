"""`offloader maintain`: compaction, manifest and metadata bounds, expiry and orphan files,
against real ClickHouse, PostgreSQL and an Iceberg warehouse; the tiers stay equal."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from offloader import faults
from offloader.config import MaintenanceConfig
from offloader.dev import devserver
from offloader.iceberg import IcebergCatalog, files, rewrite
from tests.conftest import S3Server, make_env
from tests.helpers import Env, independent_reads
from tests.test_s3 import production

pytestmark = pytest.mark.integration


@pytest.fixture
def native(clickhouse_server: devserver.Server, pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """Maintenance works on Iceberg alone: one transport is enough."""
    e = make_env(clickhouse_server, pg_database, tmp_path)
    try:
        yield e
    finally:
        e.ch(f"DROP DATABASE IF EXISTS {e.ch_database}")
        e.drop_pg_schema()


@pytest.fixture
def staging(clickhouse_server: devserver.Server, pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """A second deployment beside `native`: its own ClickHouse database, PostgreSQL
    state (schema) and Iceberg catalog."""
    (tmp_path / "staging").mkdir()
    e = make_env(clickhouse_server, pg_database, tmp_path / "staging")
    try:
        yield e
    finally:
        e.ch(f"DROP DATABASE IF EXISTS {e.ch_database}")
        e.drop_pg_schema()


def cycles(env: Env, name: str, count: int, *, start: dt.datetime, step: dt.timedelta) -> int:
    """`count` cycles, each after inserting a few rows `step` later than the last."""
    rows = 0
    for i in range(count):
        at = start + i * step
        n = 30 + i % 7
        env.insert_trades(name, n, first_id=1 + i * 1000, start=f"{at:%Y-%m-%d %H:%M:%S}")
        rows += n
        report = env.once()
        assert report.ok, report.summary()
    return rows


def table_files(env: Env, target: str) -> list[tuple[tuple[object, ...], str]]:
    ice = IcebergCatalog(env.config().catalog).load(target)
    assert ice is not None
    live = files.live_files(ice, "exchange_ts")
    return [(f.partition, f.path) for f in live.stats]


def shape(env: Env, target: str) -> files.Shape:
    ice = IcebergCatalog(env.config().catalog).load(target)
    assert ice is not None
    return files.shape(ice)


def age(path: Path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when))


def test_maintain_compacts_closed_days_and_keeps_every_row(native: Env) -> None:
    env = native
    env.create_trades("m")
    env.write_config([env.table("m", partition_by=["day(exchange_ts)"], batch_rows=50)])
    start = dt.datetime(2026, 1, 1, 1)
    rows = cycles(env, "m", 30, start=start, step=dt.timedelta(hours=2))
    before = Counter(p for p, _ in table_files(env, "cold.m"))
    assert max(before.values()) >= 10  # one small file per cycle and day

    dry = env.cli("maintain", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would rewrite" in dry.stdout and "compact partition" in dry.stdout
    assert Counter(p for p, _ in table_files(env, "cold.m")) == before  # nothing changed

    # A crash leftover (old) and an in-flight write (young) next to the data files.
    data_dir = next((env.tmp / "warehouse").rglob("*.parquet")).parent
    old, young = data_dir / "leftover-old.parquet", data_dir / "inflight-young.parquet"
    foreign = data_dir / "notes.txt"  # not an Iceberg file: never deleted
    old.write_bytes(b"x" * 100)
    young.write_bytes(b"y" * 100)
    foreign.write_text("kept")
    age(old, 4)
    age(foreign, 4)

    result = env.cli("maintain", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = orjson.loads(result.stdout)
    assert report["status"] == "ok" and report["groups"] == 2, report
    # The old leftover, and the metadata files the log (20 kept) no longer lists.
    metadata = list((env.tmp / "warehouse").rglob("*.metadata.json"))
    assert len(metadata) <= 21, len(metadata)
    assert report["orphans_deleted"] >= 1 and not old.exists()
    assert young.exists() and foreign.exists()
    assert report["sort_order_set"] is False  # the first offload declared it already

    after = Counter(p for p, _ in table_files(env, "cold.m"))
    days = sorted(after)
    # The two closed days hold one file each now; the open day (newest rows) is untouched.
    assert [after[d] for d in days[:-1]] == [1, 1], after
    assert after[days[-1]] == before[days[-1]]
    s = shape(env, "cold.m")
    assert s.manifests <= 4 and s.rows == rows
    assert env.assert_tiers_equal("cold.m") == rows
    assert env.cli("verify").returncode == 0

    # Compacted files are sorted by (watermark, keys).
    for _, path in table_files(env, "cold.m"):
        if "compact" in path:
            data = pq.read_table(path.removeprefix("file://")).select(["exchange_ts", "trade_id"])
            assert data.equals(
                data.sort_by([("exchange_ts", "ascending"), ("trade_id", "ascending")])
            )

    # The commit marker was carried forward: offloading continues without recovery or error.
    more = cycles(env, "m", 3, start=start + 30 * dt.timedelta(hours=2), step=dt.timedelta(hours=2))
    assert env.assert_tiers_equal("cold.m") == rows + more
    # A second pass finds nothing new to rewrite in the compacted days.
    again = orjson.loads(env.cli("maintain", "--json").stdout)[0]
    assert again["files_rewritten"] == 0 or again["groups"] == 1, again


def test_metadata_and_manifests_stay_bounded(native: Env) -> None:
    env = native
    env.create_trades("b")
    env.write_config([env.table("b", batch_rows=50)])
    env.config_path.write_text(
        env.config_path.read_text()
        + '\n[maintenance]\nmetadata_versions = 5\nsnapshot_retention = "0s"\n'
    )
    cycles(env, "b", 14, start=dt.datetime(2026, 3, 1), step=dt.timedelta(minutes=10))
    # Superseded metadata files wait for maintenance (a view may pin one).
    metadata = list((env.tmp / "warehouse").rglob("*.metadata.json"))
    assert len(metadata) > 6, len(metadata)
    s = shape(env, "cold.b")
    assert s.manifests <= 4, s
    result = env.cli("maintain", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)[0]
    assert report["snapshots_expired"] >= 10, report
    assert report["shape"]["snapshots"] <= 2, report
    metadata = list((env.tmp / "warehouse").rglob("*.metadata.json"))
    assert len(metadata) <= 6, len(metadata)  # previous-versions-max 5, plus the current one
    # Unpartitioned: the closed range was compacted into one file, the newest file stays.
    assert report["shape"]["data_files"] <= 2, report
    assert env.assert_tiers_equal("cold.b")
    # Expiry and orphan cleanup left every referenced file in place: a fresh cycle works.
    assert cycles(env, "b", 1, start=dt.datetime(2026, 3, 2), step=dt.timedelta(minutes=1))
    assert env.assert_tiers_equal("cold.b")


def test_compaction_commit_is_compare_and_set_against_an_append(native: Env) -> None:
    """A compaction planned and written before a concurrent append still commits (its
    files are still live) and loses nothing; one whose inputs vanished gives up."""
    env = native
    env.create_trades("c")
    env.write_config([env.table("c", batch_rows=50)])
    rows = cycles(env, "c", 6, start=dt.datetime(2026, 4, 1), step=dt.timedelta(hours=1))
    catalog = IcebergCatalog(env.config().catalog, MaintenanceConfig())
    ice = catalog.load("cold.c")
    assert ice is not None
    from offloader.iceberg import compaction

    live = files.live_files(ice, "exchange_ts")
    cutoff = compaction.compaction_cutoff([f.upper for f in live.stats], live.kind, time.time(), 0)
    (group,) = compaction.compaction_groups(live.stats, cutoff, 1 << 27, whole_partitions=False)
    written = rewrite.rewrite_group(ice, live, group, ("exchange_ts", "trade_id"), 1 << 27)
    # Another process appends meanwhile.
    rows += cycles(env, "c", 1, start=dt.datetime(2026, 4, 2), step=dt.timedelta(hours=1))
    deleted = [live.files[f.path] for f in group.files]
    rewrite.replace_files(ice, deleted, written, "test")
    assert env.assert_tiers_equal("cold.c") == rows
    # The same inputs again: already replaced, so the commit refuses and cleans up.
    again = rewrite.rewrite_group(ice, live, group, ("exchange_ts", "trade_id"), 1 << 27)
    from offloader.errors import InconsistentState

    with pytest.raises(InconsistentState, match="changed by another writer"):
        rewrite.replace_files(ice, deleted, again, "test")
    assert not any(Path(f.file_path.removeprefix("file://")).exists() for f in again)
    assert env.assert_tiers_equal("cold.c") == rows
    assert env.once().ok
    assert env.cli("verify").returncode == 0


def test_independent_readers_after_compaction(native: Env) -> None:
    """ClickHouse's own Iceberg reader and DuckDB's read the compacted table equal to
    ClickHouse's source."""
    env = native
    env.create_trades("r")
    env.write_config([env.table("r", partition_by=["day(exchange_ts)"], batch_rows=50)])
    rows = cycles(env, "r", 12, start=dt.datetime(2026, 5, 1), step=dt.timedelta(hours=5))
    report = orjson.loads(env.cli("maintain", "--json").stdout)[0]
    assert report["files_rewritten"] > 0, report
    ice = IcebergCatalog(env.config().catalog).load("cold.r")
    assert ice is not None
    query = "SELECT count(*), sum(trade_id), count(venue_seq) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    expected = env.ch(query.format(t=f"{env.ch_database}.r"))[0]
    assert expected[0] == rows
    want = ",".join(map(str, expected))
    assert got == [want, want], got


def test_service_runs_maintenance_between_cycles(native: Env) -> None:
    """`offloader run` compacts on its own between cycles and exports the table's shape."""
    from tests.test_service import Service, scrape_until

    env = native
    env.create_trades("sv")
    for day in range(3):
        for hour in (1, 7, 13, 19):
            at = f"2026-06-0{day + 1} {hour:02d}:00:00"
            env.insert_trades("sv", 40, first_id=day * 10_000 + hour * 100, start=at)
    # Small appends: one data file per page, so each day ends up with several files.
    table = env.table("sv", partition_by=["day(exchange_ts)"], batch_rows=25, append_rows=25)
    env.write_config([table], service={"interval": "1m", "metrics_port": 0})
    svc = Service(env)
    try:
        url = svc.wait_for(lambda e: e.get("msg") == "metrics listening")["address"]
        done = svc.wait_for(lambda e: e.get("msg") == "maintenance ok", timeout=200)
        assert done["files_rewritten"] > 0 and done["groups"] == 2, done
        svc.wait_for(lambda e: e.get("msg") == "maintenance pass finished")
        body = scrape_until(url, 'offloader_table_data_files{table="cold.sv"}')
        assert 'offloader_maintenance_runs_total{result="ok",table="cold.sv"} 1.0' in body
    finally:
        svc.stop()
    assert env.assert_tiers_equal("cold.sv") == 480


@pytest.mark.parametrize("point", faults.MAINTENANCE_POINTS)
def test_kill_during_maintenance_then_exact(native: Env, point: str) -> None:
    """SIGKILL at each maintenance step, then `maintain` and `once` again: tiers equal,
    nothing lost or duplicated, no referenced file deleted."""
    env = native
    env.create_trades("k")
    env.write_config([env.table("k", partition_by=["day(exchange_ts)"], batch_rows=50)])
    env.config_path.write_text(
        env.config_path.read_text() + '\n[maintenance]\nsnapshot_retention = "0s"\n'
    )
    rows = cycles(env, "k", 10, start=dt.datetime(2026, 7, 1, 2), step=dt.timedelta(hours=6))
    # A leftover old enough to be an orphan, so orphan_delete is reached.
    data_dir = next((env.tmp / "warehouse").rglob("*.parquet")).parent
    for i in range(2):
        leftover = data_dir / f"leftover-{i}.parquet"
        leftover.write_bytes(b"x")
        age(leftover, 4)
    killed = env.cli("maintain", extra_env={faults.ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert env.assert_tiers_equal("cold.k") == rows
    for _ in range(50):  # the killed process's PostgreSQL session may hold the lock a moment
        again = env.cli("maintain", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        if orjson.loads(again.stdout)[0]["status"] == "ok":
            break
        time.sleep(0.2)
    rows += cycles(env, "k", 2, start=dt.datetime(2026, 7, 4, 2), step=dt.timedelta(hours=6))
    assert env.assert_tiers_equal("cold.k") == rows
    assert env.cli("verify").returncode == 0
    # After a pass with nothing killed, each closed day holds one file.
    final = orjson.loads(env.cli("maintain", "--json").stdout)[0]
    files = Counter(p for p, _ in table_files(env, "cold.k"))
    assert sorted(files.values())[:-1] == [1] * (len(files) - 1), (files, final)


def test_maintenance_on_s3(
    native: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction, expiry and orphan cleanup on an S3 warehouse: only unreferenced
    objects are listed as orphans, and after deleting them every row still reads."""
    import boto3

    env = native
    env.create_trades("s3m")
    catalog = production(env, s3_server, monkeypatch)
    env.write_config(
        [env.table("s3m", partition_by=["day(exchange_ts)"], batch_rows=100, append_rows=100)],
        catalog=catalog,
    )
    for day in (1, 2, 3):
        env.insert_trades("s3m", 300, first_id=day * 10_000, start=f"2026-02-0{day} 00:00:00")
    first = env.once()
    assert first.ok, first.summary()  # three pages per day, one file each
    result = env.cli("maintain", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)[0]
    assert report["groups"] == 2 and report["files_written"] == 2, report
    assert env.assert_tiers_equal("cold.s3m") == 900

    ice = IcebergCatalog(env.config().catalog).load("cold.s3m")
    assert ice is not None
    location = ice.table.location()
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    s3.put_object(Bucket=bucket, Key=f"{prefix}/data/leftover.parquet", Body=b"x")
    # Expire every older snapshot, as a pass past the retention would: the small files
    # compaction replaced become unreferenced. With no safety age, they and the
    # leftover are orphans; nothing live is.
    files.expire(ice, files.expirable_snapshots(ice, datetime.now(UTC)))
    orphans = files.orphan_files(ice, 0)
    names = {o.path.rsplit("/", 1)[1] for o in orphans}
    assert "leftover.parquet" in names
    live = {p.rsplit("/", 1)[1] for p in files.live_files(ice, "exchange_ts").files}
    assert not names & live
    assert files.delete_orphans(ice, orphans) == len(orphans)
    assert files.orphan_files(ice, 0) == []
    assert env.assert_tiers_equal("cold.s3m") == 900
    env.insert_trades("s3m", 50, first_id=90_000, start="2026-02-04 00:00:00")
    assert env.once().ok
    assert env.assert_tiers_equal("cold.s3m") == 950


@pytest.mark.parametrize("store", ["file", "s3"])
def test_deployments_sharing_a_location_keep_each_others_tables(
    native: Env,
    staging: Env,
    store: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Staging and production, each with its own catalog and state, one warehouse and
    the same target name: their tables share a location. `maintain` of one refuses the
    location, naming it, both uuids and what to do, and deletes nothing there: the other
    table still loads and reads exactly (before, the other's older metadata files were
    deleted as superseded, and it no longer loaded: "No such file")."""
    prod = native
    if store == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        catalog = production(prod, s3, monkeypatch)  # one ${OFFLOADER_WAREHOUSE} for both
        prod.write_config([prod.table("m", batch_rows=50)], catalog=catalog)
        staging.write_config([staging.table("m", batch_rows=50)], catalog=catalog)
    else:
        prod.write_config([prod.table("m", batch_rows=50)])
        shared = {
            "type": "sql",
            "uri": f"sqlite:///{staging.tmp}/catalog.db",
            "warehouse": f"file://{prod.tmp}/warehouse",
        }
        staging.write_config([staging.table("m", batch_rows=50)], catalog=shared)
    for env in (prod, staging):
        env.create_trades("m")
    staged = cycles(staging, "m", 1, start=dt.datetime(2026, 3, 1, 1), step=dt.timedelta(hours=1))
    rows = cycles(prod, "m", 3, start=dt.datetime(2026, 3, 2, 1), step=dt.timedelta(hours=1))
    tables = [IcebergCatalog(e.config().catalog).load("cold.m") for e in (prod, staging)]
    assert tables[0] is not None and tables[1] is not None
    location = tables[0].table.location()
    assert tables[1].table.location() == location
    uuids = [str(t.table.metadata.table_uuid) for t in tables]
    if store == "file":  # every file old enough to be an orphan, to whichever table
        for path in (prod.tmp / "warehouse").rglob("*.*"):
            age(path, 4)

    result = prod.cli("maintain")
    assert staging.assert_tiers_equal("cold.m") == staged, result.stdout
    assert prod.assert_tiers_equal("cold.m") == rows
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"location {location} also holds" in result.stdout, result.stdout + result.stderr
    assert uuids[0] in result.stdout and uuids[1] in result.stdout
    assert "give each deployment its own warehouse" in result.stdout
    assert "maintenance FAILED cold.m: the table's location" in result.stderr

    refused = orjson.loads(staging.cli("maintain", "--json").stdout)[0]
    assert refused["status"] == "failed" and uuids[0] in refused["error"], refused
    assert staging.assert_tiers_equal("cold.m") == staged
    assert prod.assert_tiers_equal("cold.m") == rows
