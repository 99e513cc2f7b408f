"""Verified hot retention: the hot tier gives up a partition only once the cold tier
verifiably holds it (`hot_retention` per table, instead of a blind TTL).

A source partition (of a table partitioned by the day or month of its watermark) is
dropped when all of these hold, checked at the moment of the drop, oldest partition
first (a partition that cannot be dropped stops the newer ones: the hot tier always
holds a suffix of time, and what offloader dropped is every day before the table's
`retained_until`):
1. its whole time range lies before the committed position's day, and ends at least
   `hot_retention` ago;
2. both tiers were just compared for each of its days and agree: row counts (ClickHouse
   against Iceberg's manifests) and the sums of row hashes (ClickHouse's against those
   recorded with the commits); where the recorded sums are incomplete, `verify`'s
   checksum of every value instead;
3. nothing changed it meanwhile: its parts are detached (`ALTER TABLE … DETACH
   PARTITION`), and only if the detached parts are exactly the parts that were compared
   are they dropped (`DROP DETACHED PART`); otherwise (a row inserted, a merge) they are
   attached again and the partition waits for the next pass. An intent recorded in
   PostgreSQL before the detach lets a run killed at any step finish or undo it. With a
   `retiring_table` the partition is moved there instead and what arrived is compared
   by content (rows and row-hash sum on each node: the retiring table may merge);
4. one replica per decision: what the comparison read (through a Distributed table,
   from any replica) is what the replica retention opened on each shard holds, and a
   Replicated replica is used only in sync (`Shard`, the interface it all goes through).

The pure part (`partition_unit`, `partition_range`, `plan`) decides; `retain_table` does
it under the table's lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import anyio

from offloader import faults
from offloader.config import TableConfig
from offloader.cursor import from_micros
from offloader.days import SECONDS_PER_DAY, day_number, watermark_day
from offloader.errors import SourceSchemaError, TableError
from offloader.iceberg import IcebergTable
from offloader.report import REFUSAL_REASONS, Status, guarded, in_time
from offloader.source import Source, SourceTable, open_table
from offloader.source.shards import cluster_of, out_of_sync
from offloader.sql import retention as sql
from offloader.sql.retention import retiring_ddl
from offloader.sql.system import REPLICA_STATE, replica_state_query
from offloader.sql.text import qualified, row_hash
from offloader.state import HASH_MODULUS, RetentionIntent, Store, TableState
from offloader.tiers.audit import HotTable, audit_days
from offloader.tiers.services import Services
from offloader.types import ChType

log = logging.getLogger(__name__)

Unit = Literal["day", "month"]

# Partition keys that map a partition to a time range of the watermark column `{}`.
_DAY_KEYS = ("toYYYYMMDD({})", "toDate({})", "toDate32({})", "toStartOfDay({})")
_MONTH_KEYS = ("toYYYYMM({})", "toStartOfMonth({})")


def partition_unit(target: str, partition_key: str, watermark: str, wm_type: ChType) -> Unit:
    """What one partition of the source spans: a UTC day or month of the watermark.
    Raises ValueError naming the table and the key when offloader cannot tell (another
    partition key, or a time zone other than UTC: days would not be the audit's)."""
    key = re.sub(r"[\s`]", "", partition_key)
    name = watermark.replace("`", "")
    base = wm_type.unwrap()
    dated = base.name in ("Date", "Date32")
    if not dated and not (base.name in ("DateTime", "DateTime64") and _utc(base)):
        raise ValueError(
            f"{target}: hot_retention needs a Date, Date32 or UTC DateTime/DateTime64 "
            f"watermark (its partitions' days must be the audit's UTC days); "
            f"{watermark!r} is {wm_type}"
        )
    if key in {k.format(name) for k in _DAY_KEYS} or (dated and key == name):
        return "day"
    if key in {k.format(name) for k in _MONTH_KEYS}:
        return "month"
    shown = partition_key or "(none: the table is not partitioned)"
    raise ValueError(
        f"{target}: hot_retention drops whole partitions, so the source must be partitioned "
        f"by the day or month of the watermark (PARTITION BY toYYYYMMDD({watermark}), "
        f"toDate, toStartOfDay, toYYYYMM or toStartOfMonth of it); its partition key is "
        f"{shown}"
    )


def _utc(t: ChType) -> bool:
    zone = [a for a in t.args if isinstance(a, str)]
    return bool(zone) and zone[-1] in ("UTC", "Etc/UTC", "GMT")


def partition_range(value: str, unit: Unit) -> tuple[dt.date, dt.date]:
    """[first day, day after the last) of a partition from its value as system.parts
    shows it ('20250301', '2025-03-01', '2025-03-01 00:00:00', '202503')."""
    digits = re.sub(r"\D", "", value)
    if unit == "day":
        start = dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
        return start, start + dt.timedelta(days=1)
    start = dt.date(int(digits[0:4]), int(digits[4:6]), 1)
    after = dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, after


@dataclass(frozen=True, slots=True)
class Partition:
    """An active partition of the source: its id, value, parts and rows."""

    id: str
    value: str
    parts: tuple[str, ...]
    rows: int


Verdict = Literal["candidate", "young", "not_offloaded", "late"]


@dataclass(frozen=True, slots=True)
class Decision:
    partition: Partition
    first: dt.date
    after: dt.date
    verdict: Verdict

    @property
    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=k) for k in range((self.after - self.first).days)]


def plan(
    partitions: Sequence[Partition],
    unit: Unit,
    *,
    position_day: dt.date | None,
    now: dt.datetime,
    retention: float,
    retained_until: dt.date | None,
) -> list[Decision]:
    """Each partition, oldest first, with what may happen to it (pure):
    `late` — it lies before `retained_until`: offloader dropped its days already, so its
    rows arrived later (late rows Iceberg does not hold: reported, never dropped);
    `candidate` — old enough and wholly before the committed position's day (to be
    verified); `young` — inside the retention; `not_offloaded` — it reaches the
    position's day or later."""
    horizon = (now - dt.timedelta(seconds=retention)).astimezone(dt.UTC)
    out = []
    for p in sorted(partitions, key=lambda p: partition_range(p.value, unit)[0]):
        first, after = partition_range(p.value, unit)
        end = dt.datetime.combine(after, dt.time(), dt.UTC)
        verdict: Verdict
        if retained_until is not None and after <= retained_until:
            verdict = "late"
        elif position_day is None or after > position_day:
            verdict = "not_offloaded"
        elif end > horizon:
            verdict = "young"
        else:
            verdict = "candidate"
        out.append(Decision(p, first, after, verdict))
    return out


@dataclass(slots=True)
class Dropped:
    partition: str
    first_day: str
    last_day: str
    rows: int  # ClickHouse's rows when compared (Iceberg's: the same)


@dataclass(slots=True)
class RetentionReport:
    target: str
    dry_run: bool = False
    status: Status = Status.OK  # OK, OFF, SKIPPED, FAILED
    retention: float | None = None
    dropped: list[Dropped] = field(default_factory=list)  # (would be) dropped
    refused: list[str] = field(default_factory=list)  # "partition: why"
    reasons: list[str] = field(default_factory=list)  # a REFUSAL_REASONS entry per refusal
    late: list[str] = field(default_factory=list)  # partitions of rows after their drop
    oldest_hot_day: str | None = None  # after the pass
    retained_until: str | None = None  # days before it are Iceberg's alone
    recovered: str | None = None  # what a killed pass left and this one finished or undid
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d

    @property
    def result(self) -> Status:
        """The pass in one word (a RETENTION_RESULTS entry, or OFF): FAILED, SKIPPED,
        OFF, REFUSED (a partition refused or rows found in dropped days) or OK."""
        if self.status != Status.OK:
            return self.status
        return Status.REFUSED if self.refused or self.late else Status.OK

    def refuse(self, partition: str, why: str, reason: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        self.refused.append(f"partition {partition}: {why}")
        self.reasons.append(reason)

    def summary(self) -> dict[str, Any]:
        """What PostgreSQL keeps of the table's last pass (status shows it)."""
        return {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "result": self.result,
            "dropped": len(self.dropped),
            "refused": self.refused,
            "late": self.late,
            "error": self.error,
        }

    def lines(self) -> list[str]:
        if self.status == Status.OFF:
            return [f"{self.target}: hot_retention is not set"]
        if self.status in (Status.FAILED, Status.SKIPPED):
            return [f"{self.target}: {self.status}: {self.error}"]
        verb = "would drop" if self.dry_run else "dropped"
        out = [
            f"{self.target}: {verb} partition {d.partition} ({d.first_day}"
            + (f" to {d.last_day}" if d.last_day != d.first_day else "")
            + f"): ClickHouse {d.rows} rows, Iceberg {d.rows} rows"
            for d in self.dropped
        ]
        if self.recovered:
            out.append(f"{self.target}: {self.recovered}")
        out += [f"{self.target}: REFUSED {r}" for r in self.refused]
        out += [f"{self.target}: LATE ROWS {r}" for r in self.late]
        if not self.dropped and not self.refused:
            out.append(f"{self.target}: nothing to drop")
        out.append(
            f"{self.target}: oldest hot day {self.oldest_hot_day or '-'}; days before "
            f"{self.retained_until or '-'} are held by Iceberg alone"
        )
        return out


# --- I/O: the pass over one table --------------------------------------------------


async def retain_table(
    services: Services,
    table: TableConfig,
    *,
    dry_run: bool = False,
    deadline: float | None = None,
) -> RetentionReport:
    """One retention pass over one table, under its lock. Never raises for a table
    problem (`guarded`): it is in the report, and PostgreSQL keeps its summary."""
    report = RetentionReport(table.target, dry_run=dry_run, retention=table.hot_retention)
    if table.hot_retention is None:
        report.status = Status.OFF
        return report
    store = services.watermarks
    with guarded(report, "retention"):
        async with store.table_lock(table.target), open_table(services.clickhouse, table) as src:
            await _pass(services, table, src, report, deadline)
    event = log.error if report.status == Status.FAILED else log.info
    event(f"retention {report.status}", extra={"table": table.target, **report.as_dict()})
    if not dry_run and report.status != Status.SKIPPED:
        try:
            await store.record_retention(table.target, report.summary())
        except TableError as exc:
            log.warning(
                "could not record the retention pass",
                extra={"table": table.target, "error": str(exc)},
            )
    return report


async def retain(
    services: Services,
    tables: Sequence[TableConfig],
    *,
    dry_run: bool = False,
    deadline: float | None = None,
    stopping: anyio.Event | None = None,
) -> list[RetentionReport]:
    """A retention pass over the tables that set hot_retention, one after another;
    those not reached before `deadline` or a shutdown wait for the next pass."""
    kept = [t for t in tables if t.hot_retention is not None]
    return [
        await retain_table(services, table, dry_run=dry_run, deadline=deadline)
        for table in in_time(kept, deadline, stopping, "retention")
    ]


async def check(src: SourceTable, table: TableConfig) -> str:
    """`offloader validate`: what one partition of the source spans, or SourceSchemaError
    naming the table and the partition key offloader cannot drop by."""
    hot = await _Source.open(src, table)
    unit = await hot.unit()
    assert table.hot_retention is not None
    where = " on every shard" if src.distributed is not None else ""
    via = f" (through {table.retiring_table})" if hot.method == "move" else ""
    return (
        f"hot_retention {table.hot_retention / SECONDS_PER_DAY:g}d: drops {unit} partitions of "
        f"{table.watermark!r}{where}{via} once Iceberg verifiably holds them"
    )


Method = Literal["detach", "move"]


@dataclass(frozen=True, slots=True)
class _Node:
    """A table whose parts retention moves: the source itself, or a Distributed source's
    local table on one shard (its parts carry `prefix`, "shard N/", in the intent), and
    its retiring table (method "move") in the same database. `replicated`: its engine is
    Replicated (checked when the table is opened)."""

    prefix: str
    source: Source
    db: str
    name: str
    retiring: str | None = None
    replicated: bool = False

    @property
    def retiring_table(self) -> str:
        assert self.retiring is not None
        return self.retiring

    def table(self, retiring: bool) -> str:
        """The name of the node's table, or of its retiring table."""
        return self.retiring_table if retiring else self.name


@dataclass(frozen=True, slots=True)
class Content:
    """What a partition holds on one node, by content rather than by part names (a merge
    renames parts and keeps this): its rows and the sum of their row hashes (mod 2^64;
    as FINAL shows them where the table is read with FINAL)."""

    rows: int
    checksum: int

    @property
    def token(self) -> str:
        return f"{self.rows} rows, hash sum {self.checksum % HASH_MODULUS}"


@dataclass(frozen=True, slots=True)
class PartRow:
    """An active part as system.parts shows it."""

    partition_id: str
    partition: str
    name: str
    hash: str
    rows: int


Action = Literal["park", "unpark", "drop"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One thing a method does to a partition on one node: park it (detach, or move to
    the retiring table), put `parts` back, or drop the parked `parts`. The method renders
    it as SQL (`sql`); a fake shard in the tests plays it on its model."""

    action: Action
    partition: str
    parts: tuple[str, ...] = ()


class Shard(Protocol):
    """The small interface retention's decisions go through: one node's tables, on the
    one replica retention opened there (what it lists, compares and moves is seen on that
    replica). `Sql` is ClickHouse; tests/test_replica_sim.py fakes a replicated shard."""

    prefix: str

    async def parts(self, retiring: bool) -> list[PartRow]: ...

    async def detached(self, partition_id: str) -> list[str]: ...

    async def content(self, partition_id: str, retiring: bool) -> Content: ...

    async def run(self, method: Park, statement: Statement) -> None: ...

    async def lag(self) -> str | None:
        """Why this replica may not be used now (behind its shard's others), or None."""
        ...


class Detach:
    """The partition's parts go to the table's detached/ directory, named as they were,
    and are dropped there one by one (not for Replicated tables: detached parts are each
    replica's own)."""

    name: Method = "detach"
    parked_where = "detached"

    def names(self, parts: Sequence[PartRow]) -> list[str]:
        return [p.name for p in parts]

    async def parked(self, shard: Shard, partition_id: str) -> list[str]:
        return await shard.detached(partition_id)

    def compared(self, partition: Partition, contents: Sequence[tuple[str, Content]]) -> Partition:
        return partition  # detached parts keep their names: the compared ones are named

    def left(self, ours: Sequence[str], compared: Sequence[str]) -> list[str]:
        return sorted((Counter(ours) & Counter(compared)).elements())

    def sql(self, node: _Node, s: Statement) -> list[str]:
        if s.action == "park":
            return [sql.detach_partition(node.db, node.name, s.partition)]
        if s.action == "unpark":
            return [sql.attach_part(node.db, node.name, p) for p in s.parts]
        return [sql.drop_detached_part(node.db, node.name, p) for p in s.parts]


class Move:
    """The partition moves to the retiring table (a replicated ALTER on Replicated
    tables: every replica moves it) and is dropped there by DROP PARTITION. Moved parts
    are renamed, and the retiring table may merge them, so what arrived is compared by
    content (rows and row-hash sum on each node), and past the point of no return the
    partition goes from the retiring table whatever its parts are called by then."""

    name: Method = "move"
    parked_where = "in the retiring table"

    def names(self, parts: Sequence[PartRow]) -> list[str]:
        # A partition moved away leaves empty covering parts behind until ClickHouse
        # removes them: they are not counted.
        return [p.hash for p in parts if p.rows > 0]

    async def parked(self, shard: Shard, partition_id: str) -> list[str]:
        c = await shard.content(partition_id, retiring=True)
        return [c.token] if c.rows else []

    def compared(self, partition: Partition, contents: Sequence[tuple[str, Content]]) -> Partition:
        tokens = tuple(sorted(prefix + c.token for prefix, c in contents if c.rows))
        return replace(partition, parts=tokens)

    def left(self, ours: Sequence[str], compared: Sequence[str]) -> list[str]:
        return list(ours)  # the retiring table holds nothing else of the partition

    def sql(self, node: _Node, s: Statement) -> list[str]:
        here, there = node.name, node.retiring_table
        if s.action == "park":
            return [sql.move_partition(node.db, here, there, s.partition)]
        if not s.parts:
            return []
        if s.action == "unpark":
            return [sql.move_partition(node.db, there, here, s.partition)]
        return [sql.drop_partition(node.db, there, s.partition)]


Park = Detach | Move


def lag_tables(node: _Node) -> list[str]:
    """The tables whose replica state decides whether `node`'s replica may be used: the
    table retention parks from, and its retiring table (a replica behind on either would
    list, compare, move or drop other parts than its shard's others hold)."""
    return [node.name] + ([node.retiring] if node.retiring is not None else [])


class Sql:
    """A `Shard` on ClickHouse: the node's session runs each statement."""

    def __init__(self, node: _Node, hashed: str, final: bool) -> None:
        self.node, self.prefix, self.hashed, self.final = node, node.prefix, hashed, final

    async def parts(self, retiring: bool) -> list[PartRow]:
        node = self.node
        rows = await node.source.rows(sql.active_parts_query(node.db, node.table(retiring)))
        return [PartRow(str(i), str(v), str(n), str(h), int(r)) for i, v, n, h, r in rows]

    async def detached(self, partition_id: str) -> list[str]:
        node = self.node
        rows = await node.source.rows(sql.detached_parts_query(node.db, node.name, partition_id))
        return [str(r[0]) for r in rows]

    async def content(self, partition_id: str, retiring: bool) -> Content:
        node = self.node
        query = sql.partition_content_query(
            node.db, node.table(retiring), partition_id, self.hashed, self.final
        )
        rows, checksum = (await node.source.rows(query))[0]
        return Content(int(rows), int(checksum or 0))

    async def run(self, method: Park, statement: Statement) -> None:
        for text in method.sql(self.node, statement):
            await self.node.source.command(text)
            if statement.action == "drop":
                faults.point("retain_drop_part")

    async def lag(self) -> str | None:
        if not self.node.replicated:
            return None
        for name in lag_tables(self.node):
            try:
                await self.node.source.command(sql.sync_replica_queue_command(self.node.db, name))
            except SourceSchemaError as exc:
                if "access denied" not in str(exc):
                    raise
                # Not granted (SYSTEM SYNC REPLICA is optional): the replica's state decides.
                log.info(
                    "replica sync not granted (SYSTEM SYNC REPLICA)", extra={"node": self.prefix}
                )
            rows = await self.node.source.rows(replica_state_query(self.node.db, name))
            why = out_of_sync(rows)
            queued = int(rows[0][REPLICA_STATE.index("queue_size")]) if rows else 0
            if why is None and queued:  # retention also waits for queued merges and moves
                why = f"{queued} entries in its replication queue"
            if why is not None:
                return (
                    f"{self.prefix or 'the replica '}{qualified(self.node.db, name)}: {why} "
                    "(system.replicas); retried once it caught up"
                )
        return None


class _Source:
    """The source table's partitions and parts, and the statements that move them: on
    one server the table's own; for a Distributed source its local table's on every shard
    (a partition is the union of its parts on all shards, parked and dropped on each),
    each through its `Shard`. `park`: `Detach` (the default) or `Move` (a
    `retiring_table`: needed on Replicated tables, whose detached parts are each
    replica's own)."""

    def __init__(
        self,
        src: SourceTable | None,
        table: TableConfig,
        shards: Sequence[Shard],
        park: Park | None = None,
    ) -> None:
        self.src, self.table, self.shards = src, table, tuple(shards)
        self.park: Park = park or Detach()

    @property
    def method(self) -> Method:
        return self.park.name

    @classmethod
    async def open(cls, src: SourceTable, table: TableConfig) -> _Source:
        retiring = table.retiring_table
        if src.distributed is None:
            nodes = [_Node("", src.source, src.database, table.source_table, retiring)]
        else:
            cluster, db, local = src.distributed
            replicas = await _replicas(src.source, cluster)
            nodes = [_Node(f"shard {n}/", s, db, local, retiring) for n, s in await src.shards()]
        for k, node in enumerate(nodes):
            nodes[k] = node = await _check_node(table, node)
            if src.distributed is not None and not node.replicated:
                _single_copy(table, node, replicas.get(int(node.prefix[6:-1]), 1))
        hashed = row_hash(src.columns).expr
        shards = [Sql(node, hashed, table.final) for node in nodes]
        return cls(src, table, shards, Detach() if retiring is None else Move())

    async def unit(self) -> Unit:
        assert self.src is not None
        first = self.shards[0]
        assert isinstance(first, Sql)
        key = await first.node.source.scalar(
            sql.partition_key_query(first.node.db, first.node.name)
        )
        wm = self.src.order[0]
        try:
            return partition_unit(self.table.target, str(key or ""), wm[0], wm[1])
        except ValueError as exc:
            raise SourceSchemaError(str(exc), reason="config") from None

    async def partitions(self) -> list[Partition]:
        found: dict[str, tuple[str, list[str], int]] = {}
        for shard in self.shards:
            by_id: dict[str, list[PartRow]] = {}
            for part in await shard.parts(retiring=False):
                by_id.setdefault(part.partition_id, []).append(part)
            for i, parts in by_id.items():
                names = [shard.prefix + n for n in self.park.names(parts)]
                if not names:
                    continue
                v, before, total = found.get(i, (parts[0].partition, [], 0))
                found[i] = (v, before + names, total + sum(p.rows for p in parts))
        return [
            Partition(i, v, tuple(sorted(parts)), rows) for i, (v, parts, rows) in found.items()
        ]

    async def contents(self, partition_id: str) -> list[tuple[str, Content]]:
        """The partition's content on every node (on the replica opened there)."""
        return [(s.prefix, await s.content(partition_id, retiring=False)) for s in self.shards]

    async def lagging(self) -> list[str]:
        return [why for s in self.shards if (why := await s.lag()) is not None]

    async def detached(self, partition_id: str) -> list[str]:
        """The partition's parked parts on every node, as the method names them (a
        multiset: two parts of the same rows have one hash)."""
        out: list[str] = []
        for shard in self.shards:
            out += [shard.prefix + p for p in await self.park.parked(shard, partition_id)]
        return sorted(out)

    async def detach(self, partition_id: str) -> None:
        for shard in self.shards:
            await shard.run(self.park, Statement("park", partition_id))

    def _located(self, parts: Sequence[str]) -> list[tuple[Shard, list[str]]]:
        """`parts` by node, in node order, with the names each node knows them by."""
        by_node: dict[str, list[str]] = {}
        for part in parts:
            shard = next(n for n in reversed(self.shards) if part.startswith(n.prefix))
            by_node.setdefault(shard.prefix, []).append(part[len(shard.prefix) :])
        return [(n, by_node[n.prefix]) for n in self.shards if n.prefix in by_node]

    async def drop(self, partition_id: str, parts: Sequence[str]) -> None:
        for shard, names in self._located(parts):
            await shard.run(self.park, Statement("drop", partition_id, tuple(names)))

    async def attach(self, partition_id: str, parts: Sequence[str]) -> None:
        for shard, names in self._located(parts):
            await shard.run(self.park, Statement("unpark", partition_id, tuple(names)))


async def _replicas(session: Source, cluster: str) -> dict[int, int]:
    """How many replicas each shard of the cluster has (system.clusters)."""
    return Counter(node.shard for node in await cluster_of(session, cluster))


def _single_copy(table: TableConfig, node: _Node, replicas: int) -> None:
    """A shard of several replicas whose table is not Replicated: each replica holds its
    own rows (inserts go to one of them), so parking and dropping on the one replica
    retention opened would leave the others' copies, and comparing through the
    Distributed table would read whichever replica it lands on. Refused."""
    if replicas > 1:
        raise SourceSchemaError(
            f"{table.target}: hot_retention on {node.prefix}{node.db}.{node.name}: the shard "
            f"has {replicas} replicas but the table is not Replicated, so each replica holds "
            "rows of its own that retention on one replica would neither compare nor drop; "
            "make it a Replicated table (with a retiring_table), or give the shard one replica",
            reason="config",
        )


async def _check_node(table: TableConfig, node: _Node) -> _Node:
    """A Replicated table needs a retiring table (its detached parts are each replica's
    own); a retiring table must exist in the same engine family and partition key.
    Returns the node, marked `replicated` where it is."""
    engine, full, key = (await node.source.rows(sql.engine_query(node.db, node.name)))[0]
    replicated = str(engine).startswith("Replicated")
    where = f"{table.target}: hot_retention on {engine} {node.db}.{node.name}"
    if node.retiring is None:
        if replicated:
            ddl = retiring_ddl(node.db, node.name, f"{node.name}_retiring", str(full))
            raise SourceSchemaError(
                f"{where} needs a retiring table: DROP DETACHED PART acts on one replica and "
                "would leave the other replicas' copies on disk. Create it on every replica "
                f"(ON CLUSTER): {ddl}; then set retiring_table = {node.name + '_retiring'!r} "
                "(README 'ClickHouse clusters')",
                reason="config",
            )
        return node
    found = await node.source.rows(sql.engine_query(node.db, node.retiring))
    if not found:
        ddl = retiring_ddl(node.db, node.name, node.retiring, str(full))
        raise SourceSchemaError(
            f"{where}: its retiring table {node.db}.{node.retiring} does not exist"
            + (f" on shard {node.prefix[6:-1]}" if node.prefix else "")
            + f"; create it (on every replica): {ddl}; if it exists, offloader's user has no "
            "grant on it (`offloader grants` prints the grants it needs)",
            reason="config",
        )
    theirs, _, their_key = found[0]
    if str(theirs).startswith("Replicated") != replicated or str(their_key) != str(key):
        raise SourceSchemaError(
            f"{where}: its retiring table {node.db}.{node.retiring} is {theirs} partitioned by "
            f"{their_key or '(nothing)'}; it must be of the same engine family "
            f"({'Replicated' if replicated else 'not Replicated'}) and partition key ({key})",
            reason="config",
        )
    return replace(node, replicated=replicated)


async def _pass(
    services: Services,
    table: TableConfig,
    src: SourceTable,
    report: RetentionReport,
    deadline: float | None,
) -> None:
    """Finish or undo what a stopped pass left, then drop the partitions the tiers are
    shown to agree on, oldest first, until one may not be (or `deadline`)."""
    assert table.hot_retention is not None
    store = services.watermarks
    hot = await _Source.open(src, table)
    unit = await hot.unit()
    state = await _recovered(services, table, hot, report)
    if state is None:  # recovery waits for a replica
        return
    decisions = await _decisions(src, table, hot, unit, state)
    ice = await _load_iceberg(services, table) if decisions else None
    for d in decisions:
        if d.verdict == "late":
            _report_late(report, table, d, state.retained_until)
            continue
        if d.verdict != "candidate":
            break  # the rest is younger: the hot tier keeps a suffix of time
        if deadline is not None and time.monotonic() > deadline:
            break
        assert ice is not None and state.position is not None
        why, rows, d = await _differs(services, table, src, hot, ice, list(state.position), d)
        if why is not None:
            report.refuse(d.partition.id, why.text, why.reason)
            log.error(
                "retention refused",
                extra={"table": table.target, "partition": d.partition.id, "reason": why.text},
            )
            break  # never drop past a day the tiers disagree on
        if report.dry_run:
            report.dropped.append(_dropped(d, rows))
            continue
        changed = await _drop(hot, store, table.target, d, snapshot_id=ice.snapshot_id)
        if changed:
            report.refuse(d.partition.id, changed, "changed")
            break
        report.dropped.append(_dropped(d, rows))
        log.info("partition dropped", extra={"table": table.target, **asdict(_dropped(d, rows))})
    await _report_hot_days(store, table, hot, unit, report)


async def _recovered(
    services: Services, table: TableConfig, hot: _Source, report: RetentionReport
) -> TableState | None:
    """The table's state, once what a stopped pass left (its intent) is finished or
    undone (`report.recovered` says which); None when recovery waits for a replica (the
    intent's partition is refused in the report)."""
    store = services.watermarks
    state = await store.get(table.target, table.source)
    if state.retention_intent is None:
        return state
    pending = state.retention_intent
    report.recovered = await _recover(
        hot, store, table.target, pending, _snapshot_probe(services, table)
    )
    state = await store.get(table.target, table.source)
    if state.retention_intent is not None:  # recovery waits for a replica
        report.refuse(pending.partition, report.recovered, "changed")
        return None
    return state


async def _decisions(
    src: SourceTable, table: TableConfig, hot: _Source, unit: Unit, state: TableState
) -> list[Decision]:
    """The source's partitions, oldest first, with what may happen to each (`plan`), as
    of the server's clock and the table's committed position."""
    assert table.hot_retention is not None
    wm_type = src.order[0][1]
    position_day = watermark_day(wm_type, state.position[0]) if state.position else None
    now = await src.source.scalar(sql.now_query())
    return plan(
        await hot.partitions(),
        unit,
        position_day=position_day,
        now=from_micros(int(now)),
        retention=table.hot_retention,
        retained_until=state.retained_until,
    )


async def _load_iceberg(services: Services, table: TableConfig) -> IcebergTable | None:
    """The table's Iceberg table as the catalog has it now (None: not created yet)."""
    catalog = await services.open_iceberg()
    return await anyio.to_thread.run_sync(catalog.load, table.target, limiter=services.io)


def _report_late(
    report: RetentionReport, table: TableConfig, d: Decision, retained: dt.date | None
) -> None:
    """A partition of rows in days offloader already dropped: reported, never dropped."""
    report.late.append(
        f"partition {d.partition.id}: {d.partition.rows} rows in days offloader "
        f"already dropped from ClickHouse (before {retained}): they arrived later "
        "and are not in Iceberg; insert them again with newer watermarks, or drop "
        "the partition yourself"
    )
    log.error(
        "late rows in dropped days",
        extra={"table": table.target, "partition": d.partition.id},
    )


async def _report_hot_days(
    store: Store, table: TableConfig, hot: _Source, unit: Unit, report: RetentionReport
) -> None:
    """What the tiers hold after the pass: the first day held by both (days before it are
    Iceberg's alone) and the oldest day of a partition still in ClickHouse."""
    after = await store.get(table.target, table.source)
    report.retained_until = after.retained_until.isoformat() if after.retained_until else None
    remaining = [partition_range(p.value, unit)[0] for p in await hot.partitions() if p.rows]
    report.oldest_hot_day = min(remaining).isoformat() if remaining else None


@dataclass(frozen=True, slots=True)
class Why:
    """Why a partition is not dropped: the line, and its REFUSAL_REASONS entry."""

    text: str
    reason: str


def _dropped(d: Decision, rows: int) -> Dropped:
    return Dropped(d.partition.id, d.first.isoformat(), d.days[-1].isoformat(), rows)


async def _differs(
    services: Services,
    table: TableConfig,
    src: SourceTable,
    source: _Source,
    ice: IcebergTable,
    position: list[Any],
    d: Decision,
) -> tuple[Why | None, int, Decision]:
    """Why the tiers cannot be shown equal on the partition's days (None when they are),
    the rows compared, and the decision with the partition's parts as the method compares
    them once parked: the rows as offloader reads them (with FINAL when the table says
    so: a deduplicating table's unmerged versions are one row, as in Iceberg), counted
    against Iceberg's manifests, and row-hash sums against the recorded ones; days whose
    recorded sums are incomplete are compared by verify's checksum of every value. The
    partition must hold the same parts after the comparison as before (part names: an
    insert, a merge or a mutation makes new ones), and the replicas retention acts on
    what was compared (`_on_the_replicas`)."""
    lagging = await _replicas_ready(source)
    if lagging is not None:
        return lagging, 0, d
    first, last = d.first, d.days[-1]
    hashed = row_hash(src.columns)
    recorded = await services.watermarks.day_sums(table.target, day_number(first), day_number(last))
    hot = HotTable(src.source, src.relation, src.order, hashed)
    found = await audit_days(hot, ice, position, (first, last), recorded=recorded)
    rows = sum(c.clickhouse for c in found.days)
    now = {p.id: p.parts for p in await source.partitions()}
    if now.get(d.partition.id) != d.partition.parts:
        changed = "its parts changed while being compared (an insert or a merge); retried next pass"
        return Why(changed, "changed"), rows, d
    unsummed, checksum = [], 0
    for count in found.days:
        if count.drifted or count.iceberg is None:
            why = f"the tiers differ on {count} (repair it first: offloader repair {table.target})"
            return Why(why, "differ"), rows, d
        kept = recorded.get(day_number(count.day))
        complete = (
            kept is not None and kept.rows == count.iceberg and kept.columns_key == hashed.key
        )
        if count.clickhouse and not complete:
            unsummed.append(count.day)
        checksum += kept.checksum if kept is not None and complete else 0
    if unsummed:
        from offloader.ops.verify import verify_table

        verdict = await verify_table(
            services, table, min(unsummed), max(unsummed) + dt.timedelta(days=1)
        )
        if verdict.error or verdict.differences:
            failed = f"verify: {verdict.error or '; '.join(verdict.differences)}"
            return Why(failed, "verify"), rows, d
    moved, d = await _on_the_replicas(source, d, rows, None if unsummed else checksum)
    return moved, rows, d


async def _replicas_ready(hot: _Source) -> Why | None:
    """Why a replica retention opened may not be used now (it is behind: it would list,
    compare and move other rows than its shard's others hold), or None."""
    lagging = await hot.lagging()
    return Why("; ".join(lagging), "changed") if lagging else None


async def _on_the_replicas(
    hot: _Source, d: Decision, rows: int, checksum: int | None
) -> tuple[Why | None, Decision]:
    """What retention parks must be what was compared. The comparison read through the
    Distributed table (each shard's rows from whichever replica it landed on); retention
    lists, parks and drops on the replica it opened on each shard. So the partition's
    content there (rows and row-hash sums, summed over the shards) must equal what was
    compared (the rows counted, and the recorded sums where complete), or the partition
    waits. Returns the decision with the partition's parts as the method compares them
    once parked (`Move`: each node's content, which survives a merge in the retiring
    table)."""
    contents = await hot.contents(d.partition.id)
    here = sum(c.rows for _, c in contents)
    summed = sum(c.checksum for _, c in contents) % HASH_MODULUS
    if here != rows or (checksum is not None and summed != checksum % HASH_MODULUS):
        shown = "; ".join(f"{p or 'the table: '}{c.token}" for p, c in contents)
        compared = f"{rows} rows" + (
            f", hash sum {checksum % HASH_MODULUS}" if checksum is not None else ""
        )
        why = (
            f"the replicas retention acts on hold other rows than were compared ({compared}; "
            f"{shown}): a replica the comparison read through the Distributed table is ahead "
            "of or behind the one retention opened, or rows arrived; retried next pass"
        )
        return Why(why, "changed"), d
    return None, replace(d, partition=hot.park.compared(d.partition, contents))


async def _drop(
    hot: _Source, store: Store, target: str, d: Decision, *, snapshot_id: int | None = None
) -> str | None:
    """Park the partition (detach it, or move it to the retiring table), drop its parts
    if they are exactly those compared, else put them back. Returns why it did not
    drop, or None. The intent records the partition's days and the Iceberg snapshot it
    was compared against (`snapshot_id`)."""
    before = await hot.detached(d.partition.id)
    if hot.method == "move" and before:
        return (
            f"the retiring table {hot.table.retiring_table} holds {len(before)} parts of "
            "this partition that retention did not move there; move them back or drop them"
        )
    intent = RetentionIntent(
        d.partition.id,
        d.partition.parts,
        tuple(before),
        d.after.isoformat(),
        method=hot.method,
        first_day=d.first.isoformat(),
        snapshot_id=snapshot_id,
    )
    await store.retention_intent(target, intent)
    # Once more right before parking: a replicated MOVE drops the partition's parts on
    # every replica but moves only those the replica running it holds, so a part another
    # replica took since the comparison (a late row) would be lost from both tiers.
    lagging = await _replicas_ready(hot)
    if lagging is not None:
        await store.retention_intent(target, None)
        return lagging.text
    faults.point("retain_detach")
    await hot.detach(d.partition.id)
    faults.point("retain_park")
    return await _finish(hot, store, target, intent)


def _ours(parked: Sequence[str], intent: RetentionIntent) -> list[str]:
    """The parked parts the intent's pass parked (a multiset difference)."""
    return sorted((Counter(parked) - Counter(intent.detached_before)).elements())


async def _finish(hot: _Source, store: Store, target: str, intent: RetentionIntent) -> str | None:
    """The parked parts are the compared ones: record the point of no return (phase
    `drop` and retained_until, one transaction), then drop them. Else put them back
    (phase `detach`: nothing was dropped yet)."""
    ours = _ours(await hot.detached(intent.partition), intent)
    if ours != sorted(intent.parts):
        await hot.attach(intent.partition, ours)
        await store.retention_intent(target, None)
        return (
            "it changed between the comparison and the drop (rows inserted or parts merged): "
            "put back, retried next pass"
        )
    await store.retention_dropping(target, replace(intent, phase=RetentionIntent.DROP))
    faults.point("retain_drop")
    await hot.drop(intent.partition, ours)
    await store.retention_intent(target, None)
    return None


SnapshotProbe = Callable[[], Awaitable[int | None]]


async def _recover(
    hot: _Source,
    store: Store,
    target: str,
    intent: RetentionIntent,
    iceberg_snapshot: SnapshotProbe | None = None,
) -> str:
    """A pass stopped between its intent and its end. Once its drop began (phase `drop`)
    it only moves forward: the compared parts still parked are dropped, none is ever
    put back (the day is recorded as Iceberg's alone). Before that: finish the drop if
    the parked parts are the ones compared and Iceberg is still at the snapshot they
    were compared against (`iceberg_snapshot` tells its current one; without it, it is
    unknown), else put them back (the pass then compares the partition again, with
    Iceberg as it is now)."""
    _same_method(hot, target, intent)
    lagging = await _replicas_ready(hot)
    if lagging is not None:
        # A replica behind on the parked parts (or on the retiring table) sees fewer of
        # them than were parked: recovering there could clear the intent and strand the
        # rest. The intent stays; a later pass recovers.
        log.error(
            "retention recovery waits for a replica",
            extra={"table": target, "partition": intent.partition, "reason": lagging.text},
        )
        return f"recovery of partition {intent.partition} waits: {lagging.text}"
    ours = _ours(await hot.detached(intent.partition), intent)
    if intent.phase == RetentionIntent.DROP:
        return await _finish_dropping(hot, store, target, intent, ours)
    if not ours:
        await store.retention_intent(target, None)
        return f"a stopped pass left partition {intent.partition} as it was"
    moved = None
    if sorted(ours) == sorted(intent.parts):
        moved = await _iceberg_moved(iceberg_snapshot, intent)
    if moved is not None:
        return await _put_back(hot, store, target, intent, ours, moved)
    why = await _finish(hot, store, target, intent)
    if why is None:
        return (
            f"finished dropping partition {intent.partition}, left {_parked(hot)} by a stopped pass"
        )
    return f"put partition {intent.partition} back, left {_parked(hot)} by a stopped pass"


def _same_method(hot: _Source, target: str, intent: RetentionIntent) -> None:
    """A stopped pass's parts are recovered by the method that parked them only: raises
    SourceSchemaError when the table's retiring_table now asks for the other one."""
    if intent.method != hot.method:
        raise SourceSchemaError(
            f"{target}: a stopped retention pass left partition {intent.partition} parked by "
            f"method {intent.method!r}, but retiring_table now asks for {hot.method!r}; "
            "restore the table's retiring_table setting until a pass finishes it",
            reason="config",
        )


async def _finish_dropping(
    hot: _Source, store: Store, target: str, intent: RetentionIntent, ours: Sequence[str]
) -> str:
    """Past the point of no return: whatever of the partition is still parked (`ours`)
    goes, whatever its parts are called by now (a retiring table may have merged them)."""
    left = hot.park.left(ours, intent.parts)
    await hot.drop(intent.partition, left)
    await store.retention_intent(target, None)
    of = "parts" if hot.method == "detach" else "nodes' parts"
    return (
        f"finished dropping partition {intent.partition} ({len(left)} of its "
        f"{len(intent.parts)} {of} left {_parked(hot)} by a stopped pass)"
    )


async def _put_back(
    hot: _Source,
    store: Store,
    target: str,
    intent: RetentionIntent,
    ours: Sequence[str],
    moved: str,
) -> str:
    """Iceberg is not known to be what the parked parts were compared against (`moved`
    says why): they go back, and the pass compares the partition again."""
    await hot.attach(intent.partition, ours)
    await store.retention_intent(target, None)
    log.warning(
        "retention put a parked partition back: Iceberg moved since it was compared",
        extra={"table": target, "partition": intent.partition, "reason": moved},
    )
    return (
        f"put partition {intent.partition} back, left {_parked(hot)} by a stopped pass: "
        f"{moved}; compared again"
    )


def _snapshot_probe(services: Services, table: TableConfig) -> SnapshotProbe:
    """The Iceberg table's current snapshot id, when asked (None: no snapshot)."""

    async def current() -> int | None:
        ice = await _load_iceberg(services, table)
        return None if ice is None else ice.snapshot_id

    return current


async def _iceberg_moved(probe: SnapshotProbe | None, intent: RetentionIntent) -> str | None:
    """Why the Iceberg table is not known to be the one the intent's partition was
    compared against (its current snapshot is another; the intent, from 0.3.0, records
    none; or it could not be looked at), or None."""
    if probe is None:
        return "Iceberg's current snapshot was not looked at"
    now = await probe()
    if intent.snapshot_id is None:
        return f"the intent records no Iceberg snapshot (Iceberg is now at {now})"
    if now != intent.snapshot_id:
        return f"Iceberg moved from snapshot {intent.snapshot_id} to {now} since it was compared"
    return None


def _parked(hot: _Source) -> str:
    return hot.park.parked_where
