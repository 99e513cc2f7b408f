"""The two-phase commit's record (writing.CommitRecord): what PostgreSQL is advanced to
after Iceberg's snapshot, and a repair's per-day sums replacing those recorded."""

from __future__ import annotations

from typing import cast

import anyio

from offloader.iceberg import Marker
from offloader.state import DaySum, Store, encode_days
from offloader.tiers.writing import CommitRecord, commit
from tests.fakes import FakeStore

DAY = 20_000


def _commit(store: FakeStore, seq: int, rows: int, replace_days: bool = False) -> int:
    sums = {DAY: DaySum(rows, 7 * rows, "k")}
    marker = Marker(seq, [seq * 10], f"run{seq}", rows, encode_days(sums, replace_days))
    record = CommitRecord(marker, sums, replace_days=replace_days)
    snapshots: list[Marker] = []

    def iceberg(m: Marker) -> int:
        snapshots.append(m)
        return 100 + seq

    snapshot_id = anyio.run(lambda: commit(cast(Store, store), "cold.t", record, iceberg))
    assert snapshots == [marker]
    return snapshot_id


def test_the_advance_carries_the_marker_and_the_snapshot() -> None:
    record = CommitRecord(Marker(3, [30, "a"], "run3", 5), {DAY: DaySum(5, 9, "k")})
    advance = record.advance(103)
    assert (advance.seq, list(advance.position), advance.rows) == (3, [30, "a"], 5)
    assert (advance.run_id, advance.snapshot_id) == ("run3", 103)
    assert advance.days == {DAY: DaySum(5, 9, "k")}
    assert not advance.replace_days


def test_an_append_adds_to_the_days_a_repair_replaces_them() -> None:
    store = FakeStore()
    assert _commit(store, 1, 4) == 101
    assert _commit(store, 2, 6) == 102
    assert store.sums[("cold.t", DAY)].rows == 10  # an append adds
    assert (store.seq["cold.t"], store.position["cold.t"]) == (2, (20,))
    _commit(store, 3, 8, replace_days=True)
    assert store.sums[("cold.t", DAY)] == DaySum(8, 56, "k")  # a repair replaces
