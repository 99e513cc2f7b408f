"""A source's columns change while offloader works: a column added after the cycle's
survey, before its table's run (queued behind max_parallel_tables), is offloaded by that
run and covered by the audit's checksums; one added while a run reads pages fails that
run before anything read without it is committed, and the next run offloads it."""

from __future__ import annotations

import urllib.parse
import urllib.request

import anyio
import pyarrow.compute as pc
import pytest

from offloader.offload.supervisor import run_once
from offloader.report import TableReport
from tests.helpers import Env

pytestmark = pytest.mark.integration


def ch_now(env: Env, sql: str) -> None:
    """`sql` over HTTP, synchronously: from inside a running cycle's callbacks."""
    url = f"http://127.0.0.1:{env.ch_http_port}/?" + urllib.parse.urlencode({"user": "default"})
    urllib.request.urlopen(urllib.request.Request(url, data=sql.encode()), timeout=30).read()


def add_venue(env: Env, name: str, day: str, rows: int) -> None:
    """Add the column `venue` to `name`, then `rows` new rows on `day` with venue 'v'."""
    db = env.ch_database
    ch_now(env, f"ALTER TABLE {db}.{name} ADD COLUMN venue String DEFAULT 'x'")
    ch_now(
        env,
        f"INSERT INTO {db}.{name} SELECT * REPLACE (trade_id + 100000 AS trade_id, "
        f"toDateTime64('{day}', 6, 'UTC') + toIntervalSecond(trade_id) AS exchange_ts, "
        f"'v' AS venue) FROM {db}.{name} ORDER BY trade_id LIMIT {rows}",
    )


def test_a_column_added_while_its_table_waits_for_its_turn(
    env_one: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env, db = env_one, env_one.ch_database
    # Targets of their own: the tables' advisory locks are keyed by target name, in a
    # PostgreSQL database other test sessions may share.
    for name in ("first", "second"):
        env.create_trades(name)
        env.insert_trades(name, 60, 1, "2025-07-01 00:00:00", step_us=60_000_000)
    tables = [env.table(n, target=f"cold.schema_change_{n}") for n in ("first", "second")]
    env.write_config(tables, service={"max_parallel_tables": 1})
    assert env.once().ok
    env.insert_trades("first", 6, 1000, "2025-07-03 00:00:00")

    def after(report: TableReport) -> None:
        # `first` is done, `second` (surveyed with the cycle) waits for the slot.
        if report.target == "cold.schema_change_first":
            add_venue(env, "second", "2025-07-03 00:00:00", 10)

    with caplog.at_level("INFO", logger="offloader.offload.pipeline"):
        report = anyio.run(run_once, env.config(), after)
    assert report.ok, report.summary()
    second = report.tables[1]
    assert second.status == "ok" and second.rows == 10, report.summary()
    stored = env.iceberg_arrow(env.config().table("cold.schema_change_second"))
    assert "venue" in stored.schema.names, stored.schema
    assert pc.sum(pc.equal(stored.column("venue"), "v")).as_py() == 10
    assert any("changed since the cycle's survey" in r.getMessage() for r in caplog.records)
    # The audit covers the new rows with checksums: a value changed in place is found;
    # the day committed before the column was added is compared by its count only, and
    # the report says so.
    env.ch(
        f"ALTER TABLE {db}.second UPDATE venue = 'changed' WHERE trade_id = 100001 "
        "SETTINGS mutations_sync = 2"
    )
    again = env.once().tables[1]
    assert again.status == "idle", again.as_dict()
    assert again.drifted == [
        {"day": "2025-07-03", "clickhouse": 10, "iceberg": 10, "values_differ": True}
    ], again.as_dict()
    assert again.unchecked == ["2025-07-01"], again.as_dict()


class AddColumnAfterFirstPage:
    """A Progress whose first page written adds the column `venue` to `name`, with rows
    in the range the run has yet to read."""

    def __init__(self, env: Env, name: str) -> None:
        self.env, self.name, self.done = env, name, False

    def start(self, target: str, total: int | None) -> None:
        pass

    def advance(self, target: str, rows: int) -> None:
        if not self.done:
            self.done = True
            add_venue(self.env, self.name, "2025-07-01 00:30:30", 5)

    def finish(self, target: str, status: str) -> None:
        pass


def test_a_column_added_while_a_run_reads_pages(env_one: Env) -> None:
    env = env_one
    env.create_trades("trades")
    env.insert_trades("trades", 60, 1, "2025-07-01 00:00:00", step_us=60_000_000)
    target = "cold.schema_change_pages"  # its own lock (see above)
    env.write_config([env.table("trades", target=target, batch_rows=12, append_rows=1000)])
    progress = AddColumnAfterFirstPage(env, "trades")
    report = anyio.run(run_once, env.config(), None, progress)
    [failed] = report.tables
    assert progress.done and failed.status == "failed", report.summary()
    assert failed.rows == 0, report.summary()
    assert "the columns of the source" in (failed.error or "")
    assert "changed while this run read it (added venue String)" in (failed.error or "")
    again = env.once()
    assert again.tables[0].status == "ok" and again.tables[0].rows == 65, again.summary()
    assert env.assert_tiers_equal(target) == 65
