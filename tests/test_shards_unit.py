"""Reading shard by shard (source/shards.py) without servers: fake shards hold rows of
(watermark, key) and answer pages, probes and day cuts as ClickHouse would; the rounds
of a scan must hold every row of every shard exactly once, each round every row at or
before its position and none after, in rounds bounded by the page size per shard."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from offloader.config import TableConfig
from offloader.errors import SourceUnavailable
from offloader.plan import plan_source
from offloader.source import keyset_pages
from offloader.source.shards import (
    REPLICA_STATE,
    Shard,
    ShardedPager,
    ShardRound,
    out_of_sync,
    parts_of,
)
from offloader.sql.scan import Scan

pytestmark = pytest.mark.anyio

TABLE = TableConfig(source="db.t", target="cold.t", watermark="wm", keys=("k",))
PLAN = plan_source(TABLE, [("wm", "Int64"), ("k", "Int64"), ("v", "String")])

Row = tuple[int, int]


@dataclass
class ShardPage:
    data: list[Row]
    cut: bool = False
    last = False

    @property
    def rows(self) -> int:
        return len(self.data)

    @property
    def position(self) -> list[Any]:
        return list(self.data[-1]) if self.data else []


@dataclass
class FakeShard:
    """One shard's local table: keyset pages with ClickHouse's semantics (after, upto,
    through, LIMIT n WITH TIES on the whole position), a page cut short at a multiple
    of `cut_every` watermarks (a day), and the probe subquery (`OFFSET n`)."""

    rows: list[Row]
    cut_every: int | None = None
    fail_after: int | None = None  # pages served before the shard dies
    # Rows a page holds at most, whatever it asked (result_overflow_mode = 'break').
    cut_short: int | None = None
    # Pages served before the shard answers every further page empty (rows it loses).
    empty_after: int | None = None
    # Pages served before a read raises a CancelledError nothing asked for.
    stray_after: int | None = None
    served: int = 0
    probes: list[str] = field(default_factory=list)

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> ShardPage:
        self.served += 1
        if self.fail_after is not None and self.served > self.fail_after:
            raise SourceUnavailable("cold.t (shard 2, 127.0.0.1:9001): connection refused")
        if self.stray_after is not None and self.served > self.stray_after:
            raise asyncio.CancelledError  # as a cancelled future awaited again raises it
        rows = sorted(r for r in self.rows if r[0] <= scan.upto)
        if after is not None:
            rows = [r for r in rows if r > tuple(after)]
        if scan.relation.startswith("(SELECT"):  # probe_relation: the row at OFFSET n
            self.probes.append(scan.relation)
            offset = int(re.findall(r"OFFSET (\d+)", scan.relation)[0])
            return ShardPage(rows[offset : offset + 1])
        if scan.through is not None:
            rows = [r for r in rows if r <= tuple(scan.through)]
        page = rows[:limit]
        if self.empty_after is not None and self.served > self.empty_after:
            page = []
        if self.cut_short is not None:
            page = page[: self.cut_short]
        if page and self.cut_every:  # a page ends at its first row's "day"
            day = page[0][0] // self.cut_every
            short = [r for r in page if r[0] // self.cut_every == day]
            if len(short) < len(page):
                return ShardPage(short, cut=True)
        return ShardPage(page)

    read_ahead = 0
    encodes = False


async def python_order(positions: Sequence[list[Any]]) -> list[int]:
    return sorted(range(len(positions)), key=lambda i: tuple(positions[i]))


def sharded(shards: list[FakeShard]) -> ShardedPager:
    members = [
        Shard(n, None, f"db.t_local_{n}", s, s)  # type: ignore[arg-type]
        for n, s in enumerate(shards, 1)
    ]
    return ShardedPager("cold.t", PLAN, members, python_order)


async def scan_all(pager: ShardedPager, upto: int, limit: int) -> list[ShardRound]:
    rounds = []
    async for page in keyset_pages(pager, Scan("db.t", upto), None, limit):
        assert isinstance(page, ShardRound)
        rounds.append(page)
    return rounds


def spread(count: int, shards: int, rng: random.Random, ties: int = 3) -> list[list[Row]]:
    """Rows with `ties` rows on each watermark, keys dealt to random shards."""
    out: list[list[Row]] = [[] for _ in range(shards)]
    for k in range(count):
        out[rng.randrange(shards)].append((k // ties, k))
    return out


@pytest.mark.parametrize("seed", range(12))
async def test_rounds_hold_every_row_once_up_to_their_position(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([2, 3, 4])
    data = spread(rng.randrange(1, 3000), n, rng, ties=rng.choice([1, 3, 7]))
    if seed % 3 == 0:  # skewed: one shard holds most rows
        data[0].extend((wm, 10_000 + i) for i, (wm, _) in enumerate(data[1]))
        data[1] = data[1][:3]
    limit = rng.choice([1, 7, 50, 333])
    upto = max((r[0] for rows in data for r in rows), default=0) - rng.choice([0, 0, 5])
    shards = [FakeShard(rows, cut_every=rng.choice([None, 40])) for rows in data]
    rounds = await scan_all(sharded(shards), upto, limit)
    read = [r for rnd in rounds for p in parts_of(rnd) for r in p.data]  # type: ignore[attr-defined]
    expected = sorted(r for rows in data for r in rows if r[0] <= upto)
    assert sorted(read) == expected, "a row was lost or read twice"
    assert len(read) == len(set(read))
    before: tuple[int, ...] = ()
    for rnd in rounds:
        position = tuple(rnd.position)
        rows = [r for p in parts_of(rnd) for r in p.data]  # type: ignore[attr-defined]
        assert position > before, "a round's position did not move forward"
        assert all(before < r <= position for r in rows), "a round holds a row past it"
        # A later round holds no row at or before this one's position.
        before = position
        assert rnd.rows <= n * limit + n * 7, "a round is larger than a page per shard"
    if rounds:
        assert tuple(rounds[-1].position) == max(expected)


async def test_a_round_ends_where_the_first_shard_has_a_page() -> None:
    """Shard 1's 10th row is (9, 27), shard 2's (27, 82): the round ends at (9, 27), with
    shard 2's three rows before it; its (9, 28), tied on the watermark, waits."""
    one = [(wm, wm * 3) for wm in range(0, 30)]
    two = [(wm, wm * 3 + 1) for wm in range(0, 30, 3)]
    pager = sharded([FakeShard(one), FakeShard(two)])
    first = await pager.read(Scan("db.t", 100), None, 10)
    assert first.position == [9, 27]
    got = sorted(r for p in first.pages for r in p.data)  # type: ignore[attr-defined]
    assert got == sorted([*one[:10], (0, 1), (3, 10), (6, 19)])
    second = await pager.read(Scan("db.t", 100), first.position, 10)
    later = [r for p in second.pages for r in p.data]  # type: ignore[attr-defined]
    assert (9, 28) in later and second.position == [19, 57]


async def test_a_failing_shard_fails_the_round() -> None:
    shards = [FakeShard([(i, i) for i in range(100)]), FakeShard([(i, -i) for i in range(100)])]
    shards[1].fail_after = 3
    with pytest.raises(SourceUnavailable, match="shard 2"):
        await scan_all(sharded(shards), 1_000, 10)


async def test_a_shard_whose_pages_come_back_short_is_read_to_its_end() -> None:
    """Pages cut short without an error (a server's result_overflow_mode = 'break'): every
    shard is still read to the round's end, every row once."""
    data = spread(500, 2, random.Random(7))
    shards = [FakeShard(rows, cut_short=4) for rows in data]
    rounds = await scan_all(sharded(shards), 10_000, 50)
    read = sorted(r for rnd in rounds for p in parts_of(rnd) for r in p.data)  # type: ignore[attr-defined]
    assert read == sorted(r for rows in data for r in rows)


async def test_a_shard_read_short_of_the_round_end_fails_the_round() -> None:
    """Shard 1 holds the round's end (its 10th row) but its read stops before it (an empty
    page while rows remain): the round fails naming shard 1, nothing is returned."""
    one = [(wm, wm * 3) for wm in range(0, 30)]
    two = [(wm, wm * 3 + 1) for wm in range(0, 30, 3)]
    shards = [FakeShard(one, cut_short=4, empty_after=2), FakeShard(two)]
    with pytest.raises(SourceUnavailable, match=r"cold\.t shard 1: .*short of the round's end"):
        await sharded(shards).read(Scan("db.t", 100), None, 10)


async def test_a_stray_cancellation_in_one_shard_fails_the_round() -> None:
    """A CancelledError no cancel scope asked for, raised in shard 2's read: anyio's task
    group would cancel shard 1 and exit normally; the round fails naming shard 2."""
    shards = [FakeShard([(i, i) for i in range(100)]), FakeShard([(i, -i) for i in range(100)])]
    shards[1].stray_after = 2
    with pytest.raises(SourceUnavailable, match=r"cold\.t shard 2: .*cancelled by nothing"):
        await scan_all(sharded(shards), 1_000, 10)


async def test_a_round_that_read_every_shard_to_the_end_ends_the_scan() -> None:
    """No shard has a page more: the round says the scan is over (no round more is read)."""
    shards = [FakeShard([(i, i) for i in range(5)]), FakeShard([(i, -i) for i in range(5)])]
    rounds = await scan_all(sharded(shards), 1_000, 10)
    assert len(rounds) == 1 and rounds[0].last and rounds[0].rows == 10
    assert [s.served for s in shards] == [3, 3]  # a probe, a page, the empty page


def replica(**changed: int) -> list[tuple[int, ...]]:
    """A system.replicas row (REPLICA_STATE) of a replica in sync, with `changed`."""
    state = {
        "is_readonly": 0,
        "is_session_expired": 0,
        "absolute_delay": 0,
        "queue_size": 4,  # merges waiting: no row is missing for them
        "inserts_in_queue": 0,
        "log_pointer": 10,
        "log_max_index": 9,
    }
    state.update(changed)
    return [tuple(state[c] for c in REPLICA_STATE)]


def test_a_replica_in_sync_or_of_a_table_not_replicated_is_read() -> None:
    assert out_of_sync(replica()) is None
    assert out_of_sync([]) is None  # no row: the local table is not Replicated
    assert out_of_sync(replica(log_pointer=0, log_max_index=0)) is None  # a log never written


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        ({"inserts_in_queue": 3, "queue_size": 7}, "3 inserted parts not fetched yet"),
        ({"absolute_delay": 12}, "12 s behind"),
        ({"log_pointer": 5}, "5 replication log entries not queued yet"),
        ({"is_readonly": 1}, "read-only"),
        ({"is_session_expired": 1}, "session expired"),
    ],
)
def test_a_lagging_replica_is_not_read_and_says_why(changed: dict[str, int], said: str) -> None:
    why = out_of_sync(replica(**changed))
    assert why is not None and said in why, why
    assert f"queue_size {changed.get('queue_size', 4)}" in why
