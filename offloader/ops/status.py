"""`offloader status`: what PostgreSQL recorded per table, and how far Iceberg trails ClickHouse."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import anyio

from offloader import source
from offloader.config import Config, TableConfig
from offloader.cursor import encode_value, from_micros, watermark_from_int
from offloader.days import SECONDS_PER_DAY, day_number, kind_of, ticks_precision, watermark_day
from offloader.errors import TableError
from offloader.iceberg import IcebergCatalog, IcebergTable, files
from offloader.plan import behind
from offloader.report import Status
from offloader.sql.scan import behind_query
from offloader.sql.system import TABLE_COLUMNS, distributed_over, table_query, ttl_seconds
from offloader.sql.text import read_from, row_hash
from offloader.state import StatusRow
from offloader.tiers import audit, view
from offloader.tiers.services import Services
from offloader.types import ChType, parse_type


@dataclass(slots=True)
class TableStatus:
    target: str
    source: str
    enabled: bool
    watermark: list[Any] | None
    rows_offloaded: int
    commits: int
    last_run_at: str | None
    last_status: str | None
    last_error: str | None
    source_newest: str | None = None
    lag_seconds: float | None = None
    rows_behind: int | None = None
    ttl: str | None = None
    ttl_seconds: float | None = None
    problem: str | None = None
    data_files: int | None = None  # the Iceberg table's shape (what maintenance bounds)
    manifests: int | None = None
    snapshots: int | None = None
    metadata_files: int | None = None
    drifted_days: list[dict[str, Any]] | None = None  # audit: days whose tiers differ
    shown: str | None = None  # the watermark as a person reads it, when not as stored
    view: str | None = None  # the view over both tiers (view.py)
    view_commit: int | None = None  # the commit it reads (its comment in ClickHouse)
    view_error: str | None = None  # why its last replacement failed
    view_problem: str | None = None  # behind for more than a cycle, or missing
    hot_retention: float | None = None  # seconds (hot_retention), None: off
    retained_until: str | None = None  # days before it were dropped from ClickHouse
    oldest_hot_day: str | None = None  # the source's oldest row's UTC day
    retention_last: dict[str, Any] | None = None  # the last retention pass (retention.py)
    # A Distributed source's other nodes: the commit each one's view reads (None: none).
    view_nodes: dict[str, int | None] | None = None

    @property
    def ttl_warning(self) -> str | None:
        """Set when the lag eats more than half the hot tier's TTL: rows may be dropped
        from ClickHouse before they reach Iceberg."""
        if self.ttl_seconds is None or self.lag_seconds is None:
            return None
        share = self.lag_seconds / self.ttl_seconds
        if share < 0.5:
            return None
        return (
            f"lag {_human(self.lag_seconds)} is {share:.0%} of the ClickHouse TTL "
            f"({_human(self.ttl_seconds)}): rows may be dropped before they are offloaded"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ttl_warning": self.ttl_warning}


async def collect(services: Services, cfg: Config) -> list[TableStatus]:
    """Every configured table's status: PostgreSQL's state, the Iceberg table's shape,
    the source's lag and a fresh audit; a table's problem is in its status."""
    rows = {r.target: r for r in await services.watermarks.status()}
    views = {v.target: v for v in await services.watermarks.views()}
    result = []
    catalog = await services.open_iceberg()
    for table in cfg.tables:
        row = rows.get(table.target)
        st = _from_row(table, row)
        try:
            ice = await anyio.to_thread.run_sync(_iceberg_side, catalog, table, st)
            await _source_side(services, table, st, ice)
        except TableError as exc:
            st.problem = str(exc)
        known = views.get(table.target)
        st.view_error = known.error if known else None
        st.view_problem = view_problem(st, row, cfg.service.interval)
        result.append(st)
    return result


def view_problem(st: TableStatus, row: StatusRow | None, interval: float) -> str | None:
    """Why the table's view is not at its committed position for more than a cycle, or
    None (a view one commit behind within a cycle is between a commit and its
    replacement, or waiting for the next run's retry)."""
    if st.view is None or not st.enabled:
        return None
    error = f" (last error: {st.view_error})" if st.view_error else ""
    for node, at in (st.view_nodes or {}).items():
        if at != st.view_commit:
            where = "does not exist" if at is None else f"reads commit {at}"
            return (
                f"view {st.view} {where} on node {node} of the cluster (this node's reads "
                f"commit {st.view_commit}){error}"
            )
    if st.view_commit is None:
        if st.commits == 0 and not st.view_error:
            return None  # nothing offloaded yet: the first run creates it
        return f"view {st.view} does not exist in ClickHouse{error}"
    if st.view_commit >= st.commits:
        return None
    since = row.updated_at if row is not None else None
    age = (dt.datetime.now(dt.UTC) - since).total_seconds() if since else None
    if age is not None and age <= interval:
        return None
    return (
        f"view {st.view} reads commit {st.view_commit}, the table is at commit {st.commits}"
        + (f" since {_human(age)}" if age is not None else "")
        + error
    )


def _iceberg_side(
    catalog: IcebergCatalog, table: TableConfig, st: TableStatus
) -> IcebergTable | None:
    ice = catalog.load(table.target)
    if ice is None:
        return None
    shape = files.shape(ice)
    st.data_files, st.manifests = shape.data_files, shape.manifests
    st.snapshots, st.metadata_files = shape.snapshots, shape.metadata_files
    return ice


def _from_row(table: TableConfig, row: StatusRow | None) -> TableStatus:
    return TableStatus(
        target=table.target,
        source=table.source,
        enabled=table.enabled,
        watermark=list(row.position) if row and row.position else None,
        rows_offloaded=row.rows_total if row else 0,
        commits=row.seq if row else 0,
        last_run_at=row.last_run_at.isoformat() if row and row.last_run_at else None,
        last_status=row.last_status if row else None,
        last_error=row.last_error if row else None,
        view=table.view,
        hot_retention=table.hot_retention,
        retained_until=row.retained_until.isoformat() if row and row.retained_until else None,
        retention_last=row.retention_last if row else None,
    )


async def _source_side(
    services: Services, table: TableConfig, st: TableStatus, ice: IcebergTable | None
) -> None:
    db = table.source_database or services.clickhouse.database
    transport = source.transport_of(services.clickhouse, table)
    async with source.open_source(services.clickhouse, table.target, transport) as ch:
        columns = dict(await source.table_columns(ch, db, table.source_table))
        order = _order(table, columns, st)
        if order is None:
            return
        wm_type = order[0][1]
        if st.watermark and ticks_precision(kind_of(wm_type)) is not None:
            # DateTime64(7..9): the position holds its ticks; show the time they are.
            shown = str(watermark_from_int(wm_type, st.watermark[0]))
            st.shown = ", ".join([shown, *(str(v) for v in st.watermark[1:])])
        if table.view is not None:
            st.view_commit = await view_commit(ch, table.view)
            st.view_nodes = await _other_nodes_views(services, ch, db, table)
        src = read_from(db, table.source_table, table.final)
        await _extent(ch, src, order, table, st)
        st.ttl = await source.table_ttl(ch, db, table.source_table)
        st.ttl_seconds = ttl_seconds(st.ttl)
        # The same measure as each run's (pipeline._measure_behind), so status, --check
        # and the offloader_lag_seconds metric agree.
        rows, oldest, now, _ = (await ch.rows(behind_query(src, order, st.watermark)))[0]
        first = watermark_from_int(wm_type, oldest) if rows else None
        lag = behind(int(rows), first, from_micros(now), wm_type)
        st.rows_behind, st.lag_seconds = lag.rows, lag.seconds
        if ice is not None and st.watermark is not None:
            hot = audit.HotTable(ch, src, tuple(order), None)
            await _audit(services, table, st, hot, list(columns.items()), ice)


def _order(
    table: TableConfig, columns: dict[str, str], st: TableStatus
) -> list[tuple[str, ChType]] | None:
    """The watermark and keys with their types, or None with `st.problem` saying which
    is not in the source."""
    if table.watermark not in columns:
        st.problem = f"watermark column {table.watermark!r} not in source"
        return None
    order = []
    for name in (table.watermark, *table.keys):
        if name not in columns:
            st.problem = f"column {name!r} (watermark or key) not in source"
            return None
        order.append((name, parse_type(columns[name])))
    return order


async def _extent(
    ch: source.Source,
    src: str,
    order: list[tuple[str, ChType]],
    table: TableConfig,
    st: TableStatus,
) -> None:
    """The source's newest watermark and oldest day, and the problem of rows in days
    hot_retention already dropped."""
    wm_type = order[0][1]
    count, raw_oldest, _, raw_newest = (await ch.rows(behind_query(src, order, None)))[0]
    st.source_newest = str(watermark_from_int(wm_type, raw_newest))
    oldest_day = watermark_day(wm_type, encode_value(watermark_from_int(wm_type, raw_oldest)))
    st.oldest_hot_day = oldest_day.isoformat() if oldest_day and int(count) else None
    if st.retained_until and st.oldest_hot_day and st.oldest_hot_day < st.retained_until:
        st.problem = st.problem or (
            f"rows in days hot_retention already dropped (oldest hot day "
            f"{st.oldest_hot_day}, days before {st.retained_until} were dropped): they "
            f"are not in Iceberg; see `offloader retain {table.target}`"
        )


async def _audit(
    services: Services,
    table: TableConfig,
    st: TableStatus,
    hot: audit.HotTable,
    columns: list[tuple[str, str]],
    ice: IcebergTable,
) -> None:
    """A fresh audit of the table's window, as each run does (audit.py): the drifted
    days in `st.drifted_days`."""
    assert st.watermark is not None
    wm_type = hot.order[0][1]
    retained = dt.date.fromisoformat(st.retained_until) if st.retained_until else None
    bounds = audit.window(wm_type, st.watermark, table.audit_days, retained)
    if bounds is None:
        return
    hashed = row_hash(columns) if table.audit_checksums else None
    recorded = None
    if hashed is not None:
        first, last = bounds
        recorded = await services.watermarks.day_sums(
            table.target, day_number(first), day_number(last)
        )
    hot = replace(hot, hashed=hashed)
    found = await audit.audit_days(hot, ice, st.watermark, bounds, recorded=recorded)
    st.drifted_days = [d.as_dict() for d in found.drifted]


async def _other_nodes_views(
    services: Services, ch: source.Source, db: str, table: TableConfig
) -> dict[str, int | None] | None:
    """For a Distributed source, the commit the view reads on each other node of its
    cluster (each node keeps its own view); None for another source."""
    assert table.view is not None
    found_table = await ch.rows(table_query(db, table.source_table))
    engine = found_table[0][TABLE_COLUMNS.index("engine_full")] if found_table else ""
    over = distributed_over(str(engine or ""))
    if over is None:
        return None
    found: dict[str, int | None] = {}
    for node in await view.nodes_of(ch, over[0], services.clickhouse):
        async with source.open_source(node, table.target, "native") as other:
            found[f"{node.host}:{node.port}"] = await view_commit(other, table.view)
    return found


async def view_commit(ch: source.Source, name: str) -> int | None:
    """The commit the view reads, from the comment offloader gives it (-1 before the
    first commit: the hot table only); None when there is no such view."""
    db, _, table = name.rpartition(".")
    rows = await ch.rows(table_query(db, table))
    if not rows:
        return None
    found = re.search(r"at commit (\d+),", str(rows[0][TABLE_COLUMNS.index("comment")]))
    return int(found.group(1)) if found else 0


def render(statuses: list[TableStatus]) -> str:
    lines = [
        f"{'TARGET':<34} {'LAST RUN':<8} {'ROWS':>12} {'BEHIND':>10} {'LAG':>9}  WATERMARK",
    ]
    for s in statuses:
        lag = "-" if s.lag_seconds is None else _human(s.lag_seconds)
        behind = "-" if s.rows_behind is None else str(s.rows_behind)
        wm = "(none yet)" if not s.watermark else ", ".join(str(v) for v in s.watermark)
        wm = s.shown or wm
        status = (s.last_status or "never") if s.enabled else "disabled"
        lines.append(
            f"{s.target:<34} {status:<8} {s.rows_offloaded:>12} {behind:>10} {lag:>9}  {wm}"
        )
        if s.data_files is not None:
            lines.append(
                f"    Iceberg: {s.data_files} data files, {s.manifests} manifests, "
                f"{s.snapshots} snapshots, {s.metadata_files} metadata files"
            )
        for d in s.drifted_days or []:
            lines.append(
                f"    LATE ROWS {d['day']}: ClickHouse {d['clickhouse']} rows, Iceberg "
                f"{d['iceberg']} rows (offloader repair {s.target})"
            )
        if s.last_status == Status.FAILED and s.last_error:
            lines.append(f"    last error: {s.last_error}")
        if s.problem:
            lines.append(f"    problem: {s.problem}")
        if s.ttl:
            lines.append(f"    ClickHouse TTL: {s.ttl}")
        if s.hot_retention is not None or s.retained_until:
            keep = f"hot_retention {_human(s.hot_retention)}" if s.hot_retention else "off"
            lines.append(
                f"    hot retention: {keep}; oldest hot day {s.oldest_hot_day or '-'}"
                + (
                    f"; days before {s.retained_until} are Iceberg's alone"
                    if s.retained_until
                    else ""
                )
            )
        if s.retention_last:
            lines.append(f"    last retention pass: {retention_line(s.retention_last)}")
        if s.ttl_warning:
            lines.append(f"    WARNING: {s.ttl_warning}")
        if s.view is not None:
            at = "missing" if s.view_commit is None else f"at commit {s.view_commit}"
            lines.append(
                f"    view {s.view}: {at}" + (f" — {s.view_problem}" if s.view_problem else "")
            )
            if s.view_error and not s.view_problem:
                lines.append(
                    f"    view: last replacement failed (retried next run): {s.view_error}"
                )
    return "\n".join(lines)


def retention_line(last: dict[str, Any]) -> str:
    """The last retention pass as status shows it (RetentionReport.summary)."""
    text = f"{last.get('at', '?')} {last.get('result', '?')}, {last.get('dropped', 0)} dropped"
    for refused in last.get("refused") or []:
        text += f"; REFUSED {refused}"
    for late in last.get("late") or []:
        text += f"; LATE ROWS {late}"
    if last.get("error"):
        text += f"; {last['error']}"
    return text


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / SECONDS_PER_DAY:.1f}d"
