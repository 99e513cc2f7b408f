"""One table over both tiers: the ClickHouse VIEW offloader keeps at each table's
committed position.

    SELECT <source columns> FROM hot WHERE (wm, keys) > <committed position>
    UNION ALL
    SELECT <Iceberg columns cast back to the source's types>
    FROM icebergLocal|icebergS3(<table>, SETTINGS iceberg_metadata_file_path = <the metadata
                                        file of the commit that reached that position>)

The cold side reads the pinned metadata file, whose snapshot holds exactly the rows at
or before the position, and the hot side the rows after it (with the cursor's own
tie-break on the keys), so every row is returned once. The view is replaced (`CREATE
OR REPLACE VIEW`, atomic) after every commit that moves the position or rewrites the
table; a crash before the replacement leaves the previous (position, snapshot) pair,
which is just as consistent, and the next run replaces it.

The pure part (`cold_reader`, `column_pair`, `view_ddl`) decides the SQL from the
source's columns and what ClickHouse's Iceberg reader reports of the cold table (the
text itself is built by offloader.sql.view); `keep` runs it through the table's source
session and records the result in the state store.
Column types are the source's, name for name (the type map run backwards); the families
with no exact way back (Variant, Dynamic, Geometry) read ClickHouse's text of the value
from both tiers (README "One table over both tiers").
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from offloader import cursor, faults
from offloader.config import TableConfig, ViewsConfig, ViewSecurity
from offloader.errors import OffloaderError, TableError
from offloader.source.shards import cluster_of
from offloader.sql.text import quote_ident
from offloader.sql.view import (
    BACK_LEAVES,
    EMPTY_ARRAY,
    NULL,
    VIEW_FORMAT,
    cast_as,
    cast_default,
    cold_select,
    column_defaults_query,
    create_view,
    database_exists_query,
    describe_query,
    drop_view,
    hot_after,
    hot_select,
    iceberg_local,
    iceberg_s3,
    named_collection_exists_query,
    or_default,
    type_default,
    union_all,
    value_query,
    view_on_nodes_query,
)
from offloader.state import Committed, Store, ViewState
from offloader.types import NULL_HOLDERS, ChType, parse_type
from offloader.wire import SHARED_LEAVES, TEXT_LEAVES, iceberg_type, rewrite_leaves

if TYPE_CHECKING:
    from offloader.config import ClickHouseConfig
    from offloader.iceberg import IcebergTable
    from offloader.source import Source, SourceTable
    from offloader.tiers.services import Services

log = logging.getLogger(__name__)

__all__ = [
    "ColdSide",
    "Upkeep",
    "ViewError",
    "ViewSpec",
    "after_rewrite",
    "cold_reader",
    "column_pair",
    "drop",
    "exact",
    "keep",
    "nodes_of",
    "on_every_node",
    "probe_everywhere",
    "spec_of",
    "upkeep",
    "view_ddl",
]


class ViewError(TableError):
    """The view over both tiers could not be built or replaced. Nothing committed is
    affected; the view keeps its previous (consistent) definition and the next run
    tries again."""

    reason = "view"


@dataclass(frozen=True, slots=True)
class ColdSide:
    """The view's pin: one Iceberg state taken whole — the metadata file the cold side
    reads and the commit marker of that file's snapshot (its seq and position). The hot
    side reads the rows after that position, so the two sides always belong to one
    commit, whatever PostgreSQL says: after a kill between the Iceberg and PostgreSQL
    commits, PostgreSQL's position is older than the newest snapshot's, and pairing
    them would return the killed run's rows twice."""

    location: str
    metadata: str
    seq: int
    position: tuple[Any, ...]
    snapshot_id: int | None = None

    @classmethod
    def of(cls, ice: IcebergTable) -> ColdSide | None:
        """The pin of the Iceberg table as it is now (after its last commit), or None
        while it holds no offloader commit."""
        mark = ice.latest_mark()
        if mark is None:
            return None
        return cls(
            ice.location, ice.metadata_location, mark.seq, tuple(mark.position), ice.snapshot_id
        )

    @classmethod
    def recorded(cls, known: ViewState) -> ColdSide | None:
        """The pin a view was replaced with, unless its last replacement failed."""
        if known.error is not None or known.metadata is None or known.position is None:
            return None
        # The table location is the metadata file's parent's parent.
        location = known.metadata.rsplit("/metadata/", 1)[0]
        return cls(location, known.metadata, known.seq, tuple(known.position), known.snapshot_id)


@dataclass(frozen=True, slots=True)
class Upkeep:
    """What bringing a table's view to what is committed takes, decided before any of
    it is done (`upkeep`)."""

    drop: str | None  # the recorded view to drop: turned off or renamed
    keep: bool  # the table has a view to bring to what is committed
    pin: ColdSide | None  # the recorded pin, while it is the committed one
    read_pin: bool  # the recorded pin is not the committed one: take the Iceberg table's
    recorded: ViewState | None  # the view as last replaced, unless dropped

    def current(self, spec: ViewSpec, cold: ColdSide | None, views: ViewsConfig) -> bool:
        """Whether the view as last replaced is `spec` at `cold` (no replacement is needed
        unless a node lost it). Pure."""
        known = self.recorded
        return (
            known is not None
            and known.error is None
            and known.signature == spec.signature(cold, views)
        )


def upkeep(name: str | None, known: ViewState | None, committed: Committed) -> Upkeep:
    """What keeping the view `name` (None: no view) takes, the view `known` as recorded
    and the table `committed`: drop a recorded view of another name (the old view would
    read a snapshot expiry removes); pin the view to the recorded pin while that is at
    the committed seq, else to the Iceberg table's own; no pin while nothing is
    offloaded (the view is the hot table). Pure."""
    drop = known.name if known is not None and known.name != name else None
    recorded = None if drop is not None else known
    if name is None:
        return Upkeep(drop, False, None, False, recorded)
    if committed.position is None:
        return Upkeep(drop, True, None, False, recorded)
    pin = ColdSide.recorded(recorded) if recorded is not None else None
    if recorded is None or recorded.seq != committed.seq or pin is None:
        return Upkeep(drop, True, None, True, recorded)
    return Upkeep(drop, True, pin, False, recorded)


# --- pure: what the SQL is made of ---------------------------------------------------


def cold_reader(cold: ColdSide, views: ViewsConfig, target: str) -> str:
    """The table function by which ClickHouse reads the cold side, pinned to its metadata
    file: `icebergLocal` for a local warehouse, `icebergS3` with the named collection
    [views] s3_collection (credentials never appear in the view) for S3."""
    location = cold.location.rstrip("/")
    if not cold.metadata.startswith(location + "/"):
        raise ViewError(
            f"{target}: the Iceberg metadata file {cold.metadata} is not under the table's "
            f"location {location}; the view cannot pin it"
        )
    pinned = cold.metadata[len(location) + 1 :]
    parts = urlsplit(location)
    if parts.scheme in ("file", ""):
        return iceberg_local(parts.path or location, pinned)
    if parts.scheme in ("s3", "s3a", "s3n"):
        if not views.s3_collection:
            raise ViewError(
                f"{target}: the warehouse is on S3 ({location}), which ClickHouse reads with "
                "icebergS3: set [views] s3_collection to a ClickHouse named collection holding "
                "the store's access_key_id and secret_access_key (CREATE NAMED COLLECTION "
                "offloader_s3 AS access_key_id = '…', secret_access_key = '…')",
                reason="config",
            )
        if not views.s3_endpoint:
            raise ViewError(
                f"{target}: no S3 endpoint for the view: set [views] s3_endpoint to the object "
                "store's URL as ClickHouse reaches it (e.g. https://s3.eu-west-1.amazonaws.com)",
                reason="config",
            )
        url = f"{views.s3_endpoint}/{parts.netloc}{parts.path}/"
        return iceberg_s3(views.s3_collection, url, pinned)
    raise ViewError(
        f"{target}: ClickHouse cannot read a warehouse at {location} for the view (only "
        "file:// and s3:// are supported); set view = false on this table",
        reason="config",
    )


def _has(t: ChType, names: Sequence[str]) -> bool:
    return t.name in names or any(isinstance(a, ChType) and _has(a, names) for a in t.args)


def exact(t: ChType) -> bool:
    """Whether the view returns a column of type `t` in its own type: everything but the
    families stored as text without a way back (Variant, Dynamic, Geometry) and
    Nothing inside a container."""
    if _has(t, NULL_HOLDERS):
        return False
    base = t.unwrap()
    if base.name == "Nothing" or (base.name == "Array" and base.inner.unwrap().name == "Nothing"):
        return True
    return not _has(t, ("Nothing",))


def column_pair(
    name: str, type_text: str, cold_type: str | None, uint64: str, default: str | None = None
) -> tuple[str, str]:
    """(hot expression, cold expression) of one source column, both of the view's type:
    the source's own where the way back is exact (the hot side is the column itself),
    else the stored text form on both sides. `cold_type`: the type ClickHouse reads the
    Iceberg column as, None when the pinned snapshot has no such column yet (added to the
    source since). Cold rows without a value (such a column, or one Iceberg added as
    optional) read `default` (the column's constant DEFAULT), else the type's default —
    NULL for a Nullable column, as Iceberg reads added columns."""
    t = parse_type(type_text)
    q = quote_ident(name)
    if not exact(t):
        stored = iceberg_type(t, uint64)
        hot = rewrite_leaves(t, q, {**TEXT_LEAVES, **SHARED_LEAVES})
        cold = q if cold_type is not None else NULL
        return cast_as(hot, stored, name), cast_as(cold, stored, name)
    base = t.unwrap()
    fallback = default or type_default(type_text)
    if cold_type is None:
        cold = NULL if t.nullable else fallback
    elif base.name == "Nothing":
        cold = NULL
    elif base.name == "Array" and base.inner.unwrap().name == "Nothing":
        cold = EMPTY_ARRAY
    else:
        cold = rewrite_leaves(t, q, BACK_LEAVES)
        if cold_type.startswith("Nullable(") and not t.nullable:
            # A column Iceberg holds as optional but the source does not (added to the
            # source after the table's first offload): older rows read its default.
            cold = or_default(cold, _plain_text(t, type_text), fallback)
        elif cold == q and cold_type == type_text:
            # Read as the source's own type already (times, Decimals, Float64, ...): the
            # bare column, no CAST for the planner to see through (about 0.1x of a
            # pruned cold read's time, benchmarks/RESULTS.md).
            return q, q
    return q, cast_as(cold, type_text, name)


def _plain_text(t: ChType, type_text: str) -> str:
    """The type text without a LowCardinality wrapper (Nullable(LowCardinality(T)) is
    not a type)."""
    if t.name == "LowCardinality":
        inner = type_text.strip()[len("LowCardinality(") : -1]
        return inner
    return type_text


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """Everything a view's SQL is made of."""

    name: str  # database.view
    relation: str  # the hot table as pages read it (with FINAL when configured)
    source: tuple[str, str]  # its database and name
    columns: Sequence[tuple[str, str]]  # the source's (name, type) in order
    order: Sequence[tuple[str, ChType]]  # watermark and keys
    position: tuple[Any, ...] | None  # the committed position; None: nothing offloaded yet
    seq: int
    uint64: str = "error"
    security: ViewSecurity = "definer"  # whose rights the view reads with

    def signature(self, cold: ColdSide | None, views: ViewsConfig) -> str:
        """A digest of what the view's SQL depends on: an unchanged one means the view
        need not be replaced (the idle run compares it without a query)."""
        parts = [
            self.name,
            self.relation,
            repr(list(self.columns)),
            cursor.dumps(self.position) if self.position is not None else "",
            str(self.seq),
            cold.location if cold else "",
            cold.metadata if cold else "",
            views.s3_collection,
            views.s3_endpoint,
            VIEW_FORMAT,
        ]
        if self.security != "definer":
            # Only when not the default, so that existing views' signatures stay.
            parts.append(f"security={self.security}")
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def view_ddl(
    spec: ViewSpec,
    reader: str | None,
    cold_columns: dict[str, str],
    defaults: dict[str, str] | None = None,
) -> str:
    """`CREATE OR REPLACE VIEW` of the spec; `reader` is the cold side's table function
    (None: nothing offloaded yet, the view is the hot table), `cold_columns` the types
    ClickHouse reads its columns as, `defaults` the columns' constant DEFAULTs."""
    hot_cols, cold_cols = [], []
    for name, type_text in spec.columns:
        hot, cold = column_pair(
            name, type_text, cold_columns.get(name), spec.uint64, (defaults or {}).get(name)
        )
        hot_cols.append(hot)
        cold_cols.append(cold)
    if spec.position is not None and reader is not None:
        hot_sql = hot_after(hot_cols, spec.relation, spec.order, spec.position)
        body = union_all(hot_sql, cold_select(cold_cols, reader))
    else:
        body = hot_select(hot_cols, spec.relation)
    at = view_comment(spec, reader is not None)
    # DEFINER: the view reads both tiers with offloader's rights, so an analyst needs
    # SELECT on the view only, and the source's row policies and column grants do not
    # apply through it. INVOKER: with the analyst's own rights on the source and on the
    # cold tier's table function (or named collection).
    return create_view(spec.name, body, at, invoker=spec.security == "invoker")


# --- I/O: replace the view, record it ------------------------------------------------


async def cold_columns(source: Source, reader: str) -> dict[str, str]:
    """The columns ClickHouse reads from the pinned cold side, by name (also the probe
    that tells whether the server can read the warehouse at all)."""
    rows = await source.rows(describe_query(reader))
    return {str(row[0]): str(row[1]) for row in rows}


def spec_of(src: SourceTable, table: TableConfig, cold: ColdSide | None, seq: int = 0) -> ViewSpec:
    """The view of `table` at the pin `cold` (None: nothing offloaded yet, the view is
    the hot table, at `seq`)."""
    assert table.view is not None
    return ViewSpec(
        name=table.view,
        relation=src.relation,
        source=(src.database, table.source_table),
        columns=src.columns,
        order=src.order,
        position=cold.position if cold is not None else None,
        seq=cold.seq if cold is not None else seq,
        uint64=table.uint64,
        security=table.view_security,
    )


async def replace(
    source: Source,
    store: Store,
    views: ViewsConfig,
    spec: ViewSpec,
    cold: ColdSide | None,
    *,
    target: str,
    others: Sequence[ClickHouseConfig] = (),
) -> ViewState:
    """Build and run the view's DDL, then record it (seq, metadata file, signature).
    `spec` is `spec_of` the pin `cold` (`keep` makes it so). `others`: the cluster's
    other nodes, where the same DDL runs too (each node keeps its own view)."""
    t0 = time.monotonic()
    reader = cold_reader(cold, views, target) if cold is not None else None
    columns = await _probe(source, reader, target) if reader is not None else {}
    missing = [n for n, _ in spec.columns if (columns.get(n) or "Nullable(").startswith("Null")]
    defaults = await constant_defaults(source, spec.source, missing) if reader else {}
    ddl = view_ddl(spec, reader, columns, defaults)
    faults.point("view_replace")
    try:
        await source.command(ddl)
    except TableError as exc:
        raise ViewError(f"{target}: replacing view {spec.name} failed: {exc}") from exc
    for node in others:
        from offloader.source import open_source

        try:
            async with open_source(node, target, "native") as other:
                await other.command(ddl)
        except TableError as exc:
            raise ViewError(
                f"{target}: replacing view {spec.name} on node {node.host}:{node.port} of the "
                f"cluster failed: {exc}"
            ) from exc
    state = ViewState(
        target=target,
        name=spec.name,
        seq=spec.seq,
        position=spec.position,
        metadata=cold.metadata if cold else None,
        snapshot_id=cold.snapshot_id if cold else None,
        signature=spec.signature(cold, views),
        replaced_at=datetime.now(UTC),
    )
    await store.record_view(state)
    log.info(
        "view replaced",
        extra={
            "table": target,
            "view": spec.name,
            "seq": spec.seq,
            "watermark": list(spec.position) if spec.position is not None else None,
            "seconds": round(time.monotonic() - t0, 3),
        },
    )
    return state


async def constant_defaults(
    source: Source, table: tuple[str, str], names: Sequence[str]
) -> dict[str, str]:
    """The DEFAULT (or MATERIALIZED) expressions of `names` that are constant literals
    (`constant_literal`): what the hot table shows for rows older than the column, and
    so what the view's cold rows without a value read. Any other expression is neither
    run nor pasted into the view (the source's owner wrote it, and the view runs it with
    the view's rights): those columns read the type's default, logged naming the table
    and the column."""
    if not names:
        return {}
    db, name = table
    rows = await source.rows(column_defaults_query(db, name, names))
    found = {}
    for column, type_text, expression in rows:
        where = {"table": f"{db}.{name}", "column": str(column), "default": str(expression)}
        if not constant_literal(str(expression)):
            log.warning(
                "the view's cold rows read the type's default for a column whose DEFAULT is "
                "not a constant literal (only literals are copied into the view)",
                extra=where,
            )
            continue
        value = cast_default(str(expression), str(type_text))
        try:
            await source.rows(value_query(value))
        except TableError as exc:
            log.warning(
                "the view's cold rows read the type's default: the column's DEFAULT does not "
                "cast to its type",
                extra={**where, "error": str(exc)},
            )
            continue
        found[str(column)] = value
    return found


# A token of a constant literal: a string, a number, NULL/true/false/inf/nan, or the
# brackets and commas of an array or tuple of them.
_LITERAL_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.|'')*')"
    r"|(?P<number>[-+]?(?:0x[0-9a-f]+|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|inf|nan))(?![\w.])"
    r"|(?P<word>null|true|false)(?!\w)"
    r"|(?P<punct>[\[\](),]))",
    re.IGNORECASE,
)


def constant_literal(expression: str) -> bool:
    """Whether a column's DEFAULT expression (as system.columns shows it) is a constant
    literal: a string, a number, NULL, true or false, or an array or tuple of those.
    Function calls, identifiers, subqueries and operators are not. Pure."""
    tokens: list[str] = []
    pos, text = 0, expression.rstrip()
    while pos < len(text):
        match = _LITERAL_TOKEN.match(text, pos)
        if match is None:
            return False
        tokens.append(match.group("punct") or "v")
        pos = match.end()
    end = _literal_value(tokens, 0)
    return end == len(tokens)


def _literal_value(tokens: list[str], i: int) -> int | None:
    """The index after the literal starting at tokens[i], or None if none starts there."""
    if i >= len(tokens):
        return None
    if tokens[i] == "v":
        return i + 1
    close = {"[": "]", "(": ")"}.get(tokens[i])
    if close is None:
        return None
    i += 1
    if close == "]" and i < len(tokens) and tokens[i] == "]":
        return i + 1  # []
    while True:
        after = _literal_value(tokens, i)
        if after is None or after >= len(tokens):
            return None
        if tokens[after] == close:
            return after + 1
        if tokens[after] != ",":
            return None
        i = after + 1


async def _probe(source: Source, reader: str, target: str) -> dict[str, str]:
    try:
        return await cold_columns(source, reader)
    except TableError as exc:
        raise ViewError(
            f"{target}: ClickHouse cannot read the cold tier for the view "
            f"({reader.split('(')[0]}): {exc}; {PROBE_HINT}"
        ) from exc


PROBE_HINT = (
    "a local warehouse must lie below the directory clickhouse-local runs from or the "
    "server's user_files_path; an S3 one needs [views] s3_collection to name an existing "
    "named collection the server can use and s3_endpoint to be reachable from the server"
)


async def drop(source: Source, store: Store, name: str, *, target: str) -> None:
    """Drop a view offloader no longer keeps (the table's `view` turned off or renamed)
    and forget it; a failure is logged and retried by the next run."""
    try:
        await source.command(drop_view(name))
        await store.forget_view(target)
    except OffloaderError as exc:
        log.warning(
            "old view not dropped", extra={"table": target, "view": name, "error": str(exc)}
        )
        return
    log.info("view dropped", extra={"table": target, "view": name})


async def keep(
    src: SourceTable,
    store: Store,
    views: ViewsConfig,
    table: TableConfig,
    cold: ColdSide | None,
    seq: int = 0,
    *,
    clickhouse: ClickHouseConfig,
) -> str | None:
    """Replace the view of `table` at the pin `cold` (`seq`: the commit when there is no
    pin yet), never raising for a table problem: a failure is logged with the table and
    the reason and recorded (status, metrics); the view keeps its previous consistent
    definition and the next run retries. For a `Distributed` source the view is replaced
    on every node of its cluster, each over the native protocol at the port
    system.clusters lists, with `clickhouse`'s user (the settings offloader connects
    with). Returns the error, if any."""
    assert table.view is not None
    target = table.target
    spec = spec_of(src, table, cold, seq)
    try:
        others = await cluster_nodes(src, clickhouse)
        await replace(src.source, store, views, spec, cold, target=target, others=others)
        return None
    except OffloaderError as exc:
        error = str(exc)
    log.warning("view not replaced", extra={"table": target, "view": spec.name, "error": error})
    try:
        await store.view_failed(target, spec.name, error)
    except OffloaderError:
        log.warning("could not record the view's failure", extra={"table": target}, exc_info=True)
    return error


def view_comment(spec: ViewSpec, cold: bool) -> str:
    """The comment a view's DDL gives it: the pair it reads (status and the tests read
    the commit off it), or that it reads the hot table only."""
    if spec.position is not None and cold:
        return f"offloader: both tiers at commit {spec.seq}, position {cursor.dumps(spec.position)}"
    return "offloader: nothing offloaded yet, the hot table only"


async def on_every_node(src: SourceTable, spec: ViewSpec, cold: ColdSide | None) -> bool:
    """For a Distributed source: whether every node of its cluster has the view as it was
    last replaced (one query: system.tables on every replica through clusterAllReplicas,
    against system.clusters). A node rebuilt or restored without it, or left at another
    commit, makes the run replace it everywhere. True for another source, and when the
    cluster cannot be asked (status --check names such a node)."""
    if src.cluster is None:
        return True
    query = view_on_nodes_query(src.cluster, spec.name, view_comment(spec, cold is not None))
    try:
        nodes, current = (await src.source.rows(query))[0]
    except OffloaderError as exc:
        log.warning("could not check the view on the cluster's nodes", extra={"error": str(exc)})
        return True
    return int(current) >= int(nodes)


async def cluster_nodes(src: SourceTable, clickhouse: ClickHouseConfig) -> list[ClickHouseConfig]:
    """The other nodes of a Distributed source's cluster (none for another source), as
    settings to connect to each (its host and native port, offloader's user)."""
    if src.cluster is None:
        return []
    return await nodes_of(src.source, src.cluster, clickhouse)


async def nodes_of(
    source: Source, cluster: str, clickhouse: ClickHouseConfig
) -> list[ClickHouseConfig]:
    """Every node of `cluster` but the one `source` is connected to, as system.clusters
    lists them (host, native port), with `clickhouse`'s user."""
    nodes = await cluster_of(source, cluster)
    others = {(n.address, n.tcp_port) for n in nodes if not n.local}
    return [
        dataclasses.replace(clickhouse, host=host, port=port)
        for host, port in sorted(others)
        if (host, port) != (clickhouse.host, clickhouse.port)
    ]


async def after_rewrite(services: Services, table: TableConfig, ice: IcebergTable) -> str | None:
    """After a commit that rewrote the table without moving its position (maintenance's
    compaction and expiry): point the view at the new metadata file, unless it reads it
    already. The pin is the rewritten table's own (its metadata file and the marker its
    snapshot carries), never PostgreSQL's position, which a killed run may have left
    behind Iceberg's. The caller holds the table's lock. Returns the error, if any."""
    if table.view is None:
        return None
    store = services.watermarks
    known = await store.view_state(table.target)
    if known is not None and known.error is None and known.metadata == ice.metadata_location:
        return None
    from offloader.source import open_table

    cold = ColdSide.of(ice)
    try:
        async with open_table(services.clickhouse, table) as src:
            return await keep(
                src, store, services.views, table, cold, clickhouse=services.clickhouse
            )
    except OffloaderError as exc:
        log.warning("view not replaced", extra={"table": table.target, "error": str(exc)})
        await store.view_failed(table.target, table.view, str(exc))
        return str(exc)


async def probe(
    source: Source, views: ViewsConfig, table: TableConfig, ice: IcebergTable | None
) -> str:
    """`offloader validate`: whether ClickHouse can keep and read this table's view —
    the view's database exists, the named collection (S3) exists, and the server reads
    the cold side's columns (once the Iceberg table exists). Raises ViewError naming
    what is wrong; returns a line saying what was checked."""
    assert table.view is not None
    db = table.view.rpartition(".")[0]
    if not await source.scalar(database_exists_query(db)):
        raise ViewError(
            f"{table.target}: the view's database {db!r} does not exist in ClickHouse: "
            f"CREATE DATABASE {quote_ident(db)}, or set view = 'database.name' on this table",
            reason="config",
        )
    if views.s3_collection:
        found = await source.scalar(named_collection_exists_query(views.s3_collection))
        if not found:
            raise ViewError(
                f"{table.target}: ClickHouse has no named collection {views.s3_collection!r} "
                "([views] s3_collection), or this user may not see it: CREATE NAMED COLLECTION "
                f"{views.s3_collection} AS access_key_id = '…', secret_access_key = '…' (and "
                "GRANT NAMED COLLECTION ON it to offloader's ClickHouse user)",
                reason="config",
            )
    cold = ColdSide.of(ice) if ice is not None else None
    if cold is None:
        return f"view {table.view}: will be created by the first run (no Iceberg commit yet)"
    reader = cold_reader(cold, views, table.target)
    columns = await _probe(source, reader, table.target)
    return (
        f"view {table.view}: ClickHouse reads the cold tier ({reader.split('(')[0]}, "
        f"{len(columns)} columns)"
    )


async def probe_everywhere(
    src: SourceTable,
    views: ViewsConfig,
    table: TableConfig,
    ice: IcebergTable | None,
    clickhouse: ClickHouseConfig,
) -> str:
    """`probe` on the node offloader connects to and, for a Distributed source, on every
    other node of its cluster (each keeps its own view, and each must reach the view's
    database, the named collection and the cold tier). Raises ViewError naming the
    node."""
    line = await probe(src.source, views, table, ice)
    nodes = await cluster_nodes(src, clickhouse)
    for node in nodes:
        from offloader.source import open_source

        try:
            async with open_source(node, table.target, "native") as other:
                await probe(other, views, table, ice)
        except TableError as exc:
            raise ViewError(f"{table.target}: on node {node.host}:{node.port}: {exc}") from exc
    if nodes:
        line += f"; the same on the {len(nodes)} other nodes of cluster {src.cluster}"
    return line
