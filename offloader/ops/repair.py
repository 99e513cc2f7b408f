"""`offloader repair` and the `late_rows = "repair"` policy: replace whole days of an
Iceberg table with ClickHouse's current rows, exactly once.

A repair is an offloader commit like an append: one snapshot that deletes the files
holding the days' rows (rows of other days in those files are written again) and adds
ClickHouse's rows of those days up to the committed watermark, with the marker
seq + 1 at the same watermark, compare-and-set against any other commit; then
PostgreSQL, by compare-and-set on seq. A crash between the two is recovered like an
append's. Rows past the committed watermark are never touched: the next cycle takes
them.

What it may never touch: a day ClickHouse no longer fully holds. Iceberg is then the
only copy (TTL, a dropped or detached partition, a truncated or recreated table). Such
days are refused with the reason; `--force` overrides that only for days named with
`--since/--until`.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio

from offloader import faults, plan
from offloader.config import TableConfig
from offloader.cursor import as_datetime, from_micros, watermark_from_int
from offloader.days import day_number, day_start, kind_of, watermark_day
from offloader.errors import InconsistentState, SourceSchemaError
from offloader.iceberg import IcebergTable, Marker, WrittenFiles, files, rewrite
from offloader.progress import Progress
from offloader.report import Status, guarded
from offloader.source import Page, SourceTable, keyset_pages, open_table, table_ttl
from offloader.sql.scan import Scan, behind_query
from offloader.sql.system import ttl_seconds
from offloader.sql.text import row_hash
from offloader.state import DaySum, RetentionIntent, encode_days
from offloader.tiers import view
from offloader.tiers.audit import DayCount, HotTable, add_sums, audit_days
from offloader.tiers.services import Services
from offloader.tiers.writing import CommitRecord, PageWriter, commit

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RepairReport:
    target: str
    dry_run: bool = False
    status: Status = Status.OK  # OK, NOTHING (no day to repair), REFUSED, FAILED, SKIPPED
    days: list[DayCount] = field(default_factory=list)  # replaced (counts before)
    refused: list[str] = field(default_factory=list)  # "day: why"
    rows_before: int = 0  # Iceberg rows of the replaced days
    rows_after: int = 0  # ClickHouse rows written for them
    files_replaced: int = 0
    seq: int | None = None
    error: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    view_error: str | None = None  # the view over both tiers was not replaced (view.py)

    def as_dict(self) -> dict[str, Any]:
        return {
            "view_error": self.view_error,
            "target": self.target,
            "dry_run": self.dry_run,
            "status": self.status,
            "days": [d.as_dict() for d in self.days],
            "refused": self.refused,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "files_replaced": self.files_replaced,
            "seq": self.seq,
            "error": self.error,
        }

    def lines(self) -> list[str]:
        out = []
        verb = "would replace" if self.dry_run else "replaced"
        for d in self.days:
            out.append(f"{self.target}: {verb} {d}")
        if self.days and not self.dry_run:
            out.append(
                f"{self.target}: {len(self.days)} days repaired in commit {self.seq}: "
                f"{self.rows_before} rows -> {self.rows_after} rows"
            )
        out += [f"{self.target}: REFUSED {r}" for r in self.refused]
        if self.status == Status.NOTHING:
            out.append(f"{self.target}: no day to repair")
        if self.error:
            out.append(f"{self.target}: FAILED {self.error}")
        if self.view_error:
            out.append(f"{self.target}: the view was not replaced: {self.view_error}")
        return out


async def _source_facts(
    src: SourceTable, table: TableConfig
) -> tuple[dt.date | None, float | None, dt.datetime]:
    """The day of ClickHouse's oldest row (None: the table is empty), the TTL in
    seconds (None: no TTL) and the server's time."""
    wm_type = src.plan.order[0][1]
    count, oldest, now, _ = (
        await src.source.rows(behind_query(src.relation, src.plan.order, None))
    )[0]
    first = as_datetime(watermark_from_int(wm_type, oldest)) if int(count) else None
    first_day = first.date() if isinstance(first, dt.datetime) else first
    ttl = ttl_seconds(await table_ttl(src.source, src.database, table.source_table))
    return first_day, ttl, from_micros(now)


def refusal(
    count: DayCount, oldest_day: dt.date | None, ttl: float | None, now: dt.datetime
) -> str | None:
    """Why a day must not be replaced from ClickHouse, or None. Pure."""
    day = count.day
    if oldest_day is None:
        return (
            f"{day}: ClickHouse holds no rows at all (truncated or recreated?); Iceberg is the "
            "only copy of this day"
        )
    if day < oldest_day or (ttl is not None and day == oldest_day):
        return (
            f"{day}: ClickHouse's oldest row is from {oldest_day}, so it no longer holds all "
            "of this day (TTL or a dropped partition); Iceberg is the only copy"
        )
    if ttl is not None:
        horizon = now - dt.timedelta(seconds=ttl)
        if dt.datetime.combine(day, dt.time(), dt.UTC) < horizon:
            return (
                f"{day}: older than the ClickHouse TTL horizon ({horizon:%Y-%m-%d %H:%M} UTC); "
                "its rows may be partly dropped, Iceberg is the only complete copy"
            )
    if count.clickhouse == 0 and count.iceberg:
        return (
            f"{day}: ClickHouse holds none of this day's {count.iceberg} rows (a dropped or "
            "detached partition?); Iceberg is the only copy"
        )
    return None


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """What a repair is asked: `days` (each at or before the committed watermark's day),
    `force` (replace even days ClickHouse may no longer fully hold: only days named
    with --since/--until), `dry_run`, the table's `retained_until` (days before it are
    never replaced), its pending retention `intent` (days it covers are never replaced:
    ClickHouse may hold only part of them, parked by the pass) and a progress display."""

    days: list[dt.date]
    force: bool = False
    dry_run: bool = False
    retained_until: dt.date | None = None
    progress: Progress | None = None
    intent: RetentionIntent | None = None


@dataclass(slots=True)
class Replacement:
    """What the commit of a repair replaces: ClickHouse's rows of the days as data files
    (and the rows of other days in the files it deletes, written again), the files it
    deletes, and the days' per-day sums from scratch."""

    written: list[WrittenFiles]
    deleted: list[Any]  # the live data files (pyiceberg's DataFile) it deletes
    rows_before: int
    rows_after: int
    sums: dict[int, DaySum]


async def repair(
    services: Services,
    src: SourceTable,
    table: TableConfig,
    ice: IcebergTable,
    *,
    seq: int,
    position: list[Any],
    request: RepairRequest,
) -> RepairReport:
    """Replace the requested days of the Iceberg table with ClickHouse's rows, in one
    offloader commit (`writing.commit`). The caller holds the table's lock and has
    reconciled PostgreSQL with Iceberg (`seq`, `position`). Raises TableError."""
    report = RepairReport(table.target, dry_run=request.dry_run)
    if not request.days:
        report.status = Status.NOTHING
        return report
    report.days, report.refused = await _plan(services, src, table, ice, position, request)
    if not report.days:
        report.status = Status.REFUSED if report.refused else Status.NOTHING
        return report
    if request.dry_run:
        return report
    new = await _replacement(services, src, table, ice, position, report.days, request.progress)
    report.files_replaced = len(new.deleted)
    report.rows_before, report.rows_after = new.rows_before, new.rows_after
    faults.point("repair_write")
    run_id = uuid.uuid4().hex
    delta = new.rows_after - new.rows_before
    marker = Marker(seq + 1, position, run_id, delta, encode_days(new.sums, replace=True))
    added = [df for w in new.written for df in w.files]
    await commit(
        services.watermarks,
        table.target,
        CommitRecord(marker, new.sums, replace_days=True),
        lambda m: rewrite.replace_files(ice, new.deleted, added, run_id, m),
        limiter=services.io,
        point="repair_commit",
    )
    report.seq = marker.seq
    log.info(
        "repaired",
        extra={
            "table": table.target,
            "days": [c.day.isoformat() for c in report.days],
            "rows_before": report.rows_before,
            "rows_after": report.rows_after,
            "seq": report.seq,
        },
    )
    return report


async def _plan(
    services: Services,
    src: SourceTable,
    table: TableConfig,
    ice: IcebergTable,
    position: list[Any],
    request: RepairRequest,
) -> tuple[list[DayCount], list[str]]:
    """The requested days a repair replaces (with both tiers' counts before) and those it
    refuses, with why: days hot_retention dropped or a pending retention pass holds
    (always), days ClickHouse may no longer fully hold (unless forced)."""
    days = request.days
    checked = row_hash(src.columns) if table.audit_checksums else None
    recorded = None
    if checked is not None:
        recorded = await services.watermarks.day_sums(
            table.target, day_number(min(days)), day_number(max(days))
        )
    hot = HotTable(src.source, src.relation, src.plan.order, checked)
    found = await audit_days(
        hot, ice, position, (min(days), max(days)), recorded=recorded, limiter=services.io
    )
    counts = {c.day: c for c in found.days}
    oldest_day, ttl, now = await _source_facts(src, table)
    accepted: list[DayCount] = []
    refused: list[str] = []
    for day in sorted(set(days)):
        if request.intent is not None and request.intent.covers(day):
            # Not even with --force: the pass may have parked some of the day's parts.
            pending = f"{day}: {request.intent.pending(table.target)}"
            refused.append(pending)
            log.error("repair refused", extra={"table": table.target, "reason": pending})
            continue
        if request.retained_until is not None and day < request.retained_until:
            # Not even with --force: ClickHouse's copy of it was dropped on purpose.
            refused.append(
                f"{day}: hot_retention dropped this day from ClickHouse after Iceberg was "
                "verified to hold it; Iceberg is the only copy"
            )
            continue
        why = refusal(counts[day], oldest_day, ttl, now)
        if why is not None and not request.force:
            refused.append(why)
            log.error("repair refused", extra={"table": table.target, "reason": why})
            continue
        accepted.append(counts[day])
    return accepted, refused


async def _replacement(
    services: Services,
    src: SourceTable,
    table: TableConfig,
    ice: IcebergTable,
    position: list[Any],
    accepted: list[DayCount],
    progress: Progress | None,
) -> Replacement:
    """ClickHouse's rows of the accepted days written as data files (not committed),
    and the live files holding any row of those days, whose other rows are written
    again."""
    limiter = services.io
    hashed = row_hash(src.columns)
    wanted = {day_number(c.day) for c in accepted}
    # The repaired days' sums start again from what is written now (empty days too).
    sums = {n: DaySum(0, 0, hashed.key) for n in wanted}
    if progress is not None:
        progress.start(table.target, sum(c.clickhouse for c in accepted))
    writer = PageWriter(
        ice,
        table.watermark,
        table.watermark,
        kind_of(src.plan.order[0][1]),
        hashed,
        cpu=limiter,
        io=limiter,
        page_done=(lambda rows: progress.advance(table.target, rows)) if progress else None,
    )
    written, read_sums = await _read_days(src, table, position, accepted, writer)
    add_sums(sums, read_sums)
    rows_after = sum(w.rows for w in written)
    wm_name = src.plan.order[0][0]
    live = await anyio.to_thread.run_sync(files.live_files, ice, wm_name, limiter=limiter)
    deleted, kept_rows = [], 0
    for f in live.stats:
        lo, hi = files.day_of(f.lower, live.kind), files.day_of(f.upper, live.kind)
        if lo is not None and hi is not None and not wanted & set(range(lo, hi + 1)):
            continue
        deleted.append(f)
        if lo is None or hi is None or not set(range(lo, hi + 1)) <= wanted:
            kept = await anyio.to_thread.run_sync(
                _keep_rows, ice, live, f.path, wm_name, wanted, limiter=limiter
            )
            if kept is not None:
                written.append(kept)
                kept_rows += kept.rows
    rows_before = sum(f.rows for f in deleted) - kept_rows
    return Replacement(
        written, [live.files[f.path] for f in deleted], rows_before, rows_after, sums
    )


def _keep_rows(
    ice: IcebergTable, live: files.LiveFiles, path: str, wm: str, days: set[int]
) -> WrittenFiles | None:
    """Write again the rows of a replaced file that fall outside the repaired days."""
    batches = [
        b for t in rewrite.rows_outside_days(ice, live, [path], wm, days) for b in t.to_batches()
    ]
    return ice.write_files(batches, wm) if batches else None


async def _read_days(
    src: SourceTable,
    table: TableConfig,
    position: list[Any],
    days: list[DayCount],
    writer: PageWriter,
) -> tuple[list[WrittenFiles], dict[int, DaySum]]:
    """ClickHouse's rows of `days` up to the committed position, written as data files
    (not committed) through the pipeline's write path, so memory stays bounded by a
    file; and their per-day rows and row-hash sums."""
    pager = src.source.pager(table, src.plan, writer.hashed)
    wm_type = src.plan.order[0][1]

    async def pages() -> AsyncGenerator[Page]:
        for count in days:
            scan = Scan(
                src.relation,
                upto=position[0],
                since=day_start(wm_type, count.day),
                before=day_start(wm_type, count.day + dt.timedelta(days=1)),
                through=position,
            )
            day = keyset_pages(pager, scan, None, table.batch_rows, target=table.target)
            async with aclosing(day):
                async for page in day:
                    yield page

    written: list[WrittenFiles] = []
    sums: dict[int, DaySum] = {}

    async def keep(files: list[WrittenFiles], _: list[Any], more: dict[int, DaySum]) -> None:
        written.extend(files)
        add_sums(sums, more)

    async with aclosing(pages()) as stream:
        await writer.write(stream, keep, flush_rows=sys.maxsize)
    return written, sums


async def repair_table(
    services: Services,
    table: TableConfig,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> RepairReport:
    """`offloader repair`: the days in [since, until) (up to the watermark's day), or
    without them the days a fresh audit of the table's window finds drifted. Never
    raises for a table problem (`guarded`): it is in the report."""
    report = RepairReport(table.target, dry_run=dry_run)
    watermarks = services.watermarks
    with guarded(report, "repair"):
        async with (
            watermarks.table_lock(table.target),
            open_table(services.clickhouse, table) as src,
        ):
            catalog = await services.open_iceberg()
            ice = await anyio.to_thread.run_sync(catalog.load, table.target, limiter=services.io)
            if ice is None:
                raise SourceSchemaError(f"{table.target}: no Iceberg table yet", reason="config")
            state = await watermarks.get(table.target, table.source)
            mark = await anyio.to_thread.run_sync(ice.latest_mark)
            decision = plan.reconcile_with(table.target, state, mark)
            if decision.action == "recover":
                raise InconsistentState(
                    f"{table.target}: a previous run stopped between its Iceberg and PostgreSQL "
                    "commits; run `offloader once` (it recovers), then repair"
                )
            if decision.position is None:
                report.status = Status.NOTHING
                return report
            position = list(decision.position)
            explicit = since is not None or until is not None
            days = await _days_asked(services, src, table, ice, position, since, until)
            request = RepairRequest(
                days,
                force=force and explicit,
                dry_run=dry_run,
                retained_until=state.retained_until,
                progress=services.progress,
                intent=state.retention_intent,
            )
            report = await repair(
                services, src, table, ice, seq=decision.seq, position=position, request=request
            )
            if table.view is not None and report.seq is not None and not dry_run:
                # The view reads the repaired snapshot from now on.
                report.view_error = await view.keep(
                    src,
                    watermarks,
                    services.views,
                    table,
                    view.ColdSide.of(ice),
                    clickhouse=services.clickhouse,
                )
    return report


async def _days_asked(
    services: Services,
    src: SourceTable,
    table: TableConfig,
    ice: IcebergTable,
    position: list[Any],
    since: dt.date | None,
    until: dt.date | None,
) -> list[dt.date]:
    """The days in [since, until) up to the watermark's day, or without them the days a
    fresh audit of the table's window finds drifted."""
    last = watermark_day(src.plan.order[0][1], position[0])
    if last is None:
        raise SourceSchemaError(
            f"{table.target}: the watermark {table.watermark!r} is an integer; repair "
            "works on days of a time or date watermark",
            reason="config",
        )
    if since is not None or until is not None:
        end = min(until or last + dt.timedelta(days=1), last + dt.timedelta(days=1))
        first = since or end - dt.timedelta(days=1)
        return [first + dt.timedelta(days=k) for k in range((end - first).days)]
    first_day = last - dt.timedelta(days=max(table.audit_days, 1) - 1)
    hashed = row_hash(src.columns) if table.audit_checksums else None
    recorded = await services.watermarks.day_sums(
        table.target, day_number(first_day), day_number(last)
    )
    hot = HotTable(src.source, src.relation, src.plan.order, hashed)
    found = await audit_days(hot, ice, position, (first_day, last), recorded=recorded)
    return [d.day for d in found.drifted]
