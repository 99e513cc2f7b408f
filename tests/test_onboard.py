"""`offloader add` against the real server: each engine family's block is proposed from
its metadata, checked live, written into the config keeping its comments, and then
offloaded exactly; tables no block fits are refused saying why, with nothing written."""

from __future__ import annotations

import datetime as dt

import pytest

from offloader.dev.demo import trades_ddl
from tests.helpers import Env

pytestmark = [pytest.mark.integration]


def make_tables(env: Env) -> None:
    db = env.ch_database
    env.ch(trades_ddl(db, "plain", partitioned=True))
    env.ch(f"ALTER TABLE {db}.plain MODIFY TTL toDateTime(exchange_ts) + toIntervalDay(30)")
    env.ch(
        f"CREATE TABLE {db}.latest (ts DateTime64(3, 'UTC'), id UInt32, v String, ver UInt32) "
        "ENGINE = ReplacingMergeTree(ver) PARTITION BY toYYYYMM(ts) ORDER BY (ts, id)"
    )
    env.ch(
        f"CREATE TABLE {db}.moves (day Date, account UInt32, amount Int64, sign Int8) "
        "ENGINE = CollapsingMergeTree(sign) ORDER BY (day, account)"
    )
    env.ch(f"CREATE TABLE {db}.counters (id UInt64, n Int64) ENGINE = MergeTree ORDER BY id")
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    env.insert_trades("plain", 3000, 1, start, step_us=10_000_000)
    env.ch(
        f"INSERT INTO {db}.latest SELECT toDateTime64('2026-01-01 00:00:00', 3, 'UTC') "
        "+ toIntervalSecond(number), number, toString(number), 1 FROM numbers(500)"
    )
    env.ch(
        f"INSERT INTO {db}.moves SELECT toDate('2026-01-01') + number % 5, number, number, 1 "
        "FROM numbers(200)"
    )


def test_add_proposes_checks_and_writes_each_engine_family_then_offloads_it(env_one: Env) -> None:
    env = env_one
    make_tables(env)
    env.write_config([])
    original = "# my own comment\n" + env.config_path.read_text()
    env.config_path.write_text(original)
    db = env.ch_database
    sources = [f"{db}.plain", f"{db}.latest", f"{db}.moves"]

    dry = env.cli("add", *sources, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert env.config_path.read_text() == original
    assert dry.stdout.count("[[tables]]") == 3

    added = env.cli("add", *sources)
    assert added.returncode == 0, added.stderr
    text = env.config_path.read_text()
    assert text.startswith(original)
    tables = {t.source: t for t in env.config().tables}
    plain, latest, moves = (tables[s] for s in sources)
    assert (plain.watermark, plain.keys, plain.final) == ("exchange_ts", ("trade_id",), False)
    assert [str(p) for p in plain.partition_by] == ["day(exchange_ts)"]
    assert plain.hot_retention == 30 * 86400
    assert "REMOVE TTL" in added.stdout
    assert (latest.watermark, latest.keys, latest.final) == ("ts", ("id",), True)
    assert [str(p) for p in latest.partition_by] == ["month(ts)"]
    assert (moves.watermark, moves.keys, moves.final) == ("day", ("account",), True)

    report = env.once()
    assert report.ok, report.summary()
    for t in (plain, latest, moves):
        assert env.assert_tiers_equal(t.target) > 0

    again = env.cli("add", f"{db}.plain")
    assert again.returncode != 0
    assert "already configured" in again.stderr
    assert env.config_path.read_text() == text


def test_a_table_without_a_usable_watermark_is_refused_and_nothing_written(env_one: Env) -> None:
    env = env_one
    make_tables(env)
    env.write_config([])
    before = env.config_path.read_text()
    db = env.ch_database
    result = env.cli("add", f"{db}.plain", f"{db}.counters")
    assert result.returncode != 0
    assert f"{db}.counters: no usable watermark" in result.stderr
    assert "nothing written" in result.stderr
    assert env.config_path.read_text() == before


def test_add_all_writes_what_fits_and_names_the_rest(env_one: Env) -> None:
    env = env_one
    make_tables(env)
    env.write_config([env.table("plain")])
    result = env.cli("add", "--all", env.ch_database)
    assert result.returncode == 1  # counters has no watermark
    added = {t.source for t in env.config().tables}
    db = env.ch_database
    assert added == {f"{db}.plain", f"{db}.latest", f"{db}.moves"}
    assert f"{db}.counters: no usable watermark" in result.stderr


def test_keys_that_do_not_identify_a_row_are_noted_with_the_largest_tie(env_one: Env) -> None:
    """Ties on the whole position are safe (pages end on whole groups), so the block is
    written, with a note naming the largest group of the newest day."""
    env = env_one
    db = env.ch_database
    env.ch(
        f"CREATE TABLE {db}.ticks (ts DateTime('UTC'), symbol String, px Float64) "
        "ENGINE = MergeTree ORDER BY (ts, symbol)"
    )
    env.ch(
        f"INSERT INTO {db}.ticks VALUES ('2026-01-01 00:00:00', 'A', 1), "
        "('2026-01-01 00:00:00', 'A', 2), ('2026-01-01 00:00:00', 'A', 3)"
    )
    env.write_config([])
    result = env.cli("add", f"{db}.ticks")
    assert result.returncode == 0, result.stderr
    assert "does not identify a row: up to 3 rows" in result.stdout
    assert [t.source for t in env.config().tables] == [f"{db}.ticks"]
