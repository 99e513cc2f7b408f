"""One table's offload: lock, introspect, reconcile, page, convert, append, commit.

A `TableRun` holds everything one run of one table needs (services, table, source
plan, report, run id, committed seq) and goes through its steps: `prepare`
(introspect, open the Iceberg table, reconcile state, the high-water mark),
`transfer` (page, convert, write, commit) and `audit` (late rows, lag).

Fetching runs in its own task and hands pages over a one-slot stream, so page
n+1 is read from ClickHouse while page n converts (in a worker thread) and
earlier pages are written to Iceberg by a third task. Pages accumulate into appends
of `append_rows`, so a cycle adds about one snapshot per table, none when idle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import aclosing
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from offloader import audit, checkup, cursor, days, faults, plan, view
from offloader.config import TableConfig
from offloader.errors import OffloaderError
from offloader.iceberg import WrittenFiles
from offloader.report import TableReport
from offloader.services import Services
from offloader.source import Page, Scan, keyset_pages, open_table, scan_complete
from offloader.sql import behind_query, parts_fingerprint
from offloader.state import DaySum, ViewState, decode_days, encode_days

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger(__name__)

# Converted pages are written to Parquet data files in chunks of about this many rows
# (or append_rows if smaller) while the run goes on; a commit then adds the files
# of up to append_rows rows as one snapshot. Memory stays bounded by a chunk and a
# few pages instead of a whole append.
FILE_ROWS = 250_000


class TableRun:
    """One run of one table, under its lock."""

    def __init__(
        self,
        services: Services,
        table: TableConfig,
        report: TableReport,
        run_id: str,
        stopping: anyio.Event | None = None,
    ) -> None:
        self.services = services
        self.table = table
        self.report = report
        self.run_id = run_id
        self.stopping = stopping
        self.seq = 0  # the committed offloader seq (Iceberg marker and PostgreSQL)
        self.audit_ahead: audit.DaysAhead | None = None  # checkup.read_ahead

    async def run(self) -> None:
        async with open_table(self.services.clickhouse, self.table) as src:
            self.src = src
            self.hashed = audit.checksummed(self.table, src.order, src.columns)
            # Rows (and row-hash sums) per day are recorded with each commit for the audit.
            audited = audit.audited(self.table, src.order)
            self.day_column = self.table.watermark if audited else None
            self.day_kind = days.kind_of(src.order[0][1])
            upto = await self.prepare()
            if upto is None:
                # Nothing to read: Iceberg is not touched unless the audit of what
                # PostgreSQL recorded finds a day to look at.
                if not await checkup.audit_recorded(self):
                    await self.open_iceberg()
                    await checkup.audit(self)
            else:
                # The transport refuses a table it cannot store exactly before Iceberg is
                # touched (no table is created for it).
                self.pager = src.source.pager(self.table, src.plan, self.hashed)
                await self.transfer(upto, opening=True)
                if self.report.rows == 0:
                    self.report.status = "idle"
                if not await checkup.audit(self):
                    await checkup.measure_behind(self)
            await self.keep_view()

    async def keep_view(self) -> None:
        """Bring the view over both tiers to the committed position unless it is there
        (a commit replaced it; else: a first run, a crash before the replacement, a
        failed replacement, a repair, a changed source schema or config). An idle run
        whose view is current makes no query for it."""
        table = self.table
        if table.view is None and not self.state.has_view:
            return
        store = self.services.watermarks
        known = await store.view_state(table.target)
        if known is not None and known.name != table.view:
            # Turned off or renamed: the old view would read a snapshot expiry removes.
            await view.drop(self.src.source, store, known.name, target=table.target)
            known = None
        if table.view is None:
            return
        position = self.report.watermark
        spec = view.spec_of(self.src, table, self.seq, position)
        cold: view.ColdSide | None = None
        if known is not None and known.error is None and known.metadata is not None:
            cold = view.ColdSide(self.ice_location(known), known.metadata, known.snapshot_id)
        if position is None:
            cold = None
        elif known is None or known.seq != self.seq or cold is None:
            if getattr(self, "ice", None) is None:
                await self.open_iceberg()
                spec = view.spec_of(self.src, table, self.seq, self.report.watermark)
            cold = self._cold()
        views = self.services.views
        current = known is not None and known.error is None
        if current and known is not None and known.signature == spec.signature(cold, views):
            return
        self.report.view_error = await view.keep(
            self.src.source, self.services.watermarks, views, spec, cold, target=table.target
        )

    def ice_location(self, known: ViewState) -> str:
        """The table location of a recorded view's metadata file (its parent's parent)."""
        assert known.metadata is not None
        return known.metadata.rsplit("/metadata/", 1)[0]

    def _cold(self) -> view.ColdSide:
        """The cold side as this run's Iceberg table is now (after its last commit)."""
        return view.ColdSide(self.ice.location, self.ice.metadata_location, self.ice.snapshot_id)

    async def prepare(self) -> Any | None:
        """Read the committed state and what ClickHouse holds past it (one query that
        reads only the granules after the position): the high-water mark this run may
        read up to, or None when there is nothing to read (the run is idle)."""
        t0 = time.monotonic()
        services, table, report, src = self.services, self.table, self.report, self.src
        self.state = await services.watermarks.get(table.target, table.source)
        self.seq = self.state.seq
        if self.state.position is None:
            # Never offloaded: map every column now, so a column offloader cannot store
            # fails the table at once, even while the source is empty.
            _ = src.plan
        report.watermark = list(self.state.position) if self.state.position else None
        wm_type = src.order[0][1]
        bounds = audit.window(
            wm_type, report.watermark, table.audit_days, self.state.retained_until
        )
        self.days: audit.ClickHouseDays | None = None
        self.days_before: date | None = None
        self.parts = ""
        parts = parts_fingerprint(src.database, table.source_table)
        known = checkup.agreed_window(self)
        if known is not None:
            # The window agreed at this seq: while the source's parts are the same, so
            # are its rows (the idle audit need not read them), and when nothing was
            # waiting then, nothing is now (the run is idle).
            self.parts = str(await src.source.scalar(f"SELECT {parts}"))
            if self.parts != known.parts:
                known = None  # changed: read the window again, below
            elif known.caught_up:
                report.rows_behind, report.lag_seconds = 0, 0.0
                self.waiting = 0
                report.stage("prepare", time.monotonic() - t0)
                report.status = "idle"
                return None
        if known is None and bounds is not None and report.watermark is not None:
            # One grouped query is both this prepare and an idle run's audit: the days of
            # the window up to the position, and the rows past it (all in the window).
            self.days = await audit.clickhouse_days(
                src.source,
                src.relation,
                src.order,
                report.watermark,
                bounds[0],
                self.hashed,
                parts,
            )
            self.days_before = bounds[1]
            waiting, oldest, newest = (
                self.days.waiting,
                self.days.oldest_waiting,
                self.days.newest_waiting,
            )
            now_micros = self.days.server_now
        else:
            query = behind_query(src.relation, src.order, report.watermark)
            waiting, oldest, now_micros, newest = (await src.source.rows(query))[0]
        now = cursor.from_micros(now_micros) if now_micros is not None else datetime.now(UTC)
        first = cursor.watermark_from_int(wm_type, oldest) if int(waiting) else None
        behind = plan.behind(int(waiting), first, now, wm_type)
        report.rows_behind, report.lag_seconds = behind.rows, behind.seconds
        self.waiting = int(waiting)
        report.stage("prepare", time.monotonic() - t0)
        if not self.waiting:
            report.status = "idle"
            return None
        top = cursor.watermark_from_int(wm_type, newest)
        upto = plan.high_water_value(top, now, table.lag, wm_type)
        if first is not None and first > upto:  # only rows still inside `lag`
            report.status = "idle"
            return None
        return cursor.encode_value(upto)

    async def open_iceberg(self) -> None:
        """Open (create, evolve) the Iceberg table and reconcile PostgreSQL with its
        newest commit marker: a run that died between its Iceberg and PostgreSQL
        commits is recovered here, before anything new is written."""
        t0 = time.monotonic()
        services, table, report, src, state = (
            self.services,
            self.table,
            self.report,
            self.src,
            self.state,
        )
        catalog = await services.open_iceberg()
        self.ice = await anyio.to_thread.run_sync(
            catalog.ensure,
            table.target,
            src.plan.schema,
            table.partition_by,
            (table.watermark, *table.keys),
            limiter=services.io,
        )
        mark = await anyio.to_thread.run_sync(self.ice.latest_mark, limiter=services.io)
        decision = plan.reconcile_with(table.target, state, mark)
        if decision.action == "recover":
            assert mark is not None
            days, replace = decode_days(mark.days)
            log.warning(
                "recovering watermark from Iceberg: a previous run stopped between its Iceberg "
                "and PostgreSQL commits",
                extra={"table": table.target, "from_seq": state.seq, "to_seq": mark.seq},
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
                days=days,
                replace_days=replace,
            )
            report.recovered = True
        self.seq = decision.seq
        report.watermark = list(decision.position) if decision.position else None
        report.stage("open_iceberg", time.monotonic() - t0)

    async def transfer(self, upto: Any, opening: bool = False) -> None:
        """Page the rows after the committed position up to `upto` into Iceberg.

        `opening`: open Iceberg (open_iceberg) while the first page is read from
        PostgreSQL's position, as opening (pyiceberg's import, a new table's creation)
        takes as long as a page or more. Nothing is written before Iceberg is open and
        reconciled; if its newer commit marker moves the position (recovery), the page
        read is dropped and the transfer reads again from there."""
        after = self.report.watermark
        send, receive = anyio.create_memory_object_stream[Page](0)
        moved = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._fetch, Scan(self.src.relation, upto), after, send, tg)
                if opening:
                    await self.open_iceberg()
                    moved = self.report.watermark != after
                if moved:
                    tg.cancel_scope.cancel()
                    receive.close()
                else:
                    await self._consume(receive)
        except BaseExceptionGroup as group:
            raise _single(group) from None
        if moved:
            # Its read-ahead (if the dropped read was complete) saw ClickHouse before the
            # rows are read again: not the rows the audit will compare.
            self.audit_ahead = None
            await self.transfer(upto)

    def _stopped(self) -> bool:
        # Shutting down: commit what was read, leave the rest for the next start.
        return self.stopping is not None and self.stopping.is_set()

    async def _fetch(
        self,
        scan: Scan,
        after: list[Any] | None,
        send: MemoryObjectSendStream[Page],
        tg: TaskGroup,
    ) -> None:
        """Read the scan's pages into `send`. When the scan is complete, the audit's
        ClickHouse query for its last position starts at once (checkup.read_ahead), so
        it runs while the last pages are written and committed."""
        table, report = self.table, self.report
        fetched = 0
        position = after
        pages = keyset_pages(
            self.pager, scan, after, table.batch_rows, self.waiting, target=table.target
        )
        async with send, aclosing(pages):
            if self._stopped():
                report.more = True
                return
            while True:
                t0 = time.monotonic()
                page = await anext(pages, None)
                report.stage("clickhouse_read", time.monotonic() - t0)
                if page is None:
                    self._read_ahead(tg, position)
                    return
                faults.point("read")
                log.debug(
                    "page read",
                    extra={"table": table.target, "rows": page.rows, "page": report.pages + 1},
                )
                fetched += page.rows
                position = page.position
                done = scan_complete(page, table.batch_rows, fetched, self.waiting)
                if done:
                    self._read_ahead(tg, position)
                await send.send(page)
                if done:
                    return
                if fetched >= table.max_rows_per_cycle:
                    report.more = True
                    log.info(
                        "max_rows_per_cycle reached; the rest waits for the next cycle",
                        extra={"table": table.target, "rows": fetched},
                    )
                    return
                if self._stopped():
                    report.more = True
                    return

    def _read_ahead(self, tg: TaskGroup, position: list[Any] | None) -> None:
        if position is not None and self.day_column is not None:
            tg.start_soon(checkup.read_ahead, self, list(position))

    async def _consume(self, receive: MemoryObjectReceiveStream[Page]) -> None:
        """Convert pages as they arrive and hand chunks to a writer task, so writing
        Parquet overlaps reading and converting the next pages."""
        if self.services.progress is not None:
            total = min(self.waiting, self.table.max_rows_per_cycle)
            self.services.progress.start(self.table.target, total)
        send_chunk, receive_chunk = anyio.create_memory_object_stream[_Chunk](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, receive_chunk)
            async with send_chunk:
                await self._convert(receive, send_chunk)

    async def _convert(
        self, receive: MemoryObjectReceiveStream[Page], chunks: MemoryObjectSendStream[_Chunk]
    ) -> None:
        chunk_rows = min(FILE_ROWS, self.table.append_rows)
        pending: list[pa.RecordBatch | bytes] = []
        pending_rows = 0
        sums: dict[int, DaySum] = {}
        position: list[Any] | None = None
        async with receive:
            async for page in receive:
                item: pa.RecordBatch | bytes | None = page.encoded()
                rows = page.rows
                summed = await page.summed() if self.day_column else None
                if item is not None:  # a Parquet file ClickHouse encoded: stored as it is
                    page_sums = summed or {}
                else:
                    t0 = time.monotonic()
                    item, page_sums = await anyio.to_thread.run_sync(
                        audit.convert_page,
                        page,
                        self.day_column,
                        self.hashed,
                        summed,
                        self.day_kind,
                        limiter=self.services.cpu,
                    )
                    self.report.stage("convert", time.monotonic() - t0)
                faults.point("convert")
                position = page.position
                del page  # the driver's Python objects are the bulk of a page's memory
                pending.append(item)
                pending_rows += rows
                audit.add_sums(sums, page_sums)
                self.report.pages += 1
                if self.services.progress is not None:
                    self.services.progress.advance(self.table.target, rows)
                if pending_rows >= chunk_rows:
                    await chunks.send((pending, position, sums))
                    pending, pending_rows, sums = [], 0, {}
        if pending and position is not None:
            await chunks.send((pending, position, sums))

    async def _write(self, receive: MemoryObjectReceiveStream[_Chunk]) -> None:
        """Write chunks as data files; commit every `append_rows` rows and at the end."""
        written: list[WrittenFiles] = []
        rows = 0
        sums: dict[int, DaySum] = {}
        position: list[Any] | None = None
        async with receive:
            async for items, at, chunk_sums in receive:
                t0 = time.monotonic()
                encoded = [i for i in items if isinstance(i, bytes)]
                if encoded:
                    files = await anyio.to_thread.run_sync(
                        self.ice.add_encoded, encoded, limiter=self.services.io
                    )
                else:
                    batches = [i for i in items if not isinstance(i, bytes)]
                    files = await anyio.to_thread.run_sync(
                        self.ice.write_files,
                        batches,
                        self.table.watermark,
                        limiter=self.services.io,
                    )
                self.report.stage("iceberg_write", time.monotonic() - t0)
                faults.point("write")
                written.append(files)
                rows += files.rows
                audit.add_sums(sums, chunk_sums)
                position = at
                if rows >= self.table.append_rows:
                    await self._commit(written, position, sums)
                    written, rows, sums = [], 0, {}
        if written and position is not None:
            await self._commit(written, position, sums)

    async def _commit(
        self, written: list[WrittenFiles], position: list[Any], sums: dict[int, DaySum]
    ) -> None:
        """Commit the written files to Iceberg, then advance PostgreSQL. Shielded: once the
        Iceberg commit starts, a deadline or shutdown waits for both commits to finish."""
        services, table, report = self.services, self.table, self.report
        rows = sum(w.rows for w in written)
        with anyio.CancelScope(shield=True):
            t0 = time.monotonic()
            mark = await anyio.to_thread.run_sync(
                lambda: self.ice.commit_files(
                    written,
                    expected_seq=self.seq,
                    position=position,
                    run_id=self.run_id,
                    days=encode_days(sums) if sums else None,
                ),
                limiter=services.io,
            )
            report.stage("iceberg_commit", time.monotonic() - t0)
            faults.point("iceberg_commit")
            t0 = time.monotonic()
            await services.watermarks.commit(
                table.target,
                prev_seq=self.seq,
                seq=mark.seq,
                position=position,
                rows=rows,
                run_id=self.run_id,
                snapshot_id=mark.snapshot_id,
                days=sums,
            )
            report.stage("watermark_commit", time.monotonic() - t0)
        self.seq = mark.seq
        report.rows += rows
        report.bytes += sum(w.nbytes for w in written)
        report.snapshots += 1
        report.watermark = position
        log.info(
            "committed",
            extra={"table": table.target, "rows": rows, "seq": mark.seq, "watermark": position},
        )
        if table.view is not None:
            # The view moves with every commit: its cold side is this commit's metadata
            # file (older ones are deleted after metadata_versions more commits).
            report.view_error = await view.keep(
                self.src.source,
                services.watermarks,
                services.views,
                view.spec_of(self.src, table, mark.seq, position),
                self._cold(),
                target=table.target,
            )


# Converted batches (or the Parquet files ClickHouse encoded), the position they reach
# and their per-day sums.
_Chunk = tuple[list["pa.RecordBatch | bytes"], list[Any], dict[int, DaySum]]


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that matters out of a task group's group: offloader's own first (a
    failing writer closes its stream, so the converter's send fails with a
    BrokenResourceError that is only the consequence), then any that is not a
    cancellation or a closed stream (a failing fetch cancels the consumer and vice
    versa)."""
    cancelled = anyio.get_cancelled_exc_class()
    echoes = (cancelled, anyio.BrokenResourceError, anyio.ClosedResourceError)
    leaves = list(_leaves(group))
    for kinds in (OffloaderError, Exception):
        for exc in leaves:
            if isinstance(exc, kinds) and not isinstance(exc, echoes):
                return exc
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
