"""The source: ClickHouse, read through one of three transports behind one interface.

    Source  — a session: small typed queries (introspection, high-water mark, audit)
              and `pager()`, the table's page reader
    Pager   — reads one keyset page of a `Scan` after a position
    Page    — its row count, the encoded position of its last row, and `to_batch()`
              (blocking: run it in a worker thread), an Arrow batch of the Iceberg schema,
              or `encoded()`, the Parquet file ClickHouse wrote in that schema

`native` (source/native.py, asynch over TCP), `arrow` (source/arrow.py, ArrowStream
over HTTP) and `parquet` (source/parquet.py, Parquet over the same HTTP session)
implement it; each transport's wire forms and conversion sit next to its reader.
The pipeline, repair and the benchmarks use only this module; the tests use a fake
source (tests/fakes.py) that implements the same three protocols.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from offloader.config import ClickHouseConfig, TableConfig, Transport
from offloader.errors import SourceSchemaError, SourceUnavailable, TableError
from offloader.plan import SourcePlan, plan_order, plan_source
from offloader.sql.scan import Scan, invalid_utf8_query
from offloader.sql.system import (
    columns_query,
    create_statement_query,
    distributed_over,
    fingerprint_query,
    fingerprints_query,
    parts_fingerprint,
    survey_columns_query,
    table_count_query,
)
from offloader.sql.text import RowHash, read_from

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.state import DaySum

__all__ = [
    "Page",
    "Pager",
    "Source",
    "SourceTable",
    "Survey",
    "Transport",
    "keyset_pages",
    "open_source",
    "open_table",
    "scan_complete",
    "survey",
    "table_columns",
    "table_ttl",
    "transport_of",
]


# How long closing a session may take once a run is cancelled (shielded): a dead
# server must not hold up a table's timeout or a shutdown.
CLOSE_SECONDS = 2.0


class Page(Protocol):
    """One page as a transport read it."""

    @property
    def rows(self) -> int: ...

    @property
    def position(self) -> list[Any]:
        """The encoded (watermark, keys...) of the last row ([] for an empty page)."""
        ...

    def to_batch(self) -> pa.RecordBatch:
        """The page as an Arrow batch of the Iceberg schema (CPU-bound: run it in a
        worker thread). Raises DataError naming the column of a value it cannot keep."""
        ...

    def checksums(self) -> pa.Array | None:
        """Each row's hash (uint64, sql.RowHash) when the pager was asked for it."""
        ...

    @property
    def cut(self) -> bool:
        """Whether the page ended at a boundary of its own (a UTC day) rather than at
        its row limit or the scan's end (the parquet transport sizes its next page by it)."""
        ...

    @property
    def last(self) -> bool:
        """Whether the page proves that its scan has no row after it (a shard round that
        read every shard to its end). A page's own row count never does: a short page
        is followed by another read (scan_complete)."""
        ...

    def encoded(self) -> bytes | None:
        """The page as a Parquet file of the Iceberg schema, when ClickHouse encoded it
        (the parquet transport: stored as a data file as it is); else None."""
        ...

    async def summed(self) -> dict[int, DaySum] | None:
        """The page's rows and row-hash sums per UTC day of the watermark, when the
        transport has ClickHouse compute them (a page without per-row hashes; awaited
        by the converter, so it overlaps the next page's read); None: computed from
        to_batch() and checksums()."""
        ...


class Pager(Protocol):
    """Reads keyset pages of one table."""

    # Pages the fetch may read ahead of the one in hand: pages small in memory (the
    # Parquet files ClickHouse encodes) are read on while Iceberg opens or a commit
    # runs; decoded pages (0) are not.
    read_ahead: int
    # Its pages are Parquet files ClickHouse encoded (Page.encoded), stored as they are.
    encodes: bool

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> Page:
        """The rows of `scan` after `after`, at most `limit` plus the ties of the last."""
        ...


class Source(Protocol):
    """A session of a table's transport."""

    label: str
    endpoint: str

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        """A small query's rows, typed (integers as int)."""
        ...

    async def scalar(self, query: str) -> Any: ...

    async def command(self, query: str) -> None:
        """A statement without a result (DDL: the view over both tiers)."""
        ...

    def pager(self, table: TableConfig, plan: SourcePlan, row_hash: RowHash | None = None) -> Pager:
        """The table's page reader; with `row_hash`, pages also carry each row's hash
        (Page.checksums) or their sums per day (Page.summed)."""
        ...


def transport_of(cfg: ClickHouseConfig, table: TableConfig) -> Transport:
    return table.transport or cfg.transport


@asynccontextmanager
async def open_source(
    cfg: ClickHouseConfig, label: str, transport: Transport
) -> AsyncIterator[Source]:
    """A session of `transport` (its driver is imported here, on first use)."""
    if transport == "parquet":
        from offloader.source import arrow, parquet

        async with arrow.session(cfg, label, parquet.ParquetHttpSession) as files:
            yield files
    elif transport == "arrow":
        from offloader.source import arrow

        async with arrow.session(cfg, label) as http:
            yield http
    else:
        from offloader.source import native

        async with native.session(cfg, label) as tcp:
            yield tcp


class SourceTable:
    """A table's source, opened: its session, its columns, the watermark and key columns
    (`order`, checked), the relation pages read (`db`.`table`, with FINAL when
    configured: sql.text.read_from of the database and table) and, on first use, the plan of
    every column (which needs pyarrow; an idle run never asks for it)."""

    def __init__(
        self,
        source: Source,
        table: TableConfig,
        columns: list[tuple[str, str]],
        database: str,
        cluster: tuple[str, str, str] | None = None,
        *,
        cfg: ClickHouseConfig | None = None,
        stack: AsyncExitStack | None = None,
    ) -> None:
        self.source = source
        self.table = table
        self.columns = columns
        self.relation = read_from(database, table.source_table, table.final)
        self.database = database
        # A Distributed source's cluster, and the database and table it reads on each
        # shard (sql.system.distributed_over), else None.
        self.cluster = cluster[0] if cluster is not None else None
        self._distributed = cluster
        self._cfg = cfg
        self._stack = stack
        self._shards: list[tuple[int, Source]] | None = None
        # The subquery of the source's parts fingerprint (sql.system.fingerprints_query, the
        # survey's too, so the two agree): a Distributed table's are its local table's
        # on every shard.
        self._parts_of = (
            (cluster[1], cluster[2], cluster[0])
            if cluster is not None
            else (database, table.source_table, None)
        )
        self.parts = parts_fingerprint(*self._parts_of)
        self.order, self.order_index = plan_order(table, columns)
        self._plan: SourcePlan | None = None
        # The parts fingerprint the cycle's survey read, taken by the first
        # `fingerprint()` (later ones ask again: the run may have changed what it saw).
        self.surveyed_parts: str | None = None

    async def fingerprint(self) -> str:
        """The source's parts fingerprint (sql.system.parts_fingerprint)."""
        if self.surveyed_parts is not None:
            found, self.surveyed_parts = self.surveyed_parts, None
            return found
        return str(await self.source.scalar(fingerprint_query(*self._parts_of)))

    @property
    def plan(self) -> SourcePlan:
        if self._plan is None:
            self._plan = plan_source(self.table, self.columns)
        return self._plan

    @property
    def by_shard(self) -> bool:
        """Whether pages are read shard by shard (a Distributed source, `distributed =
        "shards"`) rather than through the relation."""
        return self._distributed is not None and self.table.distributed == "shards"

    @property
    def distributed(self) -> tuple[str, str, str] | None:
        """A Distributed source's cluster, and the database and table it reads on each
        shard; None for any other table."""
        return self._distributed

    async def shards(self) -> list[tuple[int, Source]]:
        """A Distributed source's shards: a session on one replica of each, in sync when
        the local table is Replicated (shard number, session), opened on first use and
        closed with the table."""
        assert self._distributed is not None, f"{self.table.source} is not Distributed"
        assert self._cfg is not None and self._stack is not None, "open_table() opens shards"
        if self._shards is None:
            from offloader.source import shards

            self._shards = await shards.open_shards(
                self._stack, self._cfg, self.table, self.source, self._distributed
            )
        return self._shards

    async def pager(self, row_hash: RowHash | None = None) -> Pager:
        """The table's page reader: a Distributed source's reads every shard's local
        table (source/shards.py), any other the relation through the session."""
        if not self.by_shard:
            return self.source.pager(self.table, self.plan, row_hash)
        from offloader.source import shards

        assert self._distributed is not None
        return shards.sharded_pager(
            self.table, self.plan, await self.shards(), self._distributed, row_hash
        )


@dataclass(frozen=True, slots=True)
class Survey:
    """What every table's run of a cycle would first ask ClickHouse, asked once for all
    of them (`survey`): each source's engine clause and columns, and each non-Distributed
    source's parts fingerprint. A table that is not in it asks for itself."""

    columns: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]]
    parts: dict[tuple[str, str], str]

    @staticmethod
    def empty() -> Survey:
        return Survey({}, {})


async def survey(cfg: ClickHouseConfig, tables: Sequence[TableConfig]) -> Survey:
    """Two queries for every table of a cycle (sql.system.survey_columns_query and
    fingerprints_query), on one session of [clickhouse] transport."""
    pairs = sorted({(t.source_database or cfg.database, t.source_table) for t in tables})
    if not pairs:
        return Survey.empty()
    columns: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]] = {}
    async with open_source(cfg, "survey", cfg.transport) as s:
        for db, table, name, type_, engine in await s.rows(survey_columns_query(pairs)):
            key = (str(db), str(table))
            columns.setdefault(key, (str(engine), []))[1].append((str(name), str(type_)))
        local = [p for p in pairs if p in columns and distributed_over(columns[p][0]) is None]
        parts = {
            (str(db), str(table)): str(hashed)
            for db, table, hashed in (await s.rows(fingerprints_query(local)) if local else [])
        }
    # A table with no parts has the fingerprint '' (sql.system.parts_fingerprint).
    return Survey(columns, {p: parts.get(p, "") for p in local})


@asynccontextmanager
async def open_table(
    cfg: ClickHouseConfig, table: TableConfig, surveyed: Survey | None = None
) -> AsyncIterator[SourceTable]:
    """Open the table's transport and read its columns (SourceSchemaError if the
    watermark or a key is missing or unfit; a column that cannot be stored exactly
    fails when the plan is first used). With `surveyed`, what it holds of the table is
    taken from it instead of asked again (a session connects on its first query)."""
    db = table.source_database or cfg.database
    key = (db, table.source_table)
    async with (
        open_source(cfg, table.target, transport_of(cfg, table)) as s,
        AsyncExitStack() as stack,
    ):
        if surveyed is not None and key in surveyed.columns:
            engine, columns = surveyed.columns[key]
        else:
            engine, columns = await _engine_and_columns(s, db, table.source_table)
        src = SourceTable(s, table, columns, db, distributed_over(engine), cfg=cfg, stack=stack)
        if surveyed is not None:
            src.surveyed_parts = surveyed.parts.get(key)
        yield src


async def _engine_and_columns(s: Source, db: str, table: str) -> tuple[str, list[tuple[str, str]]]:
    """The table's engine clause (system.tables' engine_full) and its columns, in one
    query."""
    rows = await s.rows(columns_query(db, table, engine=True))
    if not rows:
        return "", await table_columns(s, db, table)  # raises, naming what is wrong
    return str(rows[0][2]), [(str(name), str(t)) for name, t, _ in rows]


def scan_complete(page: Page, read: int, waiting: int | None = None) -> bool:
    """Whether no page follows `page`, `read` rows into its scan, as proven: the page says
    so (`Page.last`), or the scan has read the `waiting` rows counted before it began
    (rows that came since are past its position, for the next scan). A short page proves
    nothing (a server may cut a result short without an error): the scan reads on, and
    an empty page ends it."""
    return page.last or (waiting is not None and read >= waiting)


async def keyset_pages(
    pager: Pager,
    scan: Scan,
    after: Sequence[Any] | None,
    limit: int,
    waiting: int | None = None,
    *,
    target: str = "",
) -> AsyncGenerator[Page, None]:
    """The pages of a keyset scan, in order: each next page starts after the previous
    page's last row. Ends after an empty page or a page proven last (scan_complete). A page
    that does not move the position forward is an error (never a loop that re-reads,
    or commits twice, the same rows)."""
    read = 0
    while True:
        page = await pager.read(scan, after, limit)
        if page.rows == 0:
            return
        if after is not None:
            check_advance(target or scan.relation, list(after), page.position)
        read += page.rows
        yield page
        if scan_complete(page, read, waiting):
            return
        after = page.position


def check_advance(target: str, after: list[Any], position: list[Any]) -> None:
    """Raise if a page ending at `position` did not move past `after`: the same
    position, or an earlier watermark (encoded watermarks — fixed-width time text,
    dates, integers, ticks — order as their values do; keys are compared for equality
    only). Every page's rows must be past the position its query was given."""
    if not position:
        return
    same = list(position) == list(after)
    wm, was = position[0], after[0]
    back = type(wm) is type(was) and isinstance(wm, int | str) and wm < was
    if same or back:
        raise SourceUnavailable(
            f"{target}: a page of ClickHouse rows after position {after} ended at {position}, "
            f"which is {'the same position' if same else 'before it'}: ClickHouse returned "
            "rows that are not past the position it was given (a filter bug?); nothing of "
            "the page is committed and the table stops here instead of reading the same "
            "rows again",
            reason="clickhouse",
        )


async def table_columns(s: Source, database: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of every column in table order; SourceSchemaError if there are none."""
    rows = await s.rows(columns_query(database, table))
    if not rows:
        exists = await s.scalar(table_count_query(database, table))
        raise SourceSchemaError(
            f"{s.label}: source table {database}.{table} "
            + ("has no columns" if exists else "does not exist in ClickHouse")
            + f" ({s.endpoint}); check tables.source in the config",
            reason="missing_table",
        )
    return [(str(name), str(type_)) for name, type_ in rows]


async def table_ttl(s: Source, database: str, table: str) -> str | None:
    """The table's TTL clause, if any (from its CREATE statement)."""
    create = await s.scalar(create_statement_query(database, table))
    return ttl_clause(str(create or ""))


def ttl_clause(create: str) -> str | None:
    """The TTL clause of a CREATE statement (system.tables.create_table_query), if any."""
    if " TTL " not in create:
        return None
    return create.split(" TTL ", 1)[1].split(" SETTINGS ", 1)[0].strip()


async def invalid_utf8_columns(s: Source, plan: SourcePlan, relation: str) -> str:
    """Name the String columns holding invalid UTF-8, with one example, for an error."""
    found = []
    for col in plan.columns:
        if col.ch_type.unwrap().name not in ("String", "FixedString"):
            continue
        try:
            bad = await s.rows(invalid_utf8_query(relation, col.name))
        except TableError:
            return ""
        if bad and bad[0][1]:
            found.append(f"column {col.name!r}: {bad[0][1]} values, e.g. hex {bad[0][0][:40]}")
    return ("; " + "; ".join(found)) if found else ""
