"""One table over both tiers: the ClickHouse view offloader keeps at each table's
committed position (offloader/view.py), against the real embedded ClickHouse reading
the cold tier itself (icebergLocal) and the real PostgreSQL.

At every read the view must return each source row exactly once, with the source's
column names and types: while rows stream in over many cycles, with ties on the
watermark across page and cycle ends, after the hot partitions are dropped, after a
compaction and a repair, and across a kill between the Iceberg commit and the view's
replacement.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from offloader import faults
from offloader.dev.demo import trades_ddl
from offloader.iceberg import IcebergCatalog
from offloader.ops import maintenance
from offloader.ops.maintenance import MaintenanceReport
from offloader.sql.text import quote_ident
from offloader.tiers import view
from offloader.tiers.services import open_services
from offloader.tiers.view import column_pair, exact
from offloader.types import parse_type
from offloader.wire import iceberg_type
from tests.conftest import S3Server
from tests.helpers import Env
from tests.test_every_type import create_every_table
from tests.test_s3 import production

pytestmark = pytest.mark.integration

SUMS = "count(), sum(cityHash64(trade_id, exchange_ts, price, quantity, side, symbol, tags))"


def _view(env: Env, name: str = "trades") -> str:
    return f"{env.ch_database}.{name}_all"


def _types(env: Env, table: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in env.ch(f"DESCRIBE {env.ch_database}.{table}")]


def _same_as_source(env: Env, name: str = "trades") -> tuple[int, int]:
    """The view's count and checksum, asserted equal to the source's."""
    db = env.ch_database
    view = env.ch(f"SELECT {SUMS} FROM {_view(env, name)}")[0]
    hot = env.ch(f"SELECT {SUMS} FROM {db}.{name}")[0]
    assert view == hot, (view, hot)
    return view


def test_view_returns_every_row_once_with_the_source_types(env: Env) -> None:
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 10_000, 1, "2025-03-01 00:00:00", step_us=20_000_000)
    env.write_config([env.table("trades", view=True, batch_rows=3001)])
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].rows == 10_000
    assert report.tables[0].view_error is None, report.tables[0].view_error
    assert _same_as_source(env)[0] == 10_000
    assert env.ch(f"DESCRIBE {_view(env)}") == env.ch(f"DESCRIBE {db}.trades")
    # Rows in both tiers come from Iceberg for the offloaded part, from the hot table after.
    env.insert_trades("trades", 500, 20_001, "2025-03-04 00:00:00", step_us=1_000_000)
    assert _same_as_source(env)[0] == 10_500
    comment = env.ch(
        f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    )[0][0]
    assert comment.startswith("offloader: both tiers at commit 1, position"), comment


def test_every_type_through_the_view_equals_the_source(env: Env) -> None:
    """Every type family (Nullable and in an Array where allowed) read back through the
    view: its types are the source's (the text-form families aside: their stored type,
    from both tiers), and its rows equal the source's value by value (EXCEPT both ways)
    while they come from Iceberg, then with the same values from the hot side too (rows
    after the committed position), then from Iceberg alone (the hot table emptied)."""
    db = env.ch_database
    create_every_table(env)
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].view_error is None, report.tables[0].view_error
    source = [(str(r[0]), str(r[1])) for r in env.ch(f"DESCRIBE {db}.every")]
    viewed = [(str(r[0]), str(r[1])) for r in env.ch(f"DESCRIBE {db}.every_all")]
    assert [n for n, _ in viewed] == [n for n, _ in source]
    texts = []
    for (name, t), (_, got) in zip(source, viewed, strict=True):
        if exact(parse_type(t)):
            assert got == t, (name, got, t)
        else:
            assert got == iceberg_type(parse_type(t), "decimal"), (name, got)
            texts.append(name)
    assert {n.split("_", 1)[1] for n in texts} == {"Dynamic", "Variant", "Geometry"}, texts
    # The source's rows in the view's forms: the hot side of the view itself.
    hot = ", ".join(column_pair(n, t, t, "decimal")[0] for n, t in source)
    as_text = ", ".join(f"toString({quote_ident(n)})" for n, _ in source)

    def differences() -> list[tuple[object, ...]]:
        forms = f"SELECT {hot} FROM {db}.every"
        return env.ch(
            f"SELECT 'view', {as_text} FROM (SELECT * FROM {db}.every_all EXCEPT {forms}) "
            f"UNION ALL SELECT 'source', {as_text} FROM ({forms} EXCEPT SELECT * FROM "
            f"{db}.every_all)"
        )

    assert env.ch(f"SELECT count() FROM {db}.every_all")[0][0] == 5
    assert differences() == []
    # The same values once more, a day later: rows after the committed position, which
    # the view reads from the hot side.
    env.ch(
        f"INSERT INTO {db}.every SELECT * REPLACE (toDateTime64('2030-01-01 00:00:00', 9, 'UTC') + "
        f"toIntervalSecond(id) AS ts, id + 100 AS id) "
        f"FROM {db}.every"
    )
    assert env.ch(f"SELECT count() FROM {db}.every_all")[0][0] == 10
    assert differences() == []
    # Every row from Iceberg: the hot table emptied (as a TTL would), the view unchanged.
    env.ch(f"CREATE TABLE {db}.every_hot AS {db}.every")
    env.ch(f"INSERT INTO {db}.every_hot SELECT * FROM {db}.every WHERE id < 100")
    env.ch(f"TRUNCATE TABLE {db}.every")
    assert env.ch(f"SELECT count() FROM {db}.every_all")[0][0] == 5
    forms = f"SELECT {hot} FROM {db}.every_hot"
    assert env.ch(f"SELECT count() FROM ({forms} EXCEPT SELECT * FROM {db}.every_all)") == [(0,)]


# Every column of the trades table, hashed per row: what a reader compares.
ALL = "count(), sum(cityHash64(*))"


def _commit_ends(env: Env, target: str) -> list[list[Any]]:
    """The position each Iceberg commit reached (its snapshots' offloader markers)."""
    ice = IcebergCatalog(env.config().catalog).load(target)
    assert ice is not None
    return [
        orjson.loads(str(snap.summary["offloader.watermark"]))
        for snap in ice.table.metadata.snapshots
        if snap.summary is not None and snap.summary["offloader.watermark"] is not None
    ]


def test_view_is_exact_at_every_read_while_rows_stream_in(env: Env) -> None:
    """25 cycles, rows arriving before each (four per watermark value, and more tied on
    the committed row's watermark, after it by key), pages of 701 rows and appends of two
    pages (so pages and commits end inside ties: checked on every commit Iceberg holds),
    a backlog that binds max_rows_per_cycle (worked off over several cycles): a reader
    queries the view in a loop all the while, and every read equals the source (count
    and the hash of every column of every row), while commits and view replacements go
    on. Any error a reader meets fails the test."""
    db = env.ch_database
    env.create_trades("trades")
    env.write_config(
        [env.table("trades", view=True, batch_rows=701, append_rows=1402, max_rows_per_cycle=2804)]
    )
    assert env.once().ok  # nothing yet: the view is the hot table
    stop = threading.Event()
    quiet = threading.Lock()  # held while rows are inserted: the source changes then
    reads: list[tuple[object, ...]] = []
    wrong: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            with quiet:
                try:
                    got = env.ch(
                        f"SELECT (SELECT {ALL} FROM {db}.trades_all), "
                        f"(SELECT {ALL} FROM {db}.trades)"
                    )[0]
                except Exception as exc:
                    wrong.append(repr(exc))
                    continue
            reads.append(got)
            if got[0] != got[1]:
                wrong.append(f"view {got[0]} != source {got[1]}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    bound = 0
    try:
        next_id = 1
        for cycle in range(25):
            with quiet:
                start = dt.datetime(2025, 6, 1) + dt.timedelta(hours=cycle)
                count = 1000 + 37 * cycle + (4000 if cycle == 3 else 0)  # a backlog at 3
                env.insert_trades("trades", count, next_id, f"{start:%Y-%m-%d %H:%M:%S}", ties=4)
                next_id += 10_000
                position = (
                    env.ch(
                        f"SELECT exchange_ts, trade_id FROM {db}.trades_all "
                        "ORDER BY exchange_ts DESC, trade_id DESC LIMIT 1"
                    )
                    if cycle
                    else []
                )
                if position:
                    # Rows tied on the newest row's watermark, after it by key.
                    ts = position[0][0]
                    env.ch(
                        f"INSERT INTO {db}.trades SELECT * REPLACE ({next_id} + "
                        f"rowNumberInAllBlocks() AS trade_id) FROM {db}.trades WHERE exchange_ts = "
                        f"toDateTime64('{ts:%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC') LIMIT 2"
                    )
                    next_id += 10
            report = env.once()
            assert report.ok, report.summary()
            assert report.tables[0].view_error is None, report.tables[0].view_error
            bound += report.tables[0].more
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not wrong, wrong[:5]
    assert len(reads) >= 25, len(reads)
    print(f"\n{len(reads)} reads of the view over 25 cycles, each equal to the source")
    assert env.ch(f"SELECT {ALL} FROM {db}.trades_all") == env.ch(f"SELECT {ALL} FROM {db}.trades")
    assert bound >= 2, "max_rows_per_cycle never bound: no backlog was worked off in chunks"
    # Commits (each at a page end) that ended inside a tie: rows of the same watermark
    # after the commit's row by key, read in a later page or cycle.
    inside = 0
    for ts, trade_id in _commit_ends(env, "cold.trades"):
        after = env.ch(
            f"SELECT count() FROM {db}.trades WHERE exchange_ts = "
            f"toDateTime64('{ts}', 6, 'UTC') AND trade_id > {trade_id}"
        )
        inside += after[0][0] > 0
    assert inside >= 10, f"only {inside} commits ended inside a tie"


def test_view_after_dropped_partitions_compaction_and_repair(env: Env) -> None:
    """Hot partitions dropped as a TTL would: the view still returns every row, from
    Iceberg. After a compaction and after a repair of late rows (the view keeps a late
    row out until it is repaired), the view equals what ClickHouse held."""
    db = env.ch_database
    env.ch(trades_ddl(db, "trades", partitioned=True))
    env.write_config([env.table("trades", partition_by=["day(exchange_ts)"])])
    for day in range(1, 6):
        for half in (0, 1):  # two runs, two files in each day's partition
            env.insert_trades(
                "trades",
                200,
                day * 1000 + half * 200,
                f"2025-03-0{day} {half * 12:02d}:00:00",
                step_us=60_000_000,
            )
            report = env.once()
            assert report.ok, report.summary()
    env.write_config([env.table("trades", view=True, partition_by=["day(exchange_ts)"])])
    report = env.once()  # an idle run creates the view
    assert report.ok and report.tables[0].view_error is None, report.summary()
    everything = _same_as_source(env)
    assert everything[0] == 2000
    # Compaction (closed days, one file each) moves the view to the rewritten snapshot.
    definition = (
        f"SELECT create_table_query FROM system.tables WHERE database = '{db}' "
        "AND name = 'trades_all'"
    )
    before = env.ch(definition)[0][0]
    maintained = env.cli("maintain")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    assert "rewrote 8 files" in maintained.stdout, maintained.stdout  # the last day is open
    assert "view was not" not in maintained.stdout
    meta = env.ch(definition)[0][0]
    assert meta != before and "iceberg_metadata_file_path" in meta, (before, meta)
    assert _same_as_source(env) == everything
    # A late row below the position: not in the view until repaired.
    env.ch(
        f"INSERT INTO {db}.trades SELECT * REPLACE (999999 AS trade_id) FROM {db}.trades "
        "WHERE toDate(exchange_ts) = '2025-03-02' LIMIT 1"
    )
    assert env.ch(f"SELECT count() FROM {db}.trades_all")[0][0] == 2000
    fixed = env.cli("repair", "cold.trades", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert '"view_error": null' in fixed.stdout, fixed.stdout
    everything = _same_as_source(env)
    assert everything[0] == 2001
    assert env.ch(definition)[0][0] != meta
    # Hot partitions dropped (what a TTL does): every row from Iceberg.
    for day in ("20250301", "20250302", "20250303"):
        env.ch(f"ALTER TABLE {db}.trades DROP PARTITION {day}")
    assert env.ch(f"SELECT {SUMS} FROM {db}.trades_all")[0] == everything


def test_kill_before_the_view_is_replaced_then_next_run(env: Env) -> None:
    """SIGKILL after both commits, before the view moved: the view still shows the
    previous consistent pair (every row once), and the next run (with nothing new to
    read) replaces it."""
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 3000, 1, "2025-04-01 00:00:00")
    env.write_config([env.table("trades", view=True, batch_rows=1000, append_rows=1000)])
    killed = env.cli("once", extra_env={faults.ENV: "view_replace:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _same_as_source(env)[0] == 3000  # at commit 2, the rest from the hot table
    comment = f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    assert "commit 2," in env.ch(comment)[0][0]
    report = env.once()
    assert report.ok and report.tables[0].status == "idle", report.summary()
    assert "commit 3," in env.ch(comment)[0][0], env.ch(comment)
    assert _same_as_source(env)[0] == 3000
    status = env.cli("status", "--check")
    assert status.returncode == 0, status.stdout + status.stderr


def test_view_over_s3_reads_credentials_from_a_named_collection(
    env: Env, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 warehouse: ClickHouse reads it with icebergS3 and the named collection the
    config names; no secret appears in the view's DDL. A missing collection is named by
    `validate` and by the run, which still commits its rows."""
    db = env.ch_database
    collection = f"nc_{db}"
    env.ch(
        f"CREATE NAMED COLLECTION {collection} AS access_key_id = '{s3_server.access_key}', "
        f"secret_access_key = '{s3_server.secret_key}'"
    )
    try:
        env.create_trades("trades")
        env.insert_trades("trades", 5000, 1, "2025-05-01 00:00:00", step_us=30_000_000)
        catalog = production(env, s3_server, monkeypatch)
        tables = [env.table("trades", view=True, batch_rows=2000)]
        env.write_config(tables, catalog=catalog, views={"s3_collection": "nc_missing"})
        validate = env.cli("validate")
        assert validate.returncode == 1, validate.stdout
        assert "no named collection 'nc_missing'" in validate.stdout, validate.stdout
        report = env.once()
        assert report.ok and report.tables[0].rows == 5000, report.summary()
        assert "nc_missing" in (report.tables[0].view_error or ""), report.tables[0]
        status = env.cli("status", "--check")
        assert status.returncode == 1 and "does not exist in ClickHouse" in status.stderr

        env.write_config(tables, catalog=catalog, views={"s3_collection": collection})
        validate = env.cli("validate")
        assert validate.returncode == 0, validate.stdout + validate.stderr
        assert "ClickHouse reads the cold tier (icebergS3" in validate.stdout, validate.stdout
        report = env.once()  # idle: it replaces the view that failed
        assert report.ok and report.tables[0].view_error is None, report.tables[0]
        assert env.cli("status", "--check").returncode == 0
        env.insert_trades("trades", 100, 100_000, "2025-05-03 00:00:00")
        assert _same_as_source(env)[0] == 5100
        ddl = env.ch(f"SHOW CREATE TABLE {db}.trades_all")[0][0]
        assert "icebergS3" in ddl and s3_server.secret_key not in ddl, ddl
    finally:
        env.ch(f"DROP NAMED COLLECTION IF EXISTS {collection}")


def test_a_warehouse_clickhouse_cannot_read_is_named(env: Env, tmp_path_factory: Any) -> None:
    """A local warehouse outside what the server may read: the run commits its rows and
    reports the view's failure with what to do; `validate` and `status --check` fail."""
    outside = Path(tempfile.mkdtemp(prefix="offloader-outside-"))
    try:
        env.create_trades("trades")
        env.insert_trades("trades", 300, 1, "2025-05-01 00:00:00")
        catalog = {
            "type": "sql",
            "uri": f"sqlite:///{outside}/catalog.db",
            "warehouse": f"file://{outside}/warehouse",
        }
        env.write_config([env.table("trades", view=True)], catalog=catalog)
        report = env.once()
        assert report.ok and report.tables[0].rows == 300, report.summary()
        error = report.tables[0].view_error or ""
        assert "ClickHouse cannot read the cold tier for the view (icebergLocal)" in error
        assert "below the directory clickhouse-local runs from" in error, error
        validate = env.cli("validate")
        assert validate.returncode == 1 and "cannot read the cold tier" in validate.stdout
        status = env.cli("status", "--check")
        assert status.returncode == 1, status.stdout
        assert "view" in status.stderr and "does not exist" in status.stderr, status.stderr
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_columns_added_to_the_source_appear_in_the_view(env: Env) -> None:
    """ALTER TABLE … ADD COLUMN: the next run (with nothing new to read) rebuilds the view
    with the column, cold rows reading its default (NULL for a Nullable one), as the hot
    table shows older rows; after Iceberg gains the column, too. A late row is out of
    the view until `late_rows = "repair"` repairs it, within that run."""
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 900, 1, "2025-07-01 00:00:00", step_us=60_000_000)
    env.write_config([env.table("trades", view=True, late_rows="repair")])
    assert env.once().ok
    env.ch(f"ALTER TABLE {db}.trades ADD COLUMN venue LowCardinality(String) DEFAULT 'x'")
    env.ch(f"ALTER TABLE {db}.trades ADD COLUMN note Nullable(String)")
    report = env.once()
    assert report.ok and report.tables[0].status == "idle", report.summary()
    assert _types(env, "trades_all") == _types(env, "trades")
    check = f"SELECT count(), countIf(venue = 'x'), countIf(note IS NULL) FROM {db}.{{t}}"
    assert env.ch(check.format(t="trades_all")) == [(900, 900, 900)]
    # New rows carry the columns; Iceberg evolves (older rows: NULL there, the view
    # shows the source's default).
    env.ch(
        f"INSERT INTO {db}.trades SELECT * REPLACE (trade_id + 5000 AS trade_id, 'y' AS venue, "
        f"'n' AS note, exchange_ts + INTERVAL 2 DAY AS exchange_ts) FROM {db}.trades LIMIT 10"
    )
    report = env.once()
    assert report.ok and report.tables[0].rows == 10, report.summary()
    assert env.ch(check.format(t="trades_all")) == env.ch(check.format(t="trades"))
    assert _types(env, "trades_all") == _types(env, "trades")
    assert _same_as_source(env)[0] == 910
    # A late row (below the committed position): not in the view until repaired.
    env.ch(
        f"INSERT INTO {db}.trades SELECT * REPLACE (777777 AS trade_id) FROM {db}.trades "
        "ORDER BY exchange_ts LIMIT 1"
    )
    assert env.ch(f"SELECT count() FROM {db}.trades_all") == [(910,)]
    report = env.once()
    assert report.ok and report.tables[0].repaired, report.summary()
    assert _same_as_source(env)[0] == 911


def test_only_constant_literal_defaults_reach_the_view(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Columns added after the first offload: their cold rows read the column's DEFAULT
    when it is a constant literal, and the type's default when it is any other
    expression (neither run as offloader nor pasted into the view), logged naming the
    table and the column."""
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 50, 1, "2025-07-01 00:00:00", step_us=60_000_000)
    # Its own target: advisory locks are keyed by target name in a shared PostgreSQL.
    env.write_config([env.table("trades", target="cold.literal_defaults", view=True)])
    assert env.once().tables[0].status == "ok"
    env.ch(f"ALTER TABLE {db}.trades ADD COLUMN venue String DEFAULT 'x'")
    env.ch(f"ALTER TABLE {db}.trades ADD COLUMN tag String DEFAULT concat('a', 'b')")
    env.ch(f"ALTER TABLE {db}.trades ADD COLUMN who String DEFAULT currentUser()")
    with caplog.at_level("WARNING", logger="offloader.tiers.view"):
        report = env.once()
    assert report.tables[0].status == "idle", report.summary()
    assert report.tables[0].view_error is None, report.summary()
    got = env.ch(f"SELECT DISTINCT venue, tag, who FROM {db}.trades_all")
    assert got == [("x", "", "")], got
    skipped = {
        (getattr(r, "table", None), getattr(r, "column", None))
        for r in caplog.records
        if "not a constant literal" in r.getMessage()
    }
    assert skipped == {(f"{db}.trades", "tag"), (f"{db}.trades", "who")}, skipped


KILLED_THEN = {
    "once": ("once",),
    "maintain": ("maintain",),
    "expire": ("expire", "--older-than", "1h"),
    "repair": ("repair", "cold.trades", "--since", "2025-03-01", "--until", "2025-03-03"),
    "retain": ("retain",),
}


@pytest.mark.parametrize("then", list(KILLED_THEN))
def test_a_run_killed_between_its_commits_then_any_path_keeps_the_view_exact(
    env_one: Env, then: str
) -> None:
    """SIGKILL between a run's Iceberg commit and its PostgreSQL commit leaves PostgreSQL
    one commit behind Iceberg. Whatever comes next — the next run, a maintenance pass
    (compaction and expiry), `expire`, a repair (refused until a run recovers), a
    retention pass — pins
    one Iceberg snapshot's own (metadata file, position), so the view returns each row
    once (pairing PostgreSQL's older position with Iceberg's newest metadata file
    returned the killed run's rows twice)."""
    env = env_one
    db = env.ch_database
    env.ch(trades_ddl(db, "trades", partitioned=True))
    env.insert_trades("trades", 3000, 1, "2025-03-01 00:00:00", step_us=400_000_000)
    env.write_config(
        [env.table("trades", view=True, partition_by=["day(exchange_ts)"], hot_retention="1d")]
    )
    assert env.once().ok
    env.insert_trades("trades", 500, 100_000, "2025-03-08 00:00:00", step_us=60_000_000)
    killed = env.cli("once", extra_env={faults.ENV: "iceberg_commit"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    comment = f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    assert "commit 1," in env.ch(comment)[0][0]
    everything = env.ch(f"SELECT {SUMS} FROM {db}.trades")[0]
    assert everything[0] == 3500
    assert env.ch(f"SELECT {SUMS} FROM {db}.trades_all")[0] == everything
    done = env.cli(*KILLED_THEN[then])
    if then == "repair":
        # Repair does not build on a state PostgreSQL does not know: it says what to do.
        assert done.returncode == 1 and "run `offloader once` (it recovers)" in done.stdout
    else:
        assert done.returncode == 0, done.stdout + done.stderr
    if then == "retain":
        assert "dropped partition" in done.stdout, done.stdout
    assert env.ch(f"SELECT {SUMS} FROM {db}.trades_all")[0] == everything
    if then in ("once", "maintain"):
        # The view moved to Iceberg's newest commit (2), not PostgreSQL's (1).
        assert "commit 2," in env.ch(comment)[0][0], env.ch(comment)
    again = env.once()
    assert again.ok, again.summary()
    assert env.ch(f"SELECT {SUMS} FROM {db}.trades_all")[0] == everything
    assert "commit 2," in env.ch(comment)[0][0] or "commit 3," in env.ch(comment)[0][0]


def _metadata_files(env: Env) -> list[Path]:
    return sorted((env.tmp / "warehouse").rglob("*.metadata.json"))


def test_the_view_keeps_its_metadata_file_while_its_replacement_keeps_failing(
    env_one: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metadata_versions = 3` and ten commits while every replacement of the view fails:
    the metadata file the view pins is neither deleted by a commit nor by maintenance
    (which deletes the other superseded ones), so every read stays exact; once the
    replacement works again the view moves on, and the next pass deletes the old pin."""
    env = env_one
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 1000, 1, "2025-03-01 00:00:00", step_us=60_000_000)
    env.write_config([env.table("trades", view=True)], maintenance={"metadata_versions": 3})
    assert env.once().ok
    ddl = env.ch(f"SHOW CREATE TABLE {db}.trades_all")[0][0]
    pinned = [p for p in _metadata_files(env) if p.name in ddl]
    assert len(pinned) == 1, ddl

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise view.ViewError("cold.trades: replacing view failed: the test says no")

    monkeypatch.setattr(view, "replace", failing)
    for k in range(10):
        start = dt.datetime(2025, 3, 2) + dt.timedelta(hours=k)
        env.insert_trades("trades", 100, 10_000 * (k + 1), f"{start:%Y-%m-%d %H:%M:%S}")
        report = env.once()
        assert report.ok and report.tables[0].rows == 100, report.summary()
        assert "the test says no" in (report.tables[0].view_error or ""), report.tables[0]
        assert pinned[0].exists(), f"commit {k + 2} deleted the view's metadata file"
        assert _same_as_source(env)[0] == 1100 + 100 * k
    cfg = env.config()

    async def maintain() -> list[MaintenanceReport]:
        async with open_services(cfg, connections=2) as services:
            return await maintenance.maintain(services, list(cfg.tables))

    before = len(_metadata_files(env))
    reports = anyio.run(maintain)
    assert "the test says no" in (reports[0].view_error or ""), reports[0]
    assert pinned[0].exists(), "maintenance deleted the view's metadata file"
    assert len(_metadata_files(env)) < before - 5, (before, _metadata_files(env))
    assert _same_as_source(env)[0] == 2000
    monkeypatch.undo()
    report = env.once()
    assert report.ok and report.tables[0].view_error is None, report.summary()
    assert pinned[0].name not in env.ch(f"SHOW CREATE TABLE {db}.trades_all")[0][0]
    assert _same_as_source(env)[0] == 2000
    assert all(r.status == "ok" for r in anyio.run(maintain))
    assert not pinned[0].exists()  # the view moved on: the old pin is superseded
    assert _same_as_source(env)[0] == 2000
