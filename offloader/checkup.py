"""After a table run's commits: the late-rows audit of its window (alerting on drifted
days, or repairing them with `late_rows = "repair"`) and how far Iceberg is behind
ClickHouse (rows and seconds, for status and metrics)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from offloader import audit as tiers
from offloader import cursor, plan
from offloader.config import TableConfig
from offloader.days import day_number, watermark_day
from offloader.errors import TableError
from offloader.report import TableReport
from offloader.services import Services
from offloader.source import SourceTable
from offloader.sql import RowHash, behind_query, parts_fingerprint
from offloader.state import AuditAgreed, DaySum, TableState

if TYPE_CHECKING:
    from offloader.iceberg.table import IcebergTable

log = logging.getLogger(__name__)


class TableRun(Protocol):
    """What a check needs of a table run (pipeline.TableRun)."""

    @property
    def services(self) -> Services: ...

    table: TableConfig
    report: TableReport
    src: SourceTable
    ice: IcebergTable
    seq: int
    waiting: int  # rows past the position when prepare looked
    state: TableState  # the committed state prepare read
    hashed: RowHash | None
    parts: str  # the source's parts_fingerprint when prepare read it apart from the window
    days: tiers.ClickHouseDays | None  # ClickHouse's side of the window, read by prepare
    days_before: dt.date | None  # ... still true before this day (the position's day)
    audit_ahead: tiers.DaysAhead | None  # read_ahead's result


async def read_ahead(run: TableRun, position: list[Any]) -> None:
    """The audit's ClickHouse query for `position`, the last position of a complete
    scan, started as soon as that page is read: it runs while the run's last files are
    written and committed, and audit() then only compares. All rows up to `position`
    were read before it starts, so it sees what a query after the commits would (rows
    arriving later are found by the next cycle either way). A failure leaves the query
    to audit(), which reports it."""
    src = run.src
    bounds = audit_bounds(run, position)
    if bounds is None:
        return
    start = tiers.reread_from(bounds[0], run.days, run.days_before)
    try:
        hot = await tiers.clickhouse_days(
            src.source, src.relation, src.order, position, start, run.hashed
        )
    except TableError:
        return
    run.audit_ahead = tiers.DaysAhead(position, start, hot)


def audit_bounds(run: TableRun, position: list[Any] | None) -> tuple[dt.date, dt.date] | None:
    """The days a run's audit compares: its window (audit.window), but not the days
    after the one its committed position was in when it started. Every row of those
    days was read by this very run, its row hashes summed by ClickHouse as it read
    them and recorded with the commit: hashing them again would only catch a change
    made during the run, which the next run's audit finds (those days are then at or
    before its starting position). A backfill hashes its rows once, not twice."""
    wm_type = run.src.order[0][1]
    bounds = tiers.window(wm_type, position, run.table.audit_days, run.state.retained_until)
    started = run.state.position
    if bounds is None or not started:
        return None  # no window, or a first run: it wrote every row it would compare
    start_day = watermark_day(wm_type, started[0])
    if start_day is None or start_day < bounds[0]:
        return None
    return bounds[0], min(bounds[1], start_day)


async def audit(run: TableRun) -> bool:
    """Compare both tiers per day over the audit window (audit.py) after the run's
    commits; with `late_rows = "repair"`, replace the drifted days at once. The same
    query tells how far the table is behind (report.rows_behind, lag_seconds).
    Returns whether it ran (the table has an audit window)."""
    table, report, src = run.table, run.report, run.src
    wm_type = src.order[0][1]
    bounds = audit_bounds(run, report.watermark)
    if report.watermark is None or report.more:
        # `more`: a backlog is being worked off in chunks; the run that catches up
        # audits (the window would mostly hold rows this very run just wrote).
        return False
    if bounds is None:
        if tiers.window(wm_type, report.watermark, table.audit_days) is not None:
            report.drifted = []  # every day of the window was written (and summed) now
        return False
    position = list(report.watermark)
    t0 = time.monotonic()
    try:
        recorded = None
        if run.hashed is not None:
            recorded = await _recorded(run, *(day_number(d) for d in bounds))
        found = await tiers.audit_days(
            src.source,
            src.relation,
            src.order,
            position,
            run.ice,
            *bounds,
            run.services.io,
            run.hashed,
            recorded,
            run.days,
            run.days_before,
            run.audit_ahead,
        )
    except TableError as exc:
        log.warning("could not audit", extra={"table": table.target, "error": str(exc)})
        return False
    oldest = found.oldest_waiting
    first = cursor.watermark_from_int(wm_type, oldest) if oldest is not None else None
    now = cursor.from_micros(found.server_now) if found.server_now else datetime.now(UTC)
    behind = plan.behind(found.waiting, first, now, wm_type)
    report.rows_behind, report.lag_seconds = behind.rows, behind.seconds
    for day in found.drifted:
        log.warning(
            "late rows: the tiers differ on a day below the watermark",
            extra={
                "table": table.target,
                "day": day.day.isoformat(),
                "clickhouse_rows": day.clickhouse,
                "iceberg_rows": day.iceberg,
                "values_differ": day.values_differ,
                "policy": table.late_rows,
            },
        )
    drifted = found.drifted
    if drifted and table.late_rows == "repair":
        from offloader import repair  # pyiceberg's rewrite path, loaded when used

        fixed = await repair.repair(
            src,
            run.services.watermarks,
            table,
            run.ice,
            seq=run.seq,
            position=position,
            days=[d.day for d in drifted],
            limiter=run.services.io,
            retained_until=run.state.retained_until,
        )
        report.repaired = [d.day.isoformat() for d in fixed.days]
        if fixed.seq is not None:
            run.seq = fixed.seq
            report.snapshots += 1
        for why in fixed.refused:
            log.error("late rows not repaired", extra={"table": table.target, "reason": why})
        drifted = [d for d in drifted if d.day.isoformat() not in report.repaired]
    report.drifted = [d.as_dict() for d in drifted]
    report.stage("audit", time.monotonic() - t0)
    return True


async def audit_recorded(run: TableRun) -> bool:
    """An idle run's audit, without Iceberg: ClickHouse's per-day rows (and row-hash
    sums) of the window against what PostgreSQL recorded as committed for those days
    (day_sums, written in the watermark's transaction). True when every day agrees;
    False when a day needs Iceberg's own counts (a drifted day, or days committed
    without a record: before checksums existed, or recovered after a crash)."""
    table, report, src = run.table, run.report, run.src
    wm_type = src.order[0][1]
    bounds = tiers.window(wm_type, report.watermark, table.audit_days, run.state.retained_until)
    if bounds is None or report.watermark is None:
        return True  # nothing to audit
    t0 = time.monotonic()
    lo, hi = (day_number(d) for d in bounds)
    known = agreed_window(run)
    if run.days is None and known is not None and run.parts == known.parts:
        # The source's parts are those of the last audit that agreed at this seq: the
        # same rows, so the same answer without hashing the window again.
        report.drifted = []
        return True
    try:
        recorded = await _recorded(run, lo, hi)
        hot = run.days or await tiers.clickhouse_days(
            src.source,
            src.relation,
            src.order,
            list(report.watermark),
            bounds[0],
            run.hashed,
            parts_fingerprint(src.database, table.source_table),
        )
    except TableError as exc:
        log.warning("could not audit", extra={"table": table.target, "error": str(exc)})
        return True
    report.stage("audit", time.monotonic() - t0)
    if not tiers.agrees(lo, hi, hot, recorded, run.hashed):
        run.days, run.days_before = hot, bounds[1]  # the audit with Iceberg reuses them
        return False
    report.drifted = []
    agreed = AuditAgreed(run.seq, lo, hi, hot.fingerprint, caught_up=run.waiting == 0)
    if hot.fingerprint and agreed != run.state.agreed:
        try:
            await run.services.watermarks.audit_agreed(table.target, agreed)
        except TableError as exc:  # only the next idle audit's cost depends on it
            log.warning("could not record audit", extra={"table": table.target, "error": str(exc)})
    return True


def agreed_window(run: TableRun) -> AuditAgreed | None:
    """The record of the table's audit window agreeing in full at this seq (kept with
    the state), if it is this window's: then the source's parts tell whether to read
    the window again, not its rows."""
    known = run.state.agreed
    bounds = tiers.window(
        run.src.order[0][1],
        run.report.watermark,
        run.table.audit_days,
        run.state.retained_until,
    )
    if known is None or bounds is None or known.seq != run.seq:
        return None
    same = (known.first, known.last) == tuple(day_number(d) for d in bounds)
    return known if same else None


# Each table's recorded day sums with the (seq, days) they were read at: they change only
# with a commit, which moves the seq, so a long-running service's idle runs read them
# from PostgreSQL once.
_RECORDED: dict[str, tuple[tuple[int, int, int], dict[int, DaySum]]] = {}


async def _recorded(run: TableRun, lo: int, hi: int) -> dict[int, DaySum]:
    key = (run.seq, lo, hi)
    cached = _RECORDED.get(run.table.target)
    if cached is not None and cached[0] == key:
        return cached[1]
    recorded = await run.services.watermarks.day_sums(run.table.target, lo, hi)
    _RECORDED[run.table.target] = (key, recorded)
    return recorded


async def measure_behind(run: TableRun) -> None:
    """How far Iceberg is behind ClickHouse after the run (status and metrics agree
    on it): one small query that reads only the granules past the watermark. Its
    failure does not fail a run whose commits are done."""
    src, report = run.src, run.report
    wm_type = src.order[0][1]
    query = behind_query(src.relation, src.order, report.watermark)
    try:
        rows, oldest, now, _ = (await src.source.rows(query))[0]
    except TableError as exc:
        log.warning("could not measure lag", extra={"table": report.target, "error": str(exc)})
        return
    first = cursor.watermark_from_int(wm_type, oldest) if rows else None
    behind = plan.behind(int(rows), first, cursor.from_micros(now), wm_type)
    report.rows_behind, report.lag_seconds = behind.rows, behind.seconds
