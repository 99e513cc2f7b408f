"""One table's offload: lock, introspect, reconcile, page, convert, append, commit.

Fetching runs in its own task and hands pages over a one-slot stream, so page
n+1 is read from ClickHouse while page n converts (in a worker thread) and
earlier pages are appended to Iceberg. Pages accumulate into appends of
`append_rows`, so a cycle adds about one snapshot per table, none when idle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from offloader import audit, convert, faults, plan, repair
from offloader.config import ClickHouseConfig, TableConfig
from offloader.errors import Locked, TableError
from offloader.iceberg import IcebergCatalog, IcebergTable, WrittenFiles
from offloader.pages import FILE_ROWS, Fetched, Reader, keyset_pages, page_reader, to_batch
from offloader.plan import SourcePlan, plan_source
from offloader.source import Source, table_columns, transport_of
from offloader.source import session as source_session
from offloader.sql import (
    NOW_MICROS,
    behind_query,
    page_query,
    quote_ident,
    read_from,
    watermark_int,
)
from offloader.watermarks import Watermarks

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TableReport:
    target: str
    source: str
    status: str = "ok"  # ok | idle | failed | skipped
    rows: int = 0
    pages: int = 0
    snapshots: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    recovered: bool = False
    watermark: list[Any] | None = None
    more: bool = False  # stopped at max_rows_per_cycle with rows left
    stages: dict[str, float] = field(default_factory=dict)
    rows_behind: int | None = None  # after the run: rows ClickHouse holds past the watermark
    lag_seconds: float | None = None  # age of the oldest of them (plan.behind)
    drifted: list[dict[str, Any]] | None = None  # audited days whose tiers differ (after repair)
    repaired: list[str] = field(default_factory=list)  # days the late_rows policy repaired

    def as_dict(self) -> dict[str, Any]:
        d = {
            "target": self.target,
            "source": self.source,
            "status": self.status,
            "rows": self.rows,
            "pages": self.pages,
            "snapshots": self.snapshots,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }
        if self.reason:
            d["reason"] = self.reason
        if self.recovered:
            d["recovered"] = True
        if self.more:
            d["more"] = True
        if self.watermark is not None:
            d["watermark"] = self.watermark
        if self.drifted is not None:
            d["drifted"] = self.drifted
        if self.repaired:
            d["repaired"] = self.repaired
        if self.rows_behind is not None:
            d["rows_behind"] = self.rows_behind
            d["lag_seconds"] = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


@dataclass(slots=True)
class Services:
    """What a table run needs from the outside world, shared across a cycle."""

    clickhouse: ClickHouseConfig
    catalog: IcebergCatalog
    watermarks: Watermarks
    cpu: anyio.CapacityLimiter
    io: anyio.CapacityLimiter


async def offload_table(
    services: Services,
    table: TableConfig,
    timeout: float | None = None,
    stopping: anyio.Event | None = None,
) -> TableReport:
    """Run one table to its high-water mark within `timeout` seconds.

    Never raises for a table problem: it is reported. Commits made before a
    timeout are kept; the rest continues next cycle.
    """
    report = TableReport(target=table.target, source=table.source)
    started = time.monotonic()
    started_at = finished_at = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    log.info("table started", extra={"table": table.target, "run_id": run_id})
    try:
        with anyio.move_on_after(timeout) as deadline:
            async with services.watermarks.table_lock(table.target):
                # The run's interval in the log is the time it held the table's lock.
                started_at = datetime.now(UTC)
                try:
                    await _run(services, table, report, run_id, stopping)
                finally:
                    finished_at = datetime.now(UTC)
        if deadline.cancelled_caught:
            report.status = "failed"
            report.reason = "timeout"
            report.error = (
                f"{table.target}: table_timeout of {timeout:g}s exceeded after {report.rows} rows "
                "(committed rows are kept; the rest continues next cycle)"
            )
    except TableError as exc:
        report.status = "skipped" if isinstance(exc, Locked) else "failed"
        report.error = str(exc)
        report.reason = exc.reason
    except Exception as exc:  # a bug, not an expected failure: keep the traceback in the log
        log.exception("table run crashed", extra={"table": table.target})
        report.status = "failed"
        report.error = f"{table.target}: internal error {type(exc).__name__}: {exc}"
        report.reason = "internal"
    finally:
        report.seconds = time.monotonic() - started
    if report.status != "skipped":
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await services.watermarks.record_run(
                    run_id=run_id,
                    target=table.target,
                    started_at=started_at,
                    finished_at=finished_at if finished_at > started_at else datetime.now(UTC),
                    status=report.status,
                    rows=report.rows,
                    pages=report.pages,
                    snapshots=report.snapshots,
                    seconds=report.seconds,
                    error=report.error,
                )
            except TableError as exc:
                log.warning(
                    "could not record run", extra={"table": table.target, "error": str(exc)}
                )
    # Logged last, once the run is recorded, so `status` agrees with the log line.
    event = {"failed": log.error, "skipped": log.info}.get(report.status, log.info)
    event(
        f"table {report.status}",
        extra={
            "table": table.target,
            **{k: v for k, v in report.as_dict().items() if k != "target"},
        },
    )
    return report


def _stage(report: TableReport, name: str, seconds: float) -> None:
    report.stages[name] = report.stages.get(name, 0.0) + seconds


async def _run(
    services: Services,
    table: TableConfig,
    report: TableReport,
    run_id: str,
    stopping: anyio.Event | None,
) -> None:
    label = table.target
    db = table.source_database or services.clickhouse.database
    source = read_from(db, table.source_table, table.final)
    transport = transport_of(services.clickhouse, table)
    async with source_session(services.clickhouse, label, transport) as ch:
        t0 = time.monotonic()
        src = plan_source(table, await table_columns(ch, db, table.source_table))
        ice = await anyio.to_thread.run_sync(
            services.catalog.ensure,
            table.target,
            src.schema,
            table.partition_by,
            (table.watermark, *table.keys),
            limiter=services.io,
        )
        state = await services.watermarks.get(table.target, table.source)
        mark = await anyio.to_thread.run_sync(ice.latest_mark, limiter=services.io)
        decision = plan.reconcile(
            table.target,
            state.seq,
            state.position,
            mark.seq if mark else None,
            mark.position if mark else None,
        )
        if decision.action == "recover":
            assert mark is not None
            log.warning(
                "recovering watermark from Iceberg: a previous run stopped between its Iceberg "
                "and PostgreSQL commits",
                extra={"table": label, "from_seq": state.seq, "to_seq": mark.seq},
            )
            await services.watermarks.commit(
                table.target,
                prev_seq=state.seq,
                seq=mark.seq,
                position=mark.position,
                rows=mark.rows,
                run_id=mark.run_id,
                snapshot_id=mark.snapshot_id,
                recovered=True,
            )
            report.recovered = True
        seq, position = decision.seq, decision.position

        wm_name, wm_type = src.order[0]
        wm_q = quote_ident(wm_name)
        hwm_row = await ch.rows(
            f"SELECT {watermark_int(wm_type, f'max({wm_q})')}, count(), {NOW_MICROS} FROM {source}"
        )
        max_value = convert.watermark_from_int(wm_type, hwm_row[0][0])
        count, now = int(hwm_row[0][1]), convert.from_micros(hwm_row[0][2])
        _stage(report, "prepare", time.monotonic() - t0)
        if not count:
            report.status = "idle"
            report.watermark = list(position) if position else None
            behind = plan.behind(0, None, now, wm_type)
            report.rows_behind, report.lag_seconds = behind.rows, behind.seconds
            return
        upto = plan.high_water_mark(max_value, now, table.lag, wm_type)
        report.watermark = list(position) if position else None

        reader = page_reader(ch, table, src, source)
        send, receive = anyio.create_memory_object_stream[Fetched](0)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    _fetch, reader, table, src, source, position, upto, send, report, stopping
                )
                seq = await _consume(services, table, src, ice, receive, seq, run_id, report)
        except BaseExceptionGroup as group:
            raise _single(group) from None
        if report.rows == 0:
            report.status = "idle"
        if not await _audit(services, table, src, source, db, ch, ice, seq, report):
            await _measure_behind(ch, src, source, report)


async def _audit(
    services: Services,
    table: TableConfig,
    src: SourcePlan,
    source: str,
    db: str,
    ch: Source,
    ice: IcebergTable,
    seq: int,
    report: TableReport,
) -> bool:
    """Compare both tiers per day over the audit window (audit.py) after the run's
    commits; with `late_rows = "repair"`, replace the drifted days at once. The same
    query tells how far the table is behind (report.rows_behind, lag_seconds). Returns
    whether it ran (the table has an audit window)."""
    wm_type = src.order[0][1]
    bounds = audit.window(wm_type, report.watermark, table.audit_days)
    if bounds is None or report.watermark is None or report.more:
        # `more`: a backlog is being worked off in chunks; the run that catches up audits
        # (and the audit window would mostly hold rows this very run just wrote).
        return False
    position = list(report.watermark)
    t0 = time.monotonic()
    try:
        found = await audit.audit_days(ch, source, src.order, position, ice, *bounds, services.io)
    except TableError as exc:
        log.warning("could not audit", extra={"table": table.target, "error": str(exc)})
        return False
    oldest = found.oldest_waiting
    first = convert.watermark_from_int(wm_type, oldest) if oldest is not None else None
    now = convert.from_micros(found.server_now) if found.server_now else datetime.now(UTC)
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
                "policy": table.late_rows,
            },
        )
    drifted = found.drifted
    if drifted and table.late_rows == "repair":
        fixed = await repair.repair(
            ch,
            services.watermarks,
            table,
            src,
            source,
            db,
            ice,
            seq=seq,
            position=position,
            days=[d.day for d in drifted],
            limiter=services.io,
        )
        report.repaired = [d.day.isoformat() for d in fixed.days]
        if fixed.seq is not None:
            report.snapshots += 1
        for why in fixed.refused:
            log.error("late rows not repaired", extra={"table": table.target, "reason": why})
        drifted = [d for d in drifted if d.day.isoformat() not in report.repaired]
    report.drifted = [d.as_dict() for d in drifted]
    _stage(report, "audit", time.monotonic() - t0)
    return True


async def _measure_behind(ch: Source, src: SourcePlan, source: str, report: TableReport) -> None:
    """How far Iceberg is behind ClickHouse after the run (status and metrics agree on
    it): one small query that reads only the granules past the watermark. Its failure
    does not fail a run whose commits are done."""
    wm_type = src.order[0][1]
    try:
        rows, oldest, now = (await ch.rows(behind_query(source, src.order, report.watermark)))[0]
    except TableError as exc:
        log.warning("could not measure lag", extra={"table": report.target, "error": str(exc)})
        return
    first = convert.watermark_from_int(wm_type, oldest) if rows else None
    behind = plan.behind(int(rows), first, convert.from_micros(now), wm_type)
    report.rows_behind, report.lag_seconds = behind.rows, behind.seconds


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that matters out of a task group's group: the first that is not a
    cancellation (a failing fetch cancels the consumer and vice versa)."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves = list(_leaves(group))
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _fetch(
    reader: tuple[Reader, list[str]],
    table: TableConfig,
    src: SourcePlan,
    source: str,
    after: Sequence[Any] | None,
    upto: Any,
    send: MemoryObjectSendStream[Fetched],
    report: TableReport,
    stopping: anyio.Event | None,
) -> None:
    read, select = reader

    async def timed_read(query: str, select: Sequence[str]) -> Fetched:
        t0 = time.monotonic()
        page = await read(query, select)
        _stage(report, "clickhouse_read", time.monotonic() - t0)
        faults.point("read")
        return page

    def query(after: Sequence[Any] | None) -> str:
        return page_query(
            source=source,
            select=select,
            order=src.order,
            after=after,
            upto=upto,
            limit=table.batch_rows,
        )

    def stopped() -> bool:
        # Shutting down: commit what was read, leave the rest for the next start.
        return stopping is not None and stopping.is_set()

    fetched = 0
    pages = keyset_pages(timed_read, select, query, after, table.batch_rows)
    async with send, aclosing(pages):
        if stopped():
            report.more = True
            return
        async for page in pages:
            log.debug(
                "page read",
                extra={"table": table.target, "rows": page.rows, "page": report.pages + 1},
            )
            await send.send(page)
            fetched += page.rows
            if page.rows < table.batch_rows:
                return
            if fetched >= table.max_rows_per_cycle:
                report.more = True
                log.info(
                    "max_rows_per_cycle reached; the rest waits for the next cycle",
                    extra={"table": table.target, "rows": fetched},
                )
                return
            if stopped():
                report.more = True
                return


Chunk = tuple[list[pa.RecordBatch], list[Any]]


async def _consume(
    services: Services,
    table: TableConfig,
    src: SourcePlan,
    ice: IcebergTable,
    receive: MemoryObjectReceiveStream[Fetched],
    seq: int,
    run_id: str,
    report: TableReport,
) -> int:
    """Convert pages as they arrive and hand chunks to a writer task, so writing
    Parquet overlaps reading and converting the next pages."""
    committed = [seq]
    send_chunk, receive_chunk = anyio.create_memory_object_stream[Chunk](0)

    async def writer() -> None:
        written: list[WrittenFiles] = []
        rows = 0
        position: list[Any] | None = None
        async with receive_chunk:
            async for batches, at in receive_chunk:
                t0 = time.monotonic()
                files = await anyio.to_thread.run_sync(
                    ice.write_files, batches, table.watermark, limiter=services.io
                )
                _stage(report, "iceberg_write", time.monotonic() - t0)
                faults.point("write")
                written.append(files)
                rows += files.rows
                position = at
                if rows >= table.append_rows:
                    committed[0] = await _commit(
                        services, table, ice, written, position, committed[0], run_id, report
                    )
                    written, rows = [], 0
        if written and position is not None:
            committed[0] = await _commit(
                services, table, ice, written, position, committed[0], run_id, report
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        async with send_chunk:
            await _convert_pages(services, table, src, receive, send_chunk, report)
    return committed[0]


async def _convert_pages(
    services: Services,
    table: TableConfig,
    src: SourcePlan,
    receive: MemoryObjectReceiveStream[Fetched],
    chunks: MemoryObjectSendStream[Chunk],
    report: TableReport,
) -> None:
    chunk_rows = min(FILE_ROWS, table.append_rows)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    position: list[Any] | None = None
    async with receive:
        async for page in receive:
            t0 = time.monotonic()
            batch = await anyio.to_thread.run_sync(to_batch, table, src, page, limiter=services.cpu)
            _stage(report, "convert", time.monotonic() - t0)
            faults.point("convert")
            position = page.position
            del page  # the driver's Python objects are the bulk of a page's memory
            pending.append(batch)
            pending_rows += batch.num_rows
            report.pages += 1
            if pending_rows >= chunk_rows:
                await chunks.send((pending, position))
                pending, pending_rows = [], 0
    if pending and position is not None:
        await chunks.send((pending, position))


async def _commit(
    services: Services,
    table: TableConfig,
    ice: IcebergTable,
    written: list[WrittenFiles],
    position: list[Any],
    seq: int,
    run_id: str,
    report: TableReport,
) -> int:
    """Commit the written files to Iceberg, then advance PostgreSQL. Shielded: once the
    Iceberg commit starts, a deadline or shutdown waits for both commits to finish."""
    rows = sum(w.rows for w in written)
    with anyio.CancelScope(shield=True):
        t0 = time.monotonic()
        mark = await anyio.to_thread.run_sync(
            lambda: ice.commit_files(written, expected_seq=seq, position=position, run_id=run_id),
            limiter=services.io,
        )
        _stage(report, "iceberg_commit", time.monotonic() - t0)
        faults.point("iceberg_commit")
        t0 = time.monotonic()
        await services.watermarks.commit(
            table.target,
            prev_seq=seq,
            seq=mark.seq,
            position=position,
            rows=rows,
            run_id=run_id,
            snapshot_id=mark.snapshot_id,
        )
        _stage(report, "watermark_commit", time.monotonic() - t0)
    report.rows += rows
    report.bytes += sum(w.nbytes for w in written)
    report.snapshots += 1
    report.watermark = position
    log.info(
        "committed",
        extra={"table": table.target, "rows": rows, "seq": mark.seq, "watermark": position},
    )
    return mark.seq
