"""Verified hot retention (offloader/retention.py) against the real embedded ClickHouse,
PostgreSQL and Iceberg: only old, offloaded partitions whose days both tiers agree on
are dropped; nothing is dropped while offloader is behind; a late row or an update
blocks its day until repaired; an insert racing the drop is never lost; a kill at each
step is finished or undone by the next pass; the rest of offloader (audit, verify,
repair, status, the view) treats the dropped days as Iceberg's own."""

from __future__ import annotations

import datetime as dt
import signal
from typing import Any

import anyio
import pytest

from offloader import faults
from offloader.dev.demo import trades_ddl
from offloader.ops import retention
from offloader.tiers.services import open_services
from tests.helpers import Env
from tests.test_every_type import create_every_table
from tests.test_service import Service, scrape_until

pytestmark = pytest.mark.integration

DAYS = 10  # of rows, ending at today's midnight (UTC)
PER_DAY = 96  # one row every 15 minutes
_today: list[dt.date] = []


@pytest.fixture(autouse=True)
def _today_at_test_start() -> None:
    """The day a test's rows end at, taken when the test starts (taken when the module
    was imported, it was yesterday for the tests that ran after midnight)."""
    _today[:] = [dt.datetime.now(dt.UTC).date()]


def day(back: int) -> str:
    return (_today[0] - dt.timedelta(days=back)).isoformat()


def setup(env: Env, *, two_parts: bool = False, method: str = "detach", **extra: Any) -> None:
    """`t`, partitioned by day, with DAYS days of rows ending at midnight today; with
    `two_parts`, two parts in every partition (merges, and so mutations, stopped); with
    method "move", its retiring table `t_retiring` made by the DDL offloader prints."""
    db = env.ch_database
    env.ch(trades_ddl(db, "t", partitioned=True))
    if method == "move":
        full = env.ch(
            f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 't'"
        )
        env.ch(retention.retiring_ddl(db, "t", "t_retiring", str(full[0][0])))
        extra["retiring_table"] = "t_retiring"
    if two_parts:
        env.ch(f"SYSTEM STOP MERGES {db}.t")
    half, step = DAYS * PER_DAY // 2, 30 * 60 * 1_000_000
    env.insert_trades("t", half, 1, f"{day(DAYS)} 00:00:00", step, 1)
    env.insert_trades("t", half, 1_000_001, f"{day(DAYS)} 00:15:00", step, 1)
    table = {"hot_retention": "3d", "partition_by": ["day(exchange_ts)"], **extra}
    env.write_config([env.table("t", **table)])


def hot_rows(env: Env) -> int:
    return int(env.ch(f"SELECT count() FROM {env.ch_database}.t")[0][0])


def cold_rows(env: Env) -> int:
    return env.iceberg_arrow(env.config().table("cold.t")).num_rows


def detached(env: Env) -> list[str]:
    """The parts retention parked: detached, or in the retiring table."""
    db = env.ch_database
    rows = env.ch(f"SELECT name FROM system.detached_parts WHERE database = '{db}'")
    rows += env.ch(
        f"SELECT name FROM system.parts WHERE database = '{db}' AND table = 't_retiring' "
        "AND active AND rows > 0"
    )
    return [str(r[0]) for r in rows]


def test_a_retiring_table_drops_the_verified_partitions_leaving_nothing_behind(
    env_one: Env,
) -> None:
    """The method Replicated tables need, on a plain MergeTree: each verified partition is
    moved to the retiring table, compared there and dropped there; nothing is left in
    either table or in detached/, and the rest of offloader sees what the detach method
    leaves. Without the retiring table, validate and retain name it and print its DDL."""
    env = env_one
    setup(env, method="move", view=True)
    db = env.ch_database
    validate = env.cli("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "partitions of 'exchange_ts' (through t_retiring)" in validate.stdout, validate.stdout
    assert env.once().ok
    done = env.cli("retain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("dropped partition") == DAYS - 3
    assert hot_rows(env) == 3 * PER_DAY and not detached(env)
    assert env.ch(f"SELECT count() FROM {db}.t_retiring") == [(0,)]
    assert cold_rows(env) == DAYS * PER_DAY
    assert env.ch(f"SELECT count() FROM {db}.t_all") == [(DAYS * PER_DAY,)]
    again = env.once()
    assert again.ok and again.tables[0].drifted == [], again.summary()
    assert env.cli("verify").returncode == 0
    env.ch(f"DROP TABLE {db}.t_retiring")
    missing = env.cli("retain")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert f"its retiring table {db}.t_retiring does not exist; create it" in missing.stdout
    assert f"CREATE TABLE `{db}`.`t_retiring` AS `{db}`.`t` ENGINE = MergeTree" in missing.stdout


def test_drops_exactly_the_verified_old_offloaded_partitions(env: Env) -> None:
    setup(env, view=True)
    validate = env.cli("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "hot_retention 3d: drops day partitions of 'exchange_ts'" in validate.stdout
    report = env.once()
    assert report.ok, report.summary()
    dry = env.cli("retain", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for back in range(DAYS, 3, -1):
        line = f"would drop partition {day(back).replace('-', '')} ({day(back)}): ClickHouse 96"
        assert line in dry.stdout, dry.stdout
    assert day(3).replace("-", "") not in dry.stdout
    assert hot_rows(env) == DAYS * PER_DAY  # a dry run drops nothing

    done = env.cli("retain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("dropped partition") == DAYS - 3
    assert f"oldest hot day {day(3)}; days before {day(3)} are held by Iceberg alone" in (
        done.stdout
    )
    assert hot_rows(env) == 3 * PER_DAY and not detached(env)
    assert cold_rows(env) == DAYS * PER_DAY
    # The view still returns every row, the dropped ones from Iceberg.
    assert env.ch(f"SELECT count() FROM {env.ch_database}.t_all") == [(DAYS * PER_DAY,)]
    # The rest of offloader knows: no drift (the audit window of 4 days is longer than
    # the retention), status --check passes, verify compares what both tiers hold.
    again = env.once()
    assert again.ok and again.tables[0].drifted == [], again.summary()
    status = env.cli("status", "--check")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"hot retention: hot_retention 3.0d; oldest hot day {day(3)}" in status.stdout
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout
    assert f"7 days before {day(3)} are Iceberg's alone" in verify.stdout
    refused = env.cli("repair", "cold.t", "--since", day(6), "--until", day(5), "--force")
    assert refused.returncode == 1 and "hot_retention dropped this day" in refused.stdout
    assert env.cli("retain").stdout.count("dropped partition") == 0  # nothing more yet


def test_nothing_is_dropped_while_offloader_is_behind(env_one: Env) -> None:
    """Offloader stopped for three retention periods: rows piled up in ClickHouse, none
    offloaded: nothing is dropped. Once it has caught up, every row is in Iceberg
    (verify equal) and the hot tier shrinks to the retention."""
    env = env_one
    setup(env)
    idle = env.cli("retain")
    assert idle.returncode == 0 and "nothing to drop" in idle.stdout, idle.stdout
    assert hot_rows(env) == DAYS * PER_DAY
    assert env.once().ok
    verify = env.cli("verify")
    assert verify.returncode == 0 and "EQUAL" in verify.stdout, verify.stdout
    assert env.cli("retain").returncode == 0
    assert hot_rows(env) == 3 * PER_DAY and cold_rows(env) == DAYS * PER_DAY


def test_a_late_row_or_an_update_blocks_its_day_until_repaired(env_one: Env) -> None:
    env = env_one
    setup(env)
    db = env.ch_database
    assert env.once().ok
    env.ch(
        f"INSERT INTO {db}.t SELECT * REPLACE (99999 AS trade_id) FROM {db}.t "
        f"WHERE toDate(exchange_ts) = '{day(8)}' LIMIT 1"
    )
    env.ch(
        f"ALTER TABLE {db}.t UPDATE price = 1 WHERE toDate(exchange_ts) = '{day(6)}' "
        "SETTINGS mutations_sync = 2"
    )
    blocked = env.cli("retain")
    assert blocked.returncode == 1, blocked.stdout
    assert blocked.stdout.count("dropped partition") == 2  # the two days before it
    assert f"REFUSED partition {day(8).replace('-', '')}: the tiers differ on {day(8)}" in (
        blocked.stdout
    )
    assert hot_rows(env) == (DAYS - 2) * PER_DAY + 1  # the late row kept, in the hot tier
    fixed = env.cli("repair", "cold.t", "--since", day(8), "--until", day(7))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    updated = env.cli("retain")
    assert updated.returncode == 1 and f"the tiers differ on {day(6)}" in updated.stdout
    assert "(values differ)" in updated.stdout and updated.stdout.count("dropped partition") == 2
    assert env.cli("repair", "cold.t", "--since", day(6), "--until", day(5)).returncode == 0
    assert env.cli("retain").returncode == 0
    assert hot_rows(env) == 3 * PER_DAY and cold_rows(env) == DAYS * PER_DAY + 1


@pytest.mark.parametrize("method", ["detach", "move"])
def test_an_insert_racing_the_drop_is_never_lost(
    env_one: Env, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A row lands in the partition between the comparison and the drop: the parked
    parts are not the compared ones, so they are put back (nothing dropped), and
    the next pass, once the row is offloaded... is refused while it is a late row."""
    env = env_one
    setup(env, method=method)
    db = env.ch_database
    assert env.once().ok
    detach = retention._Source.detach

    async def insert_then_detach(self: Any, partition_id: str) -> None:
        await self.src.source.command(
            f"INSERT INTO {db}.t SELECT * REPLACE (123456 AS trade_id) FROM {db}.t "
            f"WHERE _partition_id = '{partition_id}' LIMIT 1"
        )
        await detach(self, partition_id)

    monkeypatch.setattr(retention._Source, "detach", insert_then_detach)
    cfg = env.config()

    async def go() -> retention.RetentionReport:
        async with open_services(cfg, connections=2) as services:
            return await retention.retain_table(services, cfg.table("cold.t"))

    report = anyio.run(go)
    assert (
        not report.dropped and "changed between the comparison and the drop" in (report.refused[0])
    )
    assert hot_rows(env) == DAYS * PER_DAY + 1 and not detached(env)
    assert env.ch(f"SELECT count() FROM {db}.t WHERE trade_id = 123456") == [(1,)]


@pytest.mark.parametrize("method", ["detach", "move"])
@pytest.mark.parametrize("point", ["retain_detach", "retain_drop", "retain_drop_part"])
def test_a_pass_killed_at_each_step_is_finished_or_undone(
    env_one: Env, point: str, method: str
) -> None:
    """Killed before the park (detach, or move to the retiring table), before the drop,
    and inside the drop (between a partition's two detached parts; after the retiring
    table's partition is dropped): the next pass finishes or undoes it, each partition
    is either all present or all dropped, and once its drop began it only moves forward
    (no part put back into a day recorded as dropped, no false late rows)."""
    env = env_one
    setup(env, two_parts=True, method=method)
    assert env.once().ok
    killed = env.cli("retain", extra_env={faults.ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert hot_rows(env) >= 3 * PER_DAY and cold_rows(env) == DAYS * PER_DAY
    parked = {
        "retain_detach": 0,
        "retain_drop": 2,
        "retain_drop_part": 1 if method == "detach" else 0,
    }
    assert len(detached(env)) == parked[point], detached(env)
    again = env.cli("retain")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stopped pass" in again.stdout, again.stdout
    if point == "retain_drop_part":
        left = (
            "1 of its 2 parts left detached"
            if method == "detach"
            else ("0 of its 1 nodes' parts left in the retiring table")
        )
        assert f"{left} by a stopped pass" in again.stdout, again.stdout
    assert "LATE ROWS" not in again.stdout and "REFUSED" not in again.stdout, again.stdout
    assert again.stdout.count("dropped partition") == DAYS - 3 - (point != "retain_detach")
    assert hot_rows(env) == 3 * PER_DAY and not detached(env)
    assert cold_rows(env) == DAYS * PER_DAY
    assert env.once().ok and env.cli("status", "--check").returncode == 0
    verify = env.cli("verify")
    assert verify.returncode == 0 and "LATE" not in verify.stdout, verify.stdout


@pytest.mark.parametrize("point", ["retain_park", "retain_drop"])
def test_a_merge_in_the_retiring_table_after_a_kill_neither_strands_nor_returns_the_partition(
    env_one: Env, point: str
) -> None:
    """Killed once the oldest partition's two parts are in the retiring table, before the
    point of no return (retain_park) or after it (retain_drop); then the retiring table
    merges them into one part of another name and hash. The next pass finishes the drop
    (what arrived is compared by content, which a merge keeps; past the point of no
    return the partition goes whatever its parts are called): the retiring table is
    empty, the intent cleared, the hot tier and Iceberg exact."""
    env = env_one
    setup(env, two_parts=True, method="move")
    db = env.ch_database
    assert env.once().ok
    killed = env.cli("retain", extra_env={faults.ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    active = f"SELECT name FROM system.parts WHERE database = '{db}' AND table = 't_retiring' "
    before = env.ch(active + "AND active AND rows > 0")
    assert len(before) == 2, before
    env.ch(f"OPTIMIZE TABLE {db}.t_retiring FINAL")
    after = env.ch(active + "AND active AND rows > 0")
    assert len(after) == 1 and after[0] not in before, after
    again = env.cli("retain")
    assert again.returncode == 0, again.stdout + again.stderr
    oldest = day(DAYS).replace("-", "")
    assert f"finished dropping partition {oldest}" in again.stdout, again.stdout
    assert "put partition" not in again.stdout and "REFUSED" not in again.stdout, again.stdout
    assert again.stdout.count("dropped partition") == DAYS - 3 - 1, again.stdout
    assert env.ch(f"SELECT count() FROM {db}.t_retiring") == [(0,)]
    assert hot_rows(env) == 3 * PER_DAY and cold_rows(env) == DAYS * PER_DAY
    cfg = env.config()

    async def intent() -> object:
        async with open_services(cfg, connections=1) as services:
            state = await services.watermarks.get("cold.t", cfg.table("cold.t").source)
            return state.retention_intent

    assert anyio.run(intent) is None
    assert env.once().ok
    verify = env.cli("verify")
    assert verify.returncode == 0 and "LATE" not in verify.stdout, verify.stdout


def test_rows_inserted_into_a_dropped_day_are_reported(env_one: Env) -> None:
    """A row arriving in a day retention already dropped is not in Iceberg: `retain`,
    `verify` and `status --check` say so (it is never dropped with the days around it)."""
    env = env_one
    setup(env)
    db = env.ch_database
    assert env.once().ok
    assert env.cli("retain").returncode == 0
    env.ch(
        f"INSERT INTO {db}.t SELECT * REPLACE (4242 AS trade_id, toDateTime64('{day(8)} "
        "01:02:03', 6, 'UTC') AS exchange_ts) FROM {db}.t LIMIT 1".replace("{db}", db)
    )
    late = env.cli("retain")
    assert late.returncode == 1, late.stdout + late.stderr
    assert f"LATE ROWS partition {day(8).replace('-', '')}: 1 rows in days offloader" in (
        late.stdout
    )
    assert hot_rows(env) == 3 * PER_DAY + 1  # kept
    status = env.cli("status", "--check")
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"rows in days hot_retention already dropped (oldest hot day {day(8)}" in (status.stderr)
    assert "last retention pass: " in status.stdout and " refused, 0 dropped; LATE ROWS" in (
        status.stdout
    )
    verify = env.cli("verify")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"{day(8)}: ClickHouse holds 1 rows of a day hot_retention dropped" in verify.stdout


def test_a_source_not_partitioned_by_time_is_refused(env_one: Env) -> None:
    env = env_one
    env.create_trades("t")  # ORDER BY (exchange_ts, trade_id), no PARTITION BY
    env.insert_trades("t", 100, 1, f"{day(5)} 00:00:00")
    env.write_config([env.table("t", hot_retention="3d")])
    validate = env.cli("validate")
    assert validate.returncode == 1
    message = (
        "cold.t: hot_retention drops whole partitions, so the source must be partitioned by "
        "the day or month of the watermark"
    )
    assert message in validate.stdout and "(none: the table is not partitioned)" in (
        validate.stdout
    )
    assert env.once().ok
    refused = env.cli("retain")
    assert refused.returncode == 1 and message in refused.stdout, refused.stdout
    assert hot_rows(env) == 100


def test_the_every_type_table(env_one: Env) -> None:
    """Every type family, on a DateTime64(9) watermark (its days counted from ticks):
    the 1970 partition, old and wholly before the position, is verified and dropped;
    2026-01-01's, the position's own day, is kept; the view still returns all rows."""
    env = env_one
    db = env.ch_database
    create_every_table(env, "PARTITION BY toYYYYMMDD(ts)", hot_retention="3d")
    assert env.once().ok
    done = env.cli("retain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dropped partition 19700101 (1970-01-01): ClickHouse 1 rows, Iceberg 1 rows" in (
        done.stdout
    )
    assert env.ch(f"SELECT count() FROM {db}.every") == [(4,)]
    assert env.ch(f"SELECT count() FROM {db}.every_all") == [(5,)]
    assert env.cli("status", "--check").returncode == 0
    assert env.once().tables[0].drifted == []


def test_the_service_runs_retention_between_cycles(env_one: Env) -> None:
    """`offloader run`: after a cycle, a retention pass drops the verified partitions;
    its log line and the metrics say what it dropped."""
    env = env_one
    setup(env)
    config = env.config_path.read_text()
    env.config_path.write_text(
        config.replace("[offloader]", "[offloader]\nmetrics_port = 0", 1).replace(
            'interval = "1m"', 'interval = "30s"', 1
        )
    )
    svc = Service(env)
    try:
        metrics_at = svc.wait_for(lambda e: e.get("msg") == "metrics listening")["address"]
        done = svc.wait_for(lambda e: e.get("msg") == "retention ok", timeout=120)
        assert len(done["dropped"]) == DAYS - 3 and done["oldest_hot_day"] == day(3)
        scrape_until(metrics_at, 'offloader_retention_partitions_dropped_total{table="cold.t"} 7.0')
        body = scrape_until(
            metrics_at, 'offloader_retention_rows_dropped_total{table="cold.t"} 672.0'
        )
        assert 'offloader_retention_passes_total{result="ok",table="cold.t"} 1.0' in body
        assert 'offloader_retention_refused_partitions{table="cold.t"} 0.0' in body
    finally:
        svc.stop()
    assert hot_rows(env) == 3 * PER_DAY and cold_rows(env) == DAYS * PER_DAY


@pytest.mark.parametrize("engine", ["ReplacingMergeTree", "CollapsingMergeTree"])
def test_a_final_table_is_dropped_once_what_final_shows_is_verified(
    env_one: Env, engine: str
) -> None:
    """A deduplicating table read with `final = true`, two versions of every row in
    separate unmerged parts: retention compares what FINAL shows (one row per key) with
    Iceberg, guards the partition by its part names, and drops the verified partitions
    (every pass refused them as 'rows changed' when it compared raw part rows)."""
    env = env_one
    db = env.ch_database
    extra, engine_args = (
        ("ver UInt32", "ver")
        if engine == "ReplacingMergeTree"
        else (
            "sign Int8",
            "sign",
        )
    )
    env.ch(
        f"CREATE TABLE {db}.f (exchange_ts DateTime64(6, 'UTC'), trade_id UInt64, "
        f"price Float64, {extra}) ENGINE = {engine}({engine_args}) "
        "PARTITION BY toYYYYMMDD(exchange_ts) ORDER BY (exchange_ts, trade_id)"
    )
    env.ch(f"SYSTEM STOP MERGES {db}.f")
    rows = (
        f"SELECT toDateTime64('{day(DAYS)} 00:00:00', 6, 'UTC') + toIntervalMinute(15 * number), "
        f"number, {{price}}, {{last}} FROM numbers({DAYS * PER_DAY})"
    )
    if engine == "ReplacingMergeTree":
        env.ch(f"INSERT INTO {db}.f " + rows.format(price=1.0, last=1))
        env.ch(f"INSERT INTO {db}.f " + rows.format(price=2.0, last=2))
    else:
        env.ch(f"INSERT INTO {db}.f " + rows.format(price=1.0, last=1))
        # Not collapsed on insert: the UNION ALL's order varies, and a block whose +1
        # row comes before its -1 row would collapse to nothing (no second part).
        env.ch(
            f"INSERT INTO {db}.f "
            + rows.format(price=1.0, last=-1)
            + " UNION ALL "
            + rows.format(price=2.0, last=1)
            + " SETTINGS optimize_on_insert = 0"
        )
    parts = env.ch(
        f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'f' AND active "
        f"AND partition = '{day(DAYS).replace('-', '')}'"
    )
    assert parts[0][0] >= 2, parts  # unmerged versions
    env.write_config(
        [env.table("f", final=True, hot_retention="3d", partition_by=["day(exchange_ts)"])]
    )
    report = env.once()
    assert report.ok and report.tables[0].rows == DAYS * PER_DAY, report.summary()
    done = env.cli("retain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REFUSED" not in done.stdout, done.stdout
    assert done.stdout.count("dropped partition") == DAYS - 3, done.stdout
    first = day(DAYS).replace("-", "")
    assert f"dropped partition {first} ({day(DAYS)}): ClickHouse 96 rows, Iceberg 96 rows" in (
        done.stdout
    )
    assert env.ch(f"SELECT count(), sum(price) FROM {db}.f FINAL") == [
        (3 * PER_DAY, 2.0 * 3 * PER_DAY)
    ]
    cold = env.iceberg_arrow(env.config().table("cold.f"))
    assert cold.num_rows == DAYS * PER_DAY and set(cold.column("price").to_pylist()) == {2.0}
    assert env.once().ok and env.cli("status", "--check").returncode == 0
