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
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from offloader import cursor, days, faults, plan
from offloader.config import TableConfig
from offloader.errors import SourceSchemaError, single_error
from offloader.iceberg import Marker, WrittenFiles, footer
from offloader.offload import checkup
from offloader.report import Status, TableReport
from offloader.source import (
    Page,
    Pager,
    SourceTable,
    Survey,
    keyset_pages,
    open_table,
    scan_complete,
    table_columns,
)
from offloader.sql.scan import Scan, behind_query
from offloader.state import Advance, Committed, DaySum, TableState, decode_days, encode_days
from offloader.tiers import audit, view
from offloader.tiers.services import Services
from offloader.tiers.writing import CommitRecord, PageWriter, commit

if TYPE_CHECKING:
    from offloader.iceberg import IcebergTable


log = logging.getLogger(__name__)


async def run_table(
    services: Services,
    table: TableConfig,
    report: TableReport,
    run_id: str,
    stopping: anyio.Event | None = None,
    surveyed: Survey | None = None,
) -> None:
    """One run of `table` (its lock held by the caller): open its source (what the
    cycle's survey read of it taken from `surveyed`), then TableRun.

    The survey may be minutes old when the run starts (a table queued behind
    max_parallel_tables): a run with rows to read first checks that the table's columns
    are still the survey's, and if they changed, opens the table again, described now,
    so a column added meanwhile is offloaded by this run."""
    db = table.source_database or services.clickhouse.database
    from_survey = surveyed is not None and (db, table.source_table) in surveyed.columns
    async with open_table(services.clickhouse, table, surveyed) as src:
        run = TableRun(services, table, src, report, run_id, stopping)
        if await run.run(recheck_columns=from_survey):
            return
    async with open_table(services.clickhouse, table) as src:
        await TableRun(services, table, src, report, run_id, stopping).run()


def column_changes(read: Sequence[tuple[str, str]], now: Sequence[tuple[str, str]]) -> str:
    """What differs between the (name, type) columns a run read with and the table's
    columns now, for a log line or an error ('' when nothing does). Pure."""
    before, after = dict(read), dict(now)
    changes = [f"added {n} {t}" for n, t in now if n not in before]
    changes += [f"dropped {n}" for n, _ in read if n not in after]
    changes += [
        f"{n} changed from {t} to {after[n]}" for n, t in read if n in after and after[n] != t
    ]
    if not changes and list(before) != list(after):
        changes.append("columns reordered")
    return ", ".join(changes)


class TableRun:
    """One run of one table, under its lock, its source open (`run_table`).

    The run's data flow: `prepare` reads the committed state and what waits past it
    (a frozen `checkup.Prepared`); `transfer` pages, converts, writes and commits
    (each `_commit` moves `committed` on) and returns the audit's ClickHouse side when
    its fetching task read it ahead; `checkup.audit` compares the tiers after the
    commits (a repair moves `committed` on too); `keep_view` brings the view over both
    tiers to `committed`, and the report shows it."""

    def __init__(
        self,
        services: Services,
        table: TableConfig,
        src: SourceTable,
        report: TableReport,
        run_id: str,
        stopping: anyio.Event | None = None,
    ) -> None:
        self.services = services
        self.table = table
        self.src = src
        self.report = report
        self.run_id = run_id
        self.stopping = stopping
        self.hashed = audit.checksummed(table, src.order, src.columns)
        # Rows (and row-hash sums) per day are recorded with each commit for the audit.
        self.day_column = table.watermark if audit.audited(table, src.order) else None
        self.day_kind = days.kind_of(src.order[0][1])
        # What is committed (Iceberg marker and PostgreSQL): read by prepare, recovered by
        # open_iceberg, moved on by each commit and by a repair.
        self.committed = Committed()
        self._ice: IcebergTable | None = None  # open_iceberg

    @property
    def ice(self) -> IcebergTable:
        assert self._ice is not None, "open_iceberg() first"
        return self._ice

    async def run(self, recheck_columns: bool = False) -> bool:
        """The run; with `recheck_columns` (the columns are the cycle's survey's), False
        without reading a row when there are rows to read and the table's columns are
        no longer those (`run_table` opens it again)."""
        try:
            return await self._run(recheck_columns)
        finally:
            self.report.reached(self.committed)

    async def _run(self, recheck_columns: bool) -> bool:
        table, report = self.table, self.report
        prepared = await self.prepare()
        if prepared.upto is not None and recheck_columns:
            changed = await self.columns_changed()
            if changed:
                log.info(
                    "the source's columns changed since the cycle's survey; reading them again",
                    extra={"table": table.target, "source": table.source, "changes": changed},
                )
                return False
        check = checkup.Check(self.services, table, self.src, self.hashed, prepared)
        if prepared.upto is None:
            # Nothing to read: Iceberg is not touched unless the audit of what
            # PostgreSQL recorded finds a day to look at.
            recorded = await checkup.audit_recorded(check, report, committed=self.committed)
            if not recorded.agrees:
                await self.open_iceberg(prepared.state)
                check = replace(check, prepared=replace(prepared, known=recorded.known))
                audited = await checkup.audit(check, self.ice, report, committed=self.committed)
                self.committed = audited.committed
        else:
            # The transport refuses a table it cannot store exactly before Iceberg is
            # touched (no table is created for it).
            pager = await self.src.pager(self.hashed)
            ahead = await self.transfer(check, pager, opening=True)
            if report.rows == 0:
                report.status = Status.IDLE
            audited = await checkup.audit(
                check, self.ice, report, committed=self.committed, ahead=ahead
            )
            self.committed = audited.committed
            if not audited.ran:
                await checkup.measure_behind(self.src, report, self.committed)
        await self.keep_view(prepared.state)
        return True

    async def columns_changed(self) -> str:
        """What changed in the source's columns since this run read them ('' if
        nothing): one query of system.columns."""
        src = self.src
        now = await table_columns(src.source, src.database, self.table.source_table)
        return column_changes(src.columns, now)

    async def keep_view(self, state: TableState) -> None:
        """Bring the view over both tiers to the committed position unless it is there
        (a commit replaced it; else: a first run, a crash before the replacement, a
        failed replacement, a repair, a changed source schema or config). An idle run
        whose view is current makes no query for it."""
        table = self.table
        if table.view is None and not state.has_view:
            return
        store = self.services.watermarks
        upkeep = view.upkeep(table.view, await store.view_state(table.target), self.committed)
        if upkeep.drop is not None:
            await view.drop(self.src.source, store, upkeep.drop, target=table.target)
        if not upkeep.keep:
            return
        cold = upkeep.pin
        if upkeep.read_pin:
            # Opening the Iceberg table reconciles PostgreSQL with it first.
            if self._ice is None:
                await self.open_iceberg(state)
            cold = view.ColdSide.of(self.ice)
        views = self.services.views
        spec = view.spec_of(self.src, table, cold, self.committed.seq)
        # A run that committed replaced the view on every node with its last commit;
        # otherwise one query checks that every node still has it.
        if upkeep.current(spec, cold, views) and (
            self.report.snapshots or await view.on_every_node(self.src, spec, cold)
        ):
            return
        self.report.view_error = await view.keep(
            self.src,
            self.services.watermarks,
            views,
            table,
            cold,
            self.committed.seq,
            clickhouse=self.services.clickhouse,
        )

    async def prepare(self) -> checkup.Prepared:
        """Read the committed state and what ClickHouse holds past it (one query that
        reads only the granules after the position): the high-water mark this run may
        read up to, or none when there is nothing to read (the run is idle)."""
        t0 = time.monotonic()
        services, table, report, src = self.services, self.table, self.report, self.src
        state = await services.watermarks.get(table.target, table.source)
        self.committed = state.committed
        if state.position is None:
            # Never offloaded: map every column now, so a column offloader cannot store
            # fails the table at once, even while the source is empty.
            _ = src.plan
        position = self.committed.watermark
        wm_type = src.order[0][1]
        bounds = audit.window(wm_type, position, table.audit_days, state.retained_until)
        parts = src.parts
        fingerprint = ""
        agreed = checkup.agreed_window(state, bounds, state.seq)
        if agreed is not None:
            # The window agreed at this seq: while the source's parts are the same, so
            # are its rows (the idle audit need not read them), and when nothing was
            # waiting then, nothing is now (the run is idle).
            fingerprint = await src.fingerprint()
            if fingerprint != agreed.parts:
                agreed = None  # changed: read the window again, below
            elif agreed.caught_up:
                report.rows_behind, report.lag_seconds = 0, 0.0
                report.stage("prepare", time.monotonic() - t0)
                report.status = Status.IDLE
                return checkup.Prepared(state, 0, None, parts=fingerprint)
        known: audit.KnownDays | None = None
        if agreed is None and bounds is not None and position is not None:
            # One grouped query is both this prepare and an idle run's audit: the days of
            # the window up to the position, and the rows past it (all in the window).
            hot = audit.HotTable(src.source, src.relation, src.order, self.hashed)
            window = await audit.clickhouse_days(hot, position, bounds[0], parts)
            known = audit.KnownDays(window, bounds[1])
            waiting, oldest = window.waiting, window.oldest_waiting
            newest, now_micros = window.newest_waiting, window.server_now
        else:
            query = behind_query(src.relation, src.order, position)
            waiting, oldest, now_micros, newest = (await src.source.rows(query))[0]
        waiting = int(waiting)
        checkup.behind(wm_type, report, waiting, oldest, now_micros)
        report.stage("prepare", time.monotonic() - t0)
        idle = checkup.Prepared(state, waiting, None, known, fingerprint)
        if not waiting:
            report.status = Status.IDLE
            return idle
        now = cursor.from_micros(now_micros) if now_micros is not None else datetime.now(UTC)
        upto = plan.high_water_value(
            cursor.watermark_from_int(wm_type, newest), now, table.lag, wm_type
        )
        if cursor.watermark_from_int(wm_type, oldest) > upto:  # only rows inside `lag`
            report.status = Status.IDLE
            return idle
        return replace(idle, upto=cursor.encode_value(upto))

    async def open_iceberg(self, state: TableState) -> None:
        """Open (create, evolve) the Iceberg table and reconcile PostgreSQL's `state`
        with its newest commit marker: a run that died between its Iceberg and
        PostgreSQL commits is recovered here, before anything new is written."""
        t0 = time.monotonic()
        services, table, report, src = self.services, self.table, self.report, self.src
        catalog = await services.open_iceberg()
        self._ice = ice = await anyio.to_thread.run_sync(
            catalog.ensure,
            table.target,
            src.plan.schema,
            table.partition_by,
            (table.watermark, *table.keys),
            limiter=services.io,
        )
        mark = await anyio.to_thread.run_sync(ice.latest_mark, limiter=services.io)
        decision = plan.reconcile_with(table.target, state, mark)
        if decision.action == "recover":
            assert mark is not None
            days, replace_days = decode_days(mark.days)
            log.warning(
                "recovering watermark from Iceberg: a previous run stopped between its Iceberg "
                "and PostgreSQL commits",
                extra={"table": table.target, "from_seq": state.seq, "to_seq": mark.seq},
            )
            recovered = Advance(
                mark.seq,
                mark.position,
                mark.rows,
                mark.run_id,
                mark.snapshot_id,
                days,
                replace_days,
                recovered=True,
            )
            await services.watermarks.commit(table.target, state.seq, recovered)
            report.recovered = True
        self.committed = Committed(decision.seq, decision.position)
        report.stage("open_iceberg", time.monotonic() - t0)

    async def transfer(
        self, check: checkup.Check, pager: Pager, opening: bool = False
    ) -> audit.DaysAhead | None:
        """Page the rows after the committed position up to the prepared high-water mark
        into Iceberg. Returns the audit's ClickHouse side for the scan's last position
        when the scan was complete and it was read while the last pages were written
        (checkup.read_ahead, from the fetching task), else None.

        `opening`: open Iceberg (open_iceberg) while the first page is read from
        PostgreSQL's position, as opening (pyiceberg's import, a new table's creation)
        takes as long as a page or more. Nothing is written before Iceberg is open and
        reconciled; if its newer commit marker moves the position (recovery), the page
        read is dropped and the transfer reads again from there."""
        after = self.committed.watermark
        send, receive = anyio.create_memory_object_stream[Page](pager.read_ahead)
        scan = Scan(self.src.relation, check.prepared.upto)
        moved = False
        ahead: audit.DaysAhead | None = None

        async def fetch() -> None:
            nonlocal ahead
            ahead = await self._fetch(check, pager, scan, after, send)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetch)
                if opening and pager.encodes:
                    # The pages' footers get field ids (iceberg.footer): its Thrift
                    # codec loads while ClickHouse encodes the first page.
                    tg.start_soon(anyio.to_thread.run_sync, footer.load)
                if opening:
                    await self.open_iceberg(check.prepared.state)
                    moved = self.committed.watermark != after
                if moved:
                    tg.cancel_scope.cancel()
                    receive.close()
                else:
                    await self._consume(receive, check.prepared.waiting)
        except BaseExceptionGroup as group:
            raise single_error(group) from None
        if moved:
            # Its read-ahead (if the dropped read was complete) saw ClickHouse before the
            # rows are read again: not the rows the audit will compare.
            return await self.transfer(check, pager)
        return ahead

    def _stopped(self) -> bool:
        # Shutting down: commit what was read, leave the rest for the next start.
        return self.stopping is not None and self.stopping.is_set()

    async def _fetch(
        self,
        check: checkup.Check,
        pager: Pager,
        scan: Scan,
        after: list[Any] | None,
        send: MemoryObjectSendStream[Page],
    ) -> audit.DaysAhead | None:
        """Read the scan's pages into `send`. When the scan is complete, the audit's
        ClickHouse query for its last position runs at once (checkup.read_ahead), while
        the last pages are written and committed; its answer is returned (None: the scan
        stopped before its end, or the table has no audit window)."""
        table = self.table
        pages = keyset_pages(
            pager, scan, after, table.batch_rows, check.prepared.waiting, target=table.target
        )
        ahead: audit.DaysAhead | None = None

        async def read_ahead(position: list[Any]) -> None:
            nonlocal ahead
            ahead = await checkup.read_ahead(check, position)

        def complete(position: list[Any] | None) -> None:
            if position is not None and self.day_column is not None:
                tg.start_soon(read_ahead, list(position))

        async with anyio.create_task_group() as tg, send, aclosing(pages):
            await self._send_pages(pages, send, after, check.prepared.waiting, complete)
        return ahead

    async def _send_pages(
        self,
        pages: AsyncGenerator[Page, None],
        send: MemoryObjectSendStream[Page],
        after: list[Any] | None,
        waiting: int,
        complete: Callable[[list[Any] | None], None],
    ) -> None:
        """Send `pages` on until the scan is complete (calling `complete` with its last
        position before its last page is sent), max_rows_per_cycle is reached or the
        service is stopping (report.more: the rest waits for the next cycle)."""
        table, report = self.table, self.report
        fetched = 0
        position = after
        if self._stopped():
            report.more = True
            return
        while True:
            t0 = time.monotonic()
            page = await anext(pages, None)
            report.stage("clickhouse_read", time.monotonic() - t0)
            if page is None:
                complete(position)
                return
            faults.point("read")
            log.debug(
                "page read",
                extra={"table": table.target, "rows": page.rows, "page": report.pages + 1},
            )
            fetched += page.rows
            position = page.position
            done = scan_complete(page, fetched, waiting)
            if done:
                complete(position)
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

    async def _consume(self, receive: MemoryObjectReceiveStream[Page], waiting: int) -> None:
        """Write the pages as they arrive (writing.PageWriter), committing every
        `append_rows` rows and at the end."""
        progress, target = self.services.progress, self.table.target
        if progress is not None:
            progress.start(target, min(waiting, self.table.max_rows_per_cycle))

        def page_done(rows: int) -> None:
            self.report.pages += 1
            if progress is not None:
                progress.advance(target, rows)

        writer = PageWriter(
            self.ice,
            self.table.watermark,
            self.day_column,
            self.day_kind,
            self.hashed,
            cpu=self.services.cpu,
            io=self.services.io,
            stage=self.report.stage,
            page_done=page_done,
        )
        async with receive:
            await writer.write(receive, self._commit, self.table.append_rows)

    async def _commit(
        self, written: list[WrittenFiles], position: list[Any], sums: dict[int, DaySum]
    ) -> None:
        """Commit the written files to Iceberg, then advance PostgreSQL (writing.commit:
        shielded, a deadline or shutdown waits for both), then move the view."""
        services, table, report = self.services, self.table, self.report
        # Every page of this append was read before this check: if the columns are the
        # run's now, no page was read after a column was added (its rows would be
        # stored without the column's values, and the audit would not see it).
        changed = await self.columns_changed()
        if changed:
            raise SourceSchemaError(
                f"{table.target}: the columns of the source {table.source} changed while "
                f"this run read it ({changed}); the rows read since its last commit were not "
                "committed, and the next run reads them again with the new columns"
            )
        rows = sum(w.rows for w in written)
        committed = self.committed.after(position)
        marker = Marker(
            committed.seq, position, self.run_id, rows, encode_days(sums) if sums else None
        )
        await commit(
            services.watermarks,
            table.target,
            CommitRecord(marker, sums),
            lambda m: self.ice.commit_files(written, m).snapshot_id,
            limiter=services.io,
            stage=report.stage,
        )
        self.committed = committed
        report.rows += rows
        report.bytes += sum(w.nbytes for w in written)
        report.snapshots += 1
        report.reached(committed)
        log.info(
            "committed",
            extra={
                "table": table.target,
                "rows": rows,
                "seq": committed.seq,
                "watermark": position,
            },
        )
        if table.view is not None:
            # The view moves with every commit: its cold side is this commit's metadata
            # file (older ones are deleted after metadata_versions more commits).
            report.view_error = await view.keep(
                self.src,
                services.watermarks,
                services.views,
                table,
                view.ColdSide.of(self.ice),
                committed.seq,
                clickhouse=services.clickhouse,
            )
