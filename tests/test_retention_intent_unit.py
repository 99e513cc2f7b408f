"""Retention and the offload cycle know of each other, without servers: a pending
retention intent names its days (the cycle's audit and repair leave them alone) and the
Iceberg snapshot its partition was compared against (a pass recovering it drops nothing
once Iceberg moved: it puts the parts back to compare them again); intents recorded by
0.3.0, which have neither, are read as holding every day before their end and as
compared against an unknown snapshot."""

from __future__ import annotations

import datetime as dt

import pytest

from offloader.offload.checkup import held
from offloader.ops import retention
from offloader.state import RetentionIntent
from offloader.tiers.audit import DayCount
from tests.test_retention_unit import BACK, DROP, MOVE, Store, _cluster, _opened

pytestmark = pytest.mark.anyio

# What the retiring table holds of the partition on each node, by content (the fake
# cluster's parts h1 and h3: one row each, hash sums 1 and 3).
PARTS = ("shard 1/1 rows, hash sum 1", "shard 2/1 rows, hash sum 3")
INTENT = RetentionIntent(
    "20250501",
    PARTS,
    (),
    "2025-05-02",
    method="move",
    first_day="2025-05-01",
    snapshot_id=41,
)


def _days(*days: int) -> list[DayCount]:
    return [DayCount(dt.date(2025, 5, d), 5, 10) for d in days]


def test_an_intent_holds_its_partitions_days_only() -> None:
    month = RetentionIntent("202504", PARTS, (), "2025-05-01", first_day="2025-04-01")
    assert month.covers(dt.date(2025, 4, 1)) and month.covers(dt.date(2025, 4, 30))
    assert not month.covers(dt.date(2025, 3, 31)) and not month.covers(dt.date(2025, 5, 1))
    kept, rest = held(_days(1, 2, 3), INTENT)
    assert [d.day.day for d in kept] == [1] and [d.day.day for d in rest] == [2, 3]
    assert held(_days(1, 2), None) == ([], _days(1, 2))
    said = INTENT.pending("cold.trades")
    assert "cold.trades: a retention pass of partition 20250501 (2025-05-01 to 2025-05-01)" in said
    assert "offloader retain" in said


def test_an_intent_recorded_by_0_3_0_is_read_as_holding_every_day_before_its_end() -> None:
    """0.3.0 recorded [partition, parts, detached before, retained_until, phase, method]
    in the same column: no schema change, and its days are held conservatively."""
    old = RetentionIntent.decode('["20250501", ["a_1_1_0"], [], "2025-05-02", "detach", "detach"]')
    assert old is not None and old.first_day == "" and old.snapshot_id is None
    assert old.covers(dt.date(2025, 5, 1)) and old.covers(dt.date(2020, 1, 1))
    assert not old.covers(dt.date(2025, 5, 2))
    assert "the first day to 2025-05-01" in old.pending("cold.trades")
    assert RetentionIntent.decode(INTENT.encode()) == INTENT


def _parked_on_both_shards() -> tuple[object, object]:
    one, two = _cluster({}, {})
    one.tables["trades_local_retiring"]["20250501"] = ["h1"]
    two.tables["trades_local_retiring"]["20250501"] = ["h3"]
    return one, two


async def _recover(snapshot: int | None, intent: RetentionIntent = INTENT) -> tuple[str, Store]:
    one, two = _parked_on_both_shards()
    hot = await _opened(one, two)  # type: ignore[arg-type]
    store = Store()

    async def current() -> int | None:
        return snapshot

    said = await retention._recover(hot, store, "cold.trades", intent, current)  # type: ignore[arg-type]
    commands = one.commands + two.commands  # type: ignore[attr-defined]
    return said + " | " + "; ".join(commands), store


async def test_a_parked_partition_is_dropped_while_iceberg_is_where_it_was_compared() -> None:
    said, store = await _recover(41)
    assert said.startswith("finished dropping partition 20250501"), said
    assert said.endswith(f"{DROP}; {DROP}"), said
    assert [i.phase if i else None for i in store.intents] == ["drop", None]


@pytest.mark.parametrize("snapshot", [42, None])
async def test_a_parked_partition_is_put_back_once_iceberg_moved(snapshot: int | None) -> None:
    """Iceberg moved (another snapshot, or no table) since the partition was compared:
    recovery does not drop what it cannot show Iceberg still holds; it puts the parts
    back on every shard, and the pass compares them again."""
    said, store = await _recover(snapshot)
    assert f"Iceberg moved from snapshot 41 to {snapshot}" in said, said
    assert "put partition 20250501 back" in said and "compared again" in said, said
    assert said.endswith(f"{BACK}; {BACK}") and DROP not in said and MOVE not in said, said
    assert store.intents == [None]


async def test_an_intent_from_0_3_0_is_never_dropped_without_comparing_again() -> None:
    said, _ = await _recover(
        41, RetentionIntent("20250501", PARTS, (), "2025-05-02", "detach", "move")
    )
    assert "the intent records no Iceberg snapshot" in said and DROP not in said, said
