"""Hot retention on a replicated shard, by simulation (replication cannot run here: the
embedded ClickHouse has no ZooKeeper client). A deterministic model of one shard of
ReplicatedMergeTree replicas plays ClickHouse behind retention's `Shard` interface, and
hypothesis' stateful testing drives the real retention code (`plan`, `_recover`,
`_replicas_ready`, `_on_the_replicas`, `_drop`) through interleavings of:

- inserts on any replica, into new days or old ones (late rows), which the other
  replicas fetch later (each replica applies the shard's replication log in order, at
  its own pace);
- merges in the table or the retiring table (replicated: new part names and hashes);
- offload cycles and repairs that read each day through the Distributed table, from
  whichever replica the read lands on;
- retention passes that compare through the Distributed table (any replica), list,
  move and drop on the replica they opened, and may be killed before any of their
  statements or PostgreSQL writes; the next pass recovers.

After every step, on the state every replica converges to: each inserted row is in
the cold tier or the hot one (retiring table included): nothing dropped that Iceberg
does not hold; no row of a day recorded as dropped is in both tiers; with no retention
intent pending, the retiring table is empty.

CI runs a seeded, bounded search (well under a minute). For a longer search:
`OFFLOADER_SIM_EXAMPLES=2000 OFFLOADER_SIM_STEPS=80 python -m pytest tests/test_replica_sim.py`
(a random seed each run: a failure prints its shrunk steps, which replay exactly).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from offloader.config import TableConfig
from offloader.ops import retention
from offloader.ops.retention import Content, Move, Park, PartRow, Statement, _Source
from offloader.state import HASH_MODULUS, RetentionIntent

TABLE = TableConfig(
    source="market.t",
    target="cold.t",
    watermark="ts",
    keys=("id",),
    hot_retention=86400,
    retiring_table="t_retiring",
)
DAYS = 5
REPLICAS = 2
FIRST = dt.date(2025, 5, 1)
EXAMPLES = int(os.environ.get("OFFLOADER_SIM_EXAMPLES", "300"))
STEPS = int(os.environ.get("OFFLOADER_SIM_STEPS", "25"))
LONG = "OFFLOADER_SIM_EXAMPLES" in os.environ or "OFFLOADER_SIM_STEPS" in os.environ

Row = tuple[int, int]  # (day, id)


def pid(day: int) -> str:
    return (FIRST + dt.timedelta(days=day)).strftime("%Y%m%d")


def row_hash(row: Row) -> int:
    return (row[1] * 0x9E3779B97F4A7C15 + row[0]) % HASH_MODULUS


def content(rows: Sequence[Row]) -> Content:
    return Content(len(rows), sum(row_hash(r) for r in rows) % HASH_MODULUS)


@dataclass(frozen=True)
class Part:
    name: str
    rows: frozenset[Row]

    @property
    def hash(self) -> str:  # hash_of_all_files: a part's files, whatever its name
        return f"h{sum(row_hash(r) for r in self.rows) % 10**12}x{len(self.rows)}"


@dataclass
class Replica:
    """One replica's tables (partition id -> parts) and how far it applied the log."""

    tables: dict[str, dict[str, list[Part]]] = field(
        default_factory=lambda: {"hot": {}, "retiring": {}}
    )
    applied: int = 0

    def apply(self, entry: tuple[object, ...]) -> None:
        kind = entry[0]
        if kind == "insert":
            _, table, p, part = entry
            self.tables[str(table)].setdefault(str(p), []).append(part)  # type: ignore[arg-type]
        elif kind == "merge":
            _, table, p, names, part = entry
            parts = self.tables[str(table)].get(str(p), [])
            kept = [x for x in parts if x.name not in names]  # type: ignore[operator]
            self.tables[str(table)][str(p)] = [*kept, part]  # type: ignore[list-item]
        elif kind == "move":
            _, p, src, dst = entry
            moved = self.tables[str(src)].pop(str(p), [])
            self.tables[str(dst)].setdefault(str(p), []).extend(moved)
        else:
            _, table, p = entry
            self.tables[str(table)].pop(str(p), None)

    def rows(self, table: str, p: str | None = None) -> list[Row]:
        return [
            r
            for q, parts in self.tables[table].items()
            if p is None or q == p
            for part in parts
            for r in part.rows
        ]


class Killed(Exception):
    """The offloader process died here (SIGKILL in production: nothing after it runs)."""


class Steps:
    """Counts retention's actions (statements, PostgreSQL writes) and kills the pass
    before the `kill_at`-th."""

    def __init__(self) -> None:
        self.kill_at: int | None = None
        self.done = 0

    def step(self) -> None:
        self.done += 1
        if self.kill_at is not None and self.done >= self.kill_at:
            raise Killed


class ReplicatedShard:
    """A `Shard`: the replicas of one shard, their replication log, and the replica
    retention opened (`opened`). A replicated ALTER is logged and the replica that ran it
    applies its queue through it before it returns (ClickHouse's alter_sync = 1); the
    others apply it when they fetch."""

    prefix = ""

    def __init__(self, steps: Steps, sync_granted: bool) -> None:
        self.replicas = [Replica() for _ in range(REPLICAS)]
        self.log: list[tuple[object, ...]] = []
        self.opened = 0
        self.steps, self.sync_granted = steps, sync_granted
        self.names = 0

    def part(self, rows: frozenset[Row]) -> Part:
        self.names += 1
        return Part(f"p{self.names}", rows)

    def logged(self, entry: tuple[object, ...], on: int) -> None:
        self.log.append(entry)
        self.fetch(on, len(self.log))

    def fetch(self, replica: int, upto: int) -> None:
        r = self.replicas[replica]
        while r.applied < upto:
            r.apply(self.log[r.applied])
            r.applied += 1

    def converged(self) -> Replica:
        full = Replica()
        for entry in self.log:
            full.apply(entry)
        return full

    # The Shard interface, on the opened replica.
    async def parts(self, retiring: bool) -> list[PartRow]:
        tables = self.replicas[self.opened].tables["retiring" if retiring else "hot"]
        return [
            PartRow(p, f"{p[:4]}-{p[4:6]}-{p[6:]}", x.name, x.hash, len(x.rows))
            for p, parts in tables.items()
            for x in parts
        ]

    async def detached(self, partition_id: str) -> list[str]:
        raise AssertionError("a Replicated table is never detached")

    async def content(self, partition_id: str, retiring: bool) -> Content:
        table = "retiring" if retiring else "hot"
        return content(self.replicas[self.opened].rows(table, partition_id))

    async def run(self, method: Park, statement: Statement) -> None:
        assert isinstance(method, Move)
        self.steps.step()
        p = statement.partition
        if statement.action == "park":
            self.logged(("move", p, "hot", "retiring"), self.opened)
        elif statement.parts and statement.action == "unpark":
            self.logged(("move", p, "retiring", "hot"), self.opened)
        elif statement.parts:
            self.logged(("drop", "retiring", p), self.opened)

    async def lag(self) -> str | None:
        behind = len(self.log) - self.replicas[self.opened].applied
        if behind and self.sync_granted:  # SYSTEM SYNC REPLICA
            self.fetch(self.opened, len(self.log))
            return None
        return f"the replica is {behind} entries behind" if behind else None


class Store:
    """PostgreSQL's part in retention: the intent and the day dropped up to."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.intent: RetentionIntent | None = None
        self.retained_until: dt.date | None = None

    async def retention_intent(self, target: str, intent: RetentionIntent | None) -> None:
        self.steps.step()
        self.intent = intent

    async def retention_dropping(self, target: str, intent: RetentionIntent) -> None:
        self.steps.step()
        self.intent = intent
        self.retained_until = dt.date.fromisoformat(intent.retained_until)


class ReplicatedRetention(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.steps = Steps()
        self.shard = ReplicatedShard(self.steps, sync_granted=False)
        self.store = Store(self.steps)
        self.hot = _Source(None, TABLE, [self.shard], Move())
        self.cold: set[Row] = set()
        self.inserted: set[Row] = set()
        self.position = 0  # days before it are offloaded
        self.ids = 0

    @initialize(parts=st.integers(1, 3), offloaded=st.integers(1, DAYS - 1))
    def history(self, parts: int, offloaded: int) -> None:
        """Where a search starts: `parts` parts a day on every replica, the first
        `offloaded` days in Iceberg."""
        for day in range(DAYS):
            for _ in range(parts):
                self._insert(day, 0)
        for replica in range(REPLICAS):
            self.shard.fetch(replica, len(self.shard.log))
        for _ in range(offloaded):
            self.offload(0)

    @rule(ahead=st.integers(0, 1), replica=st.integers(0, REPLICAS - 1))
    def insert(self, ahead: int, replica: int) -> None:
        """A row inserted on one replica into a day not offloaded yet."""
        if self.position + ahead < DAYS:
            self._insert(self.position + ahead, replica)

    @precondition(lambda self: self.position > 0)
    @rule(back=st.integers(1, DAYS), replica=st.integers(0, REPLICAS - 1))
    def insert_late(self, back: int, replica: int) -> None:
        """A late row: inserted into a day offloaded already (or dropped)."""
        self._insert(max(0, self.position - back), replica)

    def _insert(self, day: int, replica: int) -> None:
        self.ids += 1
        row = (day, self.ids)
        self.inserted.add(row)
        self.shard.logged(("insert", "hot", pid(day), self.shard.part(frozenset([row]))), replica)

    @rule(replica=st.integers(0, REPLICAS - 1), entries=st.integers(1, 3))
    def fetch(self, replica: int, entries: int) -> None:
        r = self.shard.replicas[replica]
        self.shard.fetch(replica, min(len(self.shard.log), r.applied + entries))

    @rule(which=st.integers(0, 2 * DAYS))
    def merge(self, which: int) -> None:
        """A merge of one partition's parts, in the table or the retiring table (assigned
        on the log: every replica merges the same parts into one of a new name)."""
        end = self.shard.converged()
        found = [(t, p, x) for t, ps in end.tables.items() for p, x in ps.items() if len(x) > 1]
        if not found:
            return
        table, p, parts = found[which % len(found)]
        merged = self.shard.part(frozenset().union(*(x.rows for x in parts)))
        names = frozenset(x.name for x in parts)
        self.shard.logged(("merge", table, p, names, merged), self.shard.opened)

    @rule(replica=st.integers(0, REPLICAS - 1))
    def offload(self, replica: int) -> None:
        """A cycle: the next day read through the Distributed table (one replica)."""
        after = min(DAYS, self.position + 1)
        seen = self.shard.replicas[replica].rows("hot")
        self.cold |= {r for r in seen if self.position <= r[0] < after}
        self.position = after

    @rule(day=st.integers(0, DAYS - 1), replica=st.integers(0, REPLICAS - 1))
    def repair(self, day: int, replica: int) -> None:
        """`repair`: an offloaded day that hot_retention did not drop, replaced in Iceberg
        by what the Distributed table reads of it."""
        until = self.store.retained_until
        dropped = until is not None and FIRST + dt.timedelta(days=day) < until
        if day >= self.position or dropped or self.store.intent is not None:
            return
        seen = self.shard.replicas[replica].rows("hot", pid(day))
        self.cold = {r for r in self.cold if r[0] != day} | set(seen)

    @precondition(lambda self: self.position > 0)
    @rule(
        reads=st.lists(st.integers(0, REPLICAS - 1), min_size=DAYS, max_size=DAYS),
        kill_at=st.integers(0, 6),
    )
    def retain(self, reads: list[int], kill_at: int) -> None:
        """A retention pass: the comparison of day k reads through the Distributed table
        from replica reads[k]; killed before its kill_at-th action (0: not killed)."""
        self.steps.kill_at, self.steps.done = kill_at or None, 0
        try:
            anyio.run(self._pass, reads)
        except Killed:
            pass
        finally:
            self.steps.kill_at = None

    async def _pass(self, reads: list[int]) -> None:
        if self.store.intent is not None:
            await retention._recover(self.hot, self.store, TABLE.target, self.store.intent)  # type: ignore[arg-type]
        decisions = retention.plan(
            await self.hot.partitions(),
            "day",
            position_day=FIRST + dt.timedelta(days=self.position),
            now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            retention=0,
            retained_until=self.store.retained_until,
        )
        for d in decisions:
            if d.verdict == "late":
                continue
            if d.verdict != "candidate" or await retention._replicas_ready(self.hot):
                return
            day = (d.first - FIRST).days
            seen = self.shard.replicas[reads[day]].rows("hot", d.partition.id)
            if sorted(seen) != sorted(r for r in self.cold if r[0] == day):
                return  # the tiers differ: repair first
            compared = content(seen)
            why, d = await retention._on_the_replicas(self.hot, d, compared.rows, compared.checksum)
            if why is not None:
                return
            if await retention._drop(self.hot, self.store, TABLE.target, d):  # type: ignore[arg-type]
                return

    @invariant()
    def nothing_is_lost(self) -> None:
        end = self.shard.converged()
        held = set(end.rows("hot")) | set(end.rows("retiring")) | self.cold
        lost = sorted(self.inserted - held)
        assert not lost, f"rows dropped from the hot tier that Iceberg does not hold: {lost}"

    @invariant()
    def a_dropped_day_is_in_one_tier(self) -> None:
        if self.store.retained_until is None or self.store.intent is not None:
            return
        end = self.shard.converged()
        until = (self.store.retained_until - FIRST).days
        both = sorted(r for r in end.rows("hot") if r[0] < until and r in self.cold)
        assert not both, f"rows of days recorded as dropped still hot and in Iceberg: {both}"

    @invariant()
    def the_retiring_table_forgets_nothing(self) -> None:
        if self.store.intent is None:
            left = self.shard.converged().rows("retiring")
            assert not left, f"no retention pending, the retiring table holds {sorted(left)}"


class ReplicatedRetentionWithSync(ReplicatedRetention):
    """The same, where offloader may run SYSTEM SYNC REPLICA."""

    def __init__(self) -> None:
        super().__init__()
        self.shard.sync_granted = True


_settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    derandomize=not LONG,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplicatedRetention = ReplicatedRetention.TestCase
TestReplicatedRetention.settings = _settings
TestReplicatedRetentionWithSync = ReplicatedRetentionWithSync.TestCase
TestReplicatedRetentionWithSync.settings = _settings
