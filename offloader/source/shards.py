"""A `Distributed` source read shard by shard: each shard's local table on one replica of
it, every shard's rows of the same keyset range in one page (a `ShardRound`).

Read through the Distributed table, every keyset page makes every shard sort and send
up to a page of rows, and the initiator keeps one page of them: the work per page
grows with the shard count. Here a round after position P does, on every shard at
once (its own session, on the first replica `replicas_of` lists that answers and is
in sync for a Replicated local table, `out_of_sync`):

1. the probe: the position Q_s of the shard's `limit`-th row after P (reading the
   watermark and key columns of one page only, in the table's order);
2. Q = the least Q_s: no shard has an unread row at or before Q past its page, so
   every shard's rows of (P, Q] are at most a page (and the ties of Q's last row);
3. every shard's rows of (P, Q] read as a keyset scan of its local table (its
   transport's pages, with their own day cuts and sizes), all kept. Each shard proves
   it read to the round's end: its scan reads on to an empty page (a short page proves
   nothing), and the shard holding Q must end on it.

The round is one page of the pipeline, at position Q: the writer stores all of its
pages before the position can be committed, so an append holds the rows of all shards
up to one global position. When no shard has `limit` rows after P, the round reads
each shard to the scan's high-water mark and ends the scan; its position is the
greatest last row (ordered by ClickHouse, `ordered`). A shard that fails fails the
round: nothing of it is committed, and the table's error names the shard. So does a
shard read that ended by a cancellation nothing asked for (`each`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from offloader.config import ClickHouseConfig, TableConfig
from offloader.errors import SourceUnavailable, TableError, single_error
from offloader.report import stray_cancellation
from offloader.source import Page, Pager, Source, keyset_pages, open_source, transport_of
from offloader.sql.scan import Scan, positions_order_query, probe_relation
from offloader.sql.system import (
    REPLICA_STATE,
    cluster_query,
    replica_state_query,
    server_ports_query,
    sync_replica_command,
)
from offloader.sql.text import read_from

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.plan import SourcePlan
    from offloader.sql.text import RowHash
    from offloader.state import DaySum

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a cluster, as system.clusters lists it (sql.system.cluster_query)."""

    shard: int
    replica: int
    host: str
    address: str
    tcp_port: int
    local: bool  # the node the session asking is connected to


async def cluster_of(source: Source, cluster: str) -> list[ClusterNode]:
    """Every node of `cluster`, in shard and replica order, as `source`'s server knows it
    (a cluster it does not know is a configuration error naming the server)."""
    rows = await source.rows(cluster_query(cluster))
    if not rows:
        raise SourceUnavailable(
            f"{source.label}: cluster {cluster!r} of the Distributed source is not in "
            f"system.clusters of {source.endpoint}",
            reason="config",
        )
    return [
        ClusterNode(int(shard), int(replica), str(host), str(address), int(port), bool(local))
        for shard, replica, host, address, port, local in rows
    ]


@dataclass(frozen=True, slots=True)
class Replica:
    """One node of a shard, as system.clusters names it, and its HTTP port."""

    shard: int
    replica: int
    host: str
    tcp_port: int
    http_port: int

    @property
    def node(self) -> str:
        return f"{self.host}:{self.tcp_port}"


async def replicas_of(
    source: Source, cluster: str, cfg: ClickHouseConfig, http: bool
) -> list[list[Replica]]:
    """Each shard's replicas, in replica order. With `http`, each node's HTTP port:
    [clickhouse.http_ports] for its "host:tcp_port", else the one the node reports
    (getServerPort('http_port'), asked of every replica through the cluster, matched by
    shard and native port); a node that does not answer, or whose port is ambiguous,
    keeps [clickhouse] http_port."""
    nodes = await cluster_of(source, cluster)
    reported: dict[tuple[int, int], set[int]] = {}
    by_port: dict[int, set[int]] = {}
    if http:
        for shard, tcp, port in await source.rows(server_ports_query(cluster)):
            reported.setdefault((int(shard), int(tcp)), set()).add(int(port))
            by_port.setdefault(int(tcp), set()).add(int(port))
    overrides = dict(cfg.http_ports)
    shards: dict[int, list[Replica]] = {}
    for n in nodes:
        ports = reported.get((n.shard, n.tcp_port)) or by_port.get(n.tcp_port, set())
        name = f"{n.host}:{n.tcp_port}"
        port = overrides.get(name, next(iter(ports)) if len(ports) == 1 else cfg.http_port)
        shards.setdefault(n.shard, []).append(Replica(n.shard, n.replica, n.host, n.tcp_port, port))
    return [shards[n] for n in sorted(shards)]


def out_of_sync(rows: Sequence[Sequence[Any]]) -> str | None:
    """Why a replica must not be read, from its replica_state_query rows; None when it may
    be: the table is not Replicated (no row), or the replica holds every part its
    replication log names (rows it has not fetched would be read later, as late rows)."""
    if not rows:
        return None
    state = dict(zip(REPLICA_STATE, rows[0], strict=True))
    why = []
    if int(state["is_readonly"]):
        why.append("it is read-only (no ZooKeeper session or metadata)")
    if int(state["is_session_expired"]):
        why.append("its ZooKeeper session expired")
    if int(state["inserts_in_queue"]):
        why.append(f"{state['inserts_in_queue']} inserted parts not fetched yet")
    pointer, top = int(state["log_pointer"]), int(state["log_max_index"])
    if top and pointer <= top:
        why.append(f"{top - pointer + 1} replication log entries not queued yet")
    if int(state["absolute_delay"]):
        why.append(f"{state['absolute_delay']} s behind")
    if not why:
        return None
    return ", ".join(why) + f" (queue_size {state['queue_size']})"


async def open_replica(
    stack: AsyncExitStack,
    cfg: ClickHouseConfig,
    table: TableConfig,
    replicas: Sequence[Replica],
    local: tuple[str, str],
) -> Source:
    """A session of the first of the shard's replicas that answers and is in sync for the
    `local` (database, table): out_of_sync, after SYSTEM SYNC REPLICA where granted. Its
    server, user and password from [clickhouse]. SourceUnavailable naming every replica
    tried, and why, when none is."""
    failures = []
    for r in replicas:
        node = replace(cfg, host=r.host, port=r.tcp_port, http_port=r.http_port)
        label = f"{table.target} (shard {r.shard}, replica {r.replica} {r.node})"
        inner = AsyncExitStack()
        try:
            s = await inner.enter_async_context(open_source(node, label, transport_of(cfg, table)))
            why = await _lagging(s, *local)
        except TableError as exc:
            await inner.aclose()
            failures.append(str(exc))
            continue
        if why is not None:
            await inner.aclose()
            failures.append(f"{label}: not in sync: {why}")
            continue
        stack.push_async_exit(inner)
        return s
    raise SourceUnavailable(
        f"{table.target}: no replica of shard {replicas[0].shard} answers in sync; the run "
        "reads nothing of the shard until one does (check its replication queue, or grant "
        "SYSTEM SYNC REPLICA so offloader can wait for it): " + "; ".join(failures)
    )


async def _lagging(s: Source, database: str, table: str) -> str | None:
    """Why the replica of session `s` is not in sync for the table (None: it is), after
    asking it to catch up when it is not."""
    why = out_of_sync(await s.rows(replica_state_query(database, table)))
    if why is None:
        return None
    try:
        await s.command(sync_replica_command(database, table))
    except TableError as exc:
        return f"{why}; SYSTEM SYNC REPLICA failed: {exc}"
    return out_of_sync(await s.rows(replica_state_query(database, table)))


@dataclass(frozen=True, slots=True)
class Shard:
    """A shard's session and what it reads: its local table (with FINAL when
    configured), a pager for its pages and one for its probes."""

    number: int
    source: Source
    relation: str
    pager: Pager
    prober: Pager


@dataclass(frozen=True, slots=True)
class ShardRound:
    """One round: every shard's pages of one keyset range, as one page at `position`."""

    pages: tuple[Page, ...]
    rows: int
    position: list[Any]
    cut: bool = False
    # Every shard was read to the scan's high-water mark (no shard had a page more):
    # the scan ends with this round.
    last: bool = False

    def to_batch(self) -> pa.RecordBatch:
        raise NotImplementedError("a round is written page by page (ShardRound.pages)")

    def checksums(self) -> pa.Array | None:
        raise NotImplementedError("a round is written page by page (ShardRound.pages)")

    def encoded(self) -> bytes | None:
        raise NotImplementedError("a round is written page by page (ShardRound.pages)")

    async def summed(self) -> dict[int, DaySum] | None:
        raise NotImplementedError("a round is written page by page (ShardRound.pages)")


async def each(
    fn: Callable[[int, T], Coroutine[Any, Any, None]],
    items: Sequence[T],
    name: Callable[[T], str],
) -> None:
    """`fn(i, item)` for every item at once; the first to fail cancels the others and
    its error is raised as it is (a shard's, naming it), not in a group. Returns only
    when every call returned: a call that ended by a cancellation nothing asked for
    (anyio's task group takes it for its own and exits normally) fails it, naming the
    item (`name`)."""
    done = [False] * len(items)

    async def run(i: int, item: T) -> None:
        try:
            await fn(i, item)
        except anyio.get_cancelled_exc_class() as exc:
            if stray_cancellation(exc):
                raise _unfinished(name(item), "was cancelled by nothing offloader asked") from exc
            raise
        done[i] = True

    try:
        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(run, i, item)
    except BaseExceptionGroup as group:
        raise single_error(group) from None
    for i, finished in enumerate(done):
        if not finished:
            raise _unfinished(name(items[i]), "ended without finishing")


def _unfinished(what: str, how: str) -> SourceUnavailable:
    return SourceUnavailable(
        f"{what}: its part of the round {how} (a driver's stale cancellation?); the round "
        "fails and nothing of it is committed; the next run reads it again",
        reason="clickhouse",
    )


def parts_of(page: Page) -> tuple[Page, ...]:
    """The pages a page read stands for: a round's every shard page, else itself."""
    return page.pages if isinstance(page, ShardRound) else (page,)


async def ordered(source: Source, plan: SourcePlan, positions: Sequence[list[Any]]) -> list[int]:
    """The indexes of `positions` in keyset order, as ClickHouse orders the values (not
    as Python would: UUIDs, Decimals, 128-bit integers)."""
    if len(positions) < 2:
        return list(range(len(positions)))
    rows = await source.rows(positions_order_query(plan.order, positions))
    return [int(r[0]) for r in rows]


class ShardedPager:
    """Reads rounds of every shard (the module's docstring) as a Pager of the
    Distributed table's scans."""

    def __init__(
        self,
        target: str,
        plan: SourcePlan,
        shards: Sequence[Shard],
        order: Callable[[Sequence[list[Any]]], Awaitable[list[int]]],
    ) -> None:
        self._target = target
        self._plan = plan
        self._shards = tuple(shards)
        self._order = order  # `ordered`, on one shard's session
        self.read_ahead = shards[0].pager.read_ahead
        self.encodes = shards[0].pager.encodes

    def _name(self, shard: Shard) -> str:
        return f"{self._target} shard {shard.number}"

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> ShardRound:
        if scan.since is not None or scan.before is not None or scan.through is not None:
            raise ValueError("a sharded read is a plain scan (repair reads the Distributed table)")
        probes = await self._probe(scan, after, limit)
        full = [i for i, p in enumerate(probes) if p]
        through: list[Any] | None = None
        if full:
            through = probes[full[(await self._order([probes[i] for i in full]))[0]]]
        pages = await self._read_to(scan, after, limit, through)
        if through is not None:
            # The shard whose probe gave the round's end holds that very row: its read
            # must end on it (the others' ends are proven by their empty pages).
            for i, p in enumerate(probes):
                if p == through and (not pages[i] or pages[i][-1].position != through):
                    got = pages[i][-1].position if pages[i] else "no row"
                    raise SourceUnavailable(
                        f"{self._name(self._shards[i])}: its read of the round after {after} "
                        f"ended at {got}, short of the round's end {through}, a row it "
                        "holds; the round fails and nothing of it is committed",
                        reason="clickhouse",
                    )
            position = through
        else:
            lasts = [ps[-1].position for ps in pages if ps]
            position = lasts[(await self._order(lasts))[-1]] if lasts else []
        found = tuple(p for shard_pages in pages for p in shard_pages)
        rows = sum(p.rows for p in found)
        log.debug(
            "shard round",
            extra={
                "table": self._target,
                "rows": rows,
                "shard_rows": [sum(p.rows for p in ps) for ps in pages],
            },
        )
        return ShardRound(found, rows, list(position), last=through is None)

    async def _probe(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> list[list[Any]]:
        """Each shard's position of its `limit`-th row after `after` ([]: it has fewer)."""
        plan = self._plan
        probes: list[list[Any]] = [[] for _ in self._shards]

        async def probe(i: int, shard: Shard) -> None:
            columns = [c.name for c in plan.columns]
            rel = probe_relation(shard.relation, plan.order, columns, scan.upto, after, limit - 1)
            page = await shard.prober.read(Scan(rel, scan.upto), after, 1)
            probes[i] = list(page.position)

        await each(probe, self._shards, self._name)
        return probes

    async def _read_to(
        self, scan: Scan, after: Sequence[Any] | None, limit: int, through: list[Any] | None
    ) -> list[list[Page]]:
        """Every shard's pages after `after` up to `through` (None: to the scan's end),
        each read on to an empty page: a short page proves nothing (scan_complete)."""
        pages: list[list[Page]] = [[] for _ in self._shards]

        async def read(i: int, shard: Shard) -> None:
            own = Scan(shard.relation, scan.upto, through=through)
            async for page in keyset_pages(
                shard.pager, own, after, limit, target=self._name(shard)
            ):
                pages[i].append(page)

        await each(read, self._shards, self._name)
        return pages


async def open_shards(
    stack: AsyncExitStack,
    cfg: ClickHouseConfig,
    table: TableConfig,
    source: Source,
    distributed: tuple[str, str, str],
) -> list[tuple[int, Source]]:
    """A session on one replica of every shard of the Distributed source's cluster (its
    name, and the database and table it reads on each shard), in sync for that table
    (shard number, session), opened at once on `stack` (closed with the table)."""
    cluster, database, local = distributed
    shards = await replicas_of(source, cluster, cfg, http=transport_of(cfg, table) != "native")
    opened: list[Source | None] = [None] * len(shards)

    async def connect(i: int, replicas: list[Replica]) -> None:
        opened[i] = await open_replica(stack, cfg, table, replicas, (database, local))

    await each(connect, shards, lambda replicas: f"{table.target} shard {replicas[0].shard}")
    out = []
    for replicas, s in zip(shards, opened, strict=True):
        assert s is not None
        out.append((replicas[0].shard, s))
    return out


def sharded_pager(
    table: TableConfig,
    plan: SourcePlan,
    shards: Sequence[tuple[int, Source]],
    cluster: tuple[str, str, str],
    row_hash: RowHash | None,
) -> ShardedPager:
    """The pager of a Distributed source over `cluster` (its name, and the database and
    table it reads on each shard), on the shards' sessions."""
    name, database, local = cluster
    relation = read_from(database, local, table.final)
    members = [
        Shard(number, s, relation, s.pager(table, plan, row_hash), s.pager(table, plan))
        for number, s in shards
    ]
    log.info(
        "reading shard by shard",
        extra={
            "table": table.target,
            "cluster": name,
            "shards": [s.source.endpoint for s in members],
        },
    )
    return ShardedPager(table.target, plan, members, partial(ordered, members[0].source, plan))


__all__ = [
    "ClusterNode",
    "Replica",
    "ShardRound",
    "ShardedPager",
    "cluster_of",
    "open_shards",
    "ordered",
    "out_of_sync",
    "parts_of",
    "replicas_of",
    "sharded_pager",
]
