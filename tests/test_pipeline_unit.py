"""Pure parts of the pipeline: error selection from task groups, source planning."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from offloader.config import TableConfig
from offloader.errors import SinkError, SourceSchemaError, single_error
from offloader.plan import plan_source


def test_the_real_error_wins_over_nested_cancellations() -> None:
    async def check() -> None:
        real = SinkError("disk full")
        group = BaseExceptionGroup(
            "outer",
            [BaseExceptionGroup("inner", [asyncio.CancelledError()]), real],
        )
        assert single_error(group) is real
        only_cancelled = BaseExceptionGroup("g", [asyncio.CancelledError()])
        assert isinstance(single_error(only_cancelled), asyncio.CancelledError)

    anyio.run(check)


def test_plan_source_orders_and_offsets() -> None:
    t = TableConfig(source="db.t", target="cold.t", watermark="ts", keys=("id",))
    src = plan_source(t, [("px", "Decimal(38, 10)"), ("ts", "DateTime64(6)"), ("id", "UInt64")])
    assert src.order_index == (1, 2)
    assert src.offsets == (0, 2, 3)  # a Decimal(38, S) travels as two 64-bit halves
    assert len(src.select) == 4
    with pytest.raises(SourceSchemaError, match="key column 'nope' does not exist"):
        plan_source(
            TableConfig(source="db.t", target="cold.t", watermark="ts", keys=("nope",)),
            [("ts", "DateTime")],
        )


def test_the_error_that_matters_is_picked_out_of_a_task_group() -> None:
    """A writer failing to commit closes its stream; the converter's send then fails
    with BrokenResourceError, which may come first in the group: the table's report
    must say why the commit failed, not that a stream broke."""

    async def check() -> None:
        real = SinkError("cold.t: Iceberg commit still conflicting after 5 attempts")
        group = BaseExceptionGroup("run", [anyio.BrokenResourceError(), real])
        assert single_error(group) is real
        other = ValueError("a bug")
        closed = BaseExceptionGroup("run", [anyio.ClosedResourceError(), other])
        assert single_error(closed) is other

    anyio.run(check)


def test_a_distributed_tables_cluster_and_local_table_are_read_from_its_engine() -> None:
    from offloader.sql.system import distributed_over, parts_fingerprint

    assert distributed_over(
        "Distributed('trades_cluster', 'market', 'trades_local', cityHash64(trade_id))"
    ) == ("trades_cluster", "market", "trades_local")
    assert distributed_over("Distributed(c, db, t)") == ("c", "db", "t")
    assert distributed_over("MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts") is None
    assert "clusterAllReplicas('c', system.parts)" in parts_fingerprint("db", "t", "c")
    assert "FROM system.parts" in parts_fingerprint("db", "t")


def test_an_unreachable_shard_is_named() -> None:
    from offloader.errors import unreachable

    text = (
        "Code: 279.\nDB::Exception: All connection tries failed. Log: \n\nCode: 210. "
        "DB::NetException: Connection refused (127.0.0.1:43505, local address: "
        "127.0.0.1:32894). (NETWORK_ERROR)\nCode: 210. DB::NetException: Connection "
        "refused (127.0.0.1:43505). (NETWORK_ERROR)"
    )
    assert unreachable(279, text) == (
        " (unreachable: 127.0.0.1:43505: is that shard's server running?)"
    )
    assert unreachable(60, text) == ""


def test_column_changes_name_what_changed() -> None:
    from offloader.offload.pipeline import column_changes

    read = [("ts", "DateTime"), ("id", "UInt64"), ("v", "String")]
    assert column_changes(read, read) == ""
    now = [("ts", "DateTime"), ("id", "Int64"), ("venue", "String")]
    assert (
        column_changes(read, now)
        == "added venue String, dropped v, id changed from UInt64 to Int64"
    )
    assert column_changes(read, [read[1], read[0], read[2]]) == "columns reordered"


def test_unchecked_days_are_those_summed_over_other_columns() -> None:
    import datetime as dt

    from offloader.days import day_number
    from offloader.offload.checkup import unchecked_days
    from offloader.state import DaySum

    first = dt.date(2025, 7, 1)
    recorded = {
        day_number(first): DaySum(60, 1, "old"),
        day_number(first) + 2: DaySum(10, 2, "new"),
        day_number(first) + 9: DaySum(5, 3, "old"),  # outside the window
    }
    window = (first - dt.timedelta(days=1), first + dt.timedelta(days=2))
    assert unchecked_days(recorded, "new", window) == [first]
    assert unchecked_days(recorded, "old", window) == [first + dt.timedelta(days=2)]
