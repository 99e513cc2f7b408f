"""After a table run's commits: the late-rows audit of its window (alerting on drifted
days, or repairing them with `late_rows = "repair"`) and how far Iceberg is behind
ClickHouse (rows and seconds, for status and metrics)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from offloader import cursor, plan
from offloader.config import TableConfig
from offloader.days import day_number, day_of_number, watermark_day
from offloader.errors import TableError
from offloader.report import TableReport
from offloader.source import SourceTable
from offloader.sql.scan import behind_query
from offloader.sql.text import RowHash
from offloader.state import AuditAgreed, Committed, DaySum, RetentionIntent, TableState
from offloader.tiers.audit import (
    Audit,
    DayCount,
    DaysAhead,
    HotTable,
    KnownDays,
    ReadBefore,
    agrees,
    audit_days,
    clickhouse_days,
    reread_from,
    window,
)
from offloader.tiers.services import Services
from offloader.types import ChType

if TYPE_CHECKING:
    from offloader.iceberg.table import IcebergTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a table run's prepare found before reading a row (pipeline.TableRun.prepare)."""

    state: TableState  # the committed state read from PostgreSQL
    waiting: int  # rows past the committed position
    upto: Any | None  # the high-water mark this run reads up to (encoded); None: idle
    known: KnownDays | None = None  # ClickHouse's side of the window, if read
    parts: str = ""  # the source's parts_fingerprint when read apart from the window


@dataclass(frozen=True, slots=True)
class Check:
    """What the checks of one table run read: its services, table and source, the row
    hash the audit sums, and what prepare found."""

    services: Services
    table: TableConfig
    src: SourceTable
    hashed: RowHash | None
    prepared: Prepared

    @property
    def hot(self) -> HotTable:
        return HotTable(self.src.source, self.src.relation, self.src.order, self.hashed)

    @property
    def wm_type(self) -> ChType:
        return self.src.order[0][1]

    def window(self, position: Sequence[Any] | None) -> tuple[dt.date, dt.date] | None:
        """The audit window at `position` (audit.window), days dropped by retention left out."""
        state = self.prepared.state
        return window(self.wm_type, position, self.table.audit_days, state.retained_until)


class Audited(NamedTuple):
    ran: bool  # the table has an audit window, and it was compared
    committed: Committed  # what is committed after it (a repair of drifted days commits)


class Recorded(NamedTuple):
    agrees: bool  # every day of the window agrees with what PostgreSQL recorded
    known: KnownDays | None  # ClickHouse's days as read, for the audit with Iceberg


async def read_ahead(check: Check, position: list[Any]) -> DaysAhead | None:
    """The audit's ClickHouse query for `position`, the last position of a complete
    scan, started as soon as that page is read: it runs while the run's last files are
    written and committed, and audit() then only compares. All rows up to `position`
    were read before it starts, so it sees what a query after the commits would (rows
    arriving later are found by the next cycle either way). A failure leaves the query
    to audit(), which reports it (None)."""
    bounds = audit_bounds(check, position)
    if bounds is None:
        return None
    start = reread_from(bounds[0], check.prepared.known)
    try:
        hot = await clickhouse_days(check.hot, position, start)
    except TableError:
        return None
    return DaysAhead(position, start, hot)


def audit_bounds(check: Check, position: list[Any] | None) -> tuple[dt.date, dt.date] | None:
    """The days a run's audit compares: its window (audit.window), but not the days
    after the one its committed position was in when it started. Every row of those
    days was read by this very run, its row hashes summed by ClickHouse as it read
    them and recorded with the commit: hashing them again would only catch a change
    made during the run, which the next run's audit finds (those days are then at or
    before its starting position). A backfill hashes its rows once, not twice."""
    bounds = check.window(position)
    started = check.prepared.state.position
    if bounds is None or not started:
        return None  # no window, or a first run: it wrote every row it would compare
    start_day = watermark_day(check.wm_type, started[0])
    if start_day is None or start_day < bounds[0]:
        return None
    return bounds[0], min(bounds[1], start_day)


async def audit(
    check: Check,
    ice: IcebergTable,
    report: TableReport,
    *,
    committed: Committed,
    ahead: DaysAhead | None = None,
) -> Audited:
    """Compare both tiers per day over the audit window (tiers/audit.py) after the run's
    commits (`committed`); with `late_rows = "repair"`, replace the drifted days at once.
    The same query tells how far the table is behind (report.rows_behind, lag_seconds).
    `ahead`: the window's ClickHouse side read ahead (read_ahead)."""
    position = committed.watermark
    if position is None or report.more:
        # `more`: a backlog is being worked off in chunks; the run that catches up
        # audits (the window would mostly hold rows this very run just wrote).
        return Audited(False, committed)
    bounds = audit_bounds(check, position)
    if bounds is None:
        if window(check.wm_type, position, check.table.audit_days) is not None:
            report.drifted = []  # every day of the window was written (and summed) now
        return Audited(False, committed)
    t0 = time.monotonic()
    compared = await _compare(check, ice, position, committed.seq, bounds, ahead)
    if compared is None:
        return Audited(False, committed)
    found, recorded = compared
    note_unchecked(check, report, recorded, bounds)
    behind(check.wm_type, report, found.waiting, found.oldest_waiting, found.server_now)
    intent = check.prepared.state.retention_intent
    drifted = _leave_held(check.table.target, found.drifted, intent)
    _warn_drifted(check.table, drifted)
    if drifted and check.table.late_rows == "repair":
        repaired = await _repair_drifted(check, ice, report, committed, position, drifted)
        committed, drifted = repaired
    report.drifted = [d.as_dict() for d in drifted]
    if not found.drifted and not found.unknown:
        await agreed_after_audit(check, position, committed.seq, found.waiting)
    report.stage("audit", time.monotonic() - t0)
    return Audited(True, committed)


async def _compare(
    check: Check,
    ice: IcebergTable,
    position: list[Any],
    seq: int,
    bounds: tuple[dt.date, dt.date],
    ahead: DaysAhead | None,
) -> tuple[Audit, dict[int, DaySum] | None] | None:
    """Both tiers' days of `bounds` at `position` (audit_days), with the day sums
    PostgreSQL recorded at commit `seq` when the table's rows are hashed; None when
    either side could not be read (logged: the next run audits)."""
    try:
        recorded = None
        if check.hashed is not None:
            recorded = await _recorded(check, seq, bounds)
        found = await audit_days(
            check.hot,
            ice,
            position,
            bounds,
            recorded=recorded,
            read=ReadBefore(check.prepared.known, ahead),
            limiter=check.services.io,
        )
    except TableError as exc:
        log.warning("could not audit", extra={"table": check.table.target, "error": str(exc)})
        return None
    return found, recorded


def _warn_drifted(table: TableConfig, drifted: Sequence[DayCount]) -> None:
    for day in drifted:
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


async def _repair_drifted(
    check: Check,
    ice: IcebergTable,
    report: TableReport,
    committed: Committed,
    position: list[Any],
    drifted: list[DayCount],
) -> tuple[Committed, list[DayCount]]:
    """Replace the `drifted` days at once (`late_rows = "repair"`) below `position`,
    committed at `committed`: what is committed after it (a repair that commits moves
    the seq on, the position stays) and the days still drifted (those it refused)."""
    from offloader.ops import repair  # pyiceberg's rewrite path, loaded when used

    state = check.prepared.state
    request = repair.RepairRequest(
        [d.day for d in drifted], retained_until=state.retained_until, intent=state.retention_intent
    )
    fixed = await repair.repair(
        check.services,
        check.src,
        check.table,
        ice,
        seq=committed.seq,
        position=position,
        request=request,
    )
    report.repaired = [d.day.isoformat() for d in fixed.days]
    if fixed.seq is not None:
        committed = Committed(fixed.seq, committed.position)  # same rows, days replaced
        report.snapshots += 1
    for why in fixed.refused:
        log.error("late rows not repaired", extra={"table": check.table.target, "reason": why})
    return committed, [d for d in drifted if d.day.isoformat() not in report.repaired]


async def agreed_after_audit(check: Check, position: list[Any], seq: int, waiting: int) -> None:
    """Record the window at `position` as agreed at `seq` after audit() found no day
    drifted nor unknown, so that the next idle cycle reads no window while the source's
    parts stay the same (a merge does not move them). The parts are the fingerprint the
    run's prepare read, before any of the run's rows: a change to the source since then
    moved it. Days after the run's starting position were not compared: the run read
    every row of them and recorded their sums with its commit. `waiting`: the rows past
    the position when the audit read ClickHouse."""
    prepared = check.prepared
    parts = prepared.known.hot.fingerprint if prepared.known is not None else prepared.parts
    bounds = check.window(position)
    if not parts or bounds is None:
        return  # not a MergeTree source (or its parts were not read): nothing to trust
    lo, hi = (day_number(d) for d in bounds)
    await _record_agreed(check, AuditAgreed(seq, lo, hi, parts, caught_up=waiting == 0))


async def _record_agreed(check: Check, agreed: AuditAgreed) -> None:
    if agreed == check.prepared.state.agreed:
        return
    try:
        await check.services.watermarks.audit_agreed(check.table.target, agreed)
    except TableError as exc:  # only the next idle audit's cost depends on it
        log.warning(
            "could not record audit", extra={"table": check.table.target, "error": str(exc)}
        )


async def audit_recorded(check: Check, report: TableReport, *, committed: Committed) -> Recorded:
    """An idle run's audit, without Iceberg: ClickHouse's per-day rows (and row-hash
    sums) of the window against what PostgreSQL recorded as committed for those days
    (day_sums, written in the watermark's transaction). Agrees when every day does; not
    when a day needs Iceberg's own counts (a drifted day, or days committed without a
    record: before checksums existed, or recovered after a crash)."""
    table, src, prepared = check.table, check.src, check.prepared
    seq, position = committed.seq, committed.watermark
    bounds = check.window(position)
    if bounds is None or position is None:
        return Recorded(True, None)  # nothing to audit
    t0 = time.monotonic()
    known = agreed_window(prepared.state, bounds, seq)
    if prepared.known is None and known is not None and prepared.parts == known.parts:
        # The source's parts are those of the last audit that agreed at this seq: the
        # same rows, so the same answer without hashing the window again.
        report.drifted = []
        return Recorded(True, None)
    try:
        recorded = await _recorded(check, seq, bounds)
        if prepared.known is not None:
            hot = prepared.known.hot
        else:
            fingerprint = src.parts
            hot = await clickhouse_days(check.hot, position, bounds[0], fingerprint)
    except TableError as exc:
        log.warning("could not audit", extra={"table": table.target, "error": str(exc)})
        return Recorded(True, None)
    report.stage("audit", time.monotonic() - t0)
    note_unchecked(check, report, recorded, bounds)
    lo, hi = (day_number(d) for d in bounds)
    if not agrees(lo, hi, hot, recorded, check.hashed):
        return Recorded(False, KnownDays(hot, bounds[1]))  # the Iceberg audit reuses them
    report.drifted = []
    if hot.fingerprint:
        agreed = AuditAgreed(seq, lo, hi, hot.fingerprint, caught_up=prepared.waiting == 0)
        await _record_agreed(check, agreed)
    return Recorded(True, None)


def held(
    days: Sequence[DayCount], intent: RetentionIntent | None
) -> tuple[list[DayCount], list[DayCount]]:
    """`days` split: those a pending retention intent covers, and the others. The first
    are neither audited nor repaired until a retention pass finishes or undoes it (its
    partition may be parked on some shards or nodes and not on others: ClickHouse's
    count of those days is not the day's). Pure."""
    if intent is None:
        return [], list(days)
    return [d for d in days if intent.covers(d.day)], [d for d in days if not intent.covers(d.day)]


def _leave_held(
    target: str, drifted: Sequence[DayCount], intent: RetentionIntent | None
) -> list[DayCount]:
    """The drifted days no pending retention intent covers; each one it covers is
    logged, naming the intent and what to do."""
    kept, rest = held(drifted, intent)
    for day in kept:
        assert intent is not None
        log.warning(
            "day not audited: a pending retention pass holds it",
            extra={"table": target, "day": day.day.isoformat(), "reason": intent.pending(target)},
        )
    return rest


def unchecked_days(
    recorded: dict[int, DaySum], columns_key: str, bounds: tuple[dt.date, dt.date]
) -> list[dt.date]:
    """The days of `bounds` whose row-hash sums were recorded over other columns than
    `columns_key` (committed before the source's columns changed): the audit compares
    only their counts. Pure."""
    lo, hi = (day_number(d) for d in bounds)
    return [
        day_of_number(n)
        for n in range(lo, hi + 1)
        if (kept := recorded.get(n)) is not None and kept.columns_key != columns_key
    ]


def note_unchecked(
    check: Check,
    report: TableReport,
    recorded: dict[int, DaySum] | None,
    bounds: tuple[dt.date, dt.date],
) -> None:
    """Log and report the audited days whose checksums cannot be compared."""
    if check.hashed is None or recorded is None:
        return
    days = unchecked_days(recorded, check.hashed.key, bounds)
    report.unchecked = [d.isoformat() for d in days]
    if days:
        log.warning(
            "the audit compares only the row counts of days whose row-hash sums were "
            "recorded over other columns than the source's now (committed before its "
            "columns changed, or while audit_checksums was off)",
            extra={
                "table": check.table.target,
                "days": report.unchecked,
                "columns": [name for name, _ in check.src.columns],
            },
        )


def agreed_window(
    state: TableState, bounds: tuple[dt.date, dt.date] | None, seq: int
) -> AuditAgreed | None:
    """The record of the table's audit window agreeing in full at this seq (kept with
    the state), if it is this window's (`bounds`): then the source's parts tell whether
    to read the window again, not its rows."""
    known = state.agreed
    if known is None or bounds is None or known.seq != seq:
        return None
    same = (known.first, known.last) == tuple(day_number(d) for d in bounds)
    return known if same else None


# Each table's recorded day sums with the (seq, days) they were read at: they change only
# with a commit, which moves the seq, so a long-running service's idle runs read them
# from PostgreSQL once.
_RECORDED: dict[str, tuple[tuple[int, int, int], dict[int, DaySum]]] = {}


async def _recorded(check: Check, seq: int, bounds: tuple[dt.date, dt.date]) -> dict[int, DaySum]:
    target = check.table.target
    key = (seq, day_number(bounds[0]), day_number(bounds[1]))
    cached = _RECORDED.get(target)
    if cached is not None and cached[0] == key:
        return cached[1]
    recorded = await check.services.watermarks.day_sums(target, key[1], key[2])
    _RECORDED[target] = (key, recorded)
    return recorded


def behind(
    wm_type: ChType, report: TableReport, rows: int, oldest: int | None, now: int | None
) -> None:
    """Record in the report how far Iceberg is behind ClickHouse: `rows` past the
    position, the oldest of them (cursor integer form) and the server's time (micros)."""
    first = cursor.watermark_from_int(wm_type, oldest) if rows and oldest is not None else None
    at = cursor.from_micros(now) if now is not None else datetime.now(UTC)
    lag = plan.behind(int(rows), first, at, wm_type)
    report.rows_behind, report.lag_seconds = lag.rows, lag.seconds


async def measure_behind(src: SourceTable, report: TableReport, committed: Committed) -> None:
    """How far Iceberg is behind ClickHouse after the run (status and metrics agree
    on it): one small query that reads only the granules past the `committed` position.
    Its failure does not fail a run whose commits are done."""
    query = behind_query(src.relation, src.order, committed.watermark)
    try:
        rows, oldest, now, _ = (await src.source.rows(query))[0]
    except TableError as exc:
        log.warning("could not measure lag", extra={"table": report.target, "error": str(exc)})
        return
    behind(src.order[0][1], report, int(rows), oldest, now)
