"""One cycle: every enabled table as a coroutine behind max_parallel_tables."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from offloader.config import Config, TableConfig
from offloader.errors import TableError
from offloader.offload.pipeline import run_table
from offloader.progress import Progress
from offloader.report import Status, TableReport, guarded
from offloader.source import Survey, survey
from offloader.state import CLEANUP_SECONDS, RunRecord
from offloader.tiers.services import Services, open_services

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CycleReport:
    cycle_id: str
    started_at: datetime
    seconds: float = 0.0
    tables: list[TableReport] = field(default_factory=list)
    error: str | None = None  # a failure before any table could run (e.g. PostgreSQL down)

    @property
    def ok(self) -> bool:
        return self.error is None and all(t.status != Status.FAILED for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def count(self, status: Status) -> int:
        return sum(1 for t in self.tables if t.status == status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cycle_id": self.cycle_id,
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "rows": self.rows,
            "error": self.error,
            "tables": [t.as_dict() for t in self.tables],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.as_dict(), default=str).decode()

    def summary(self) -> str:
        parts = [
            f"cycle {self.cycle_id[:8]}: {len(self.tables)} tables in {self.seconds:.2f}s, "
            f"{self.rows} rows",
            f"ok {self.count(Status.OK)}, idle {self.count(Status.IDLE)}, "
            f"failed {self.count(Status.FAILED)}, skipped {self.count(Status.SKIPPED)}",
        ]
        text = "; ".join(parts)
        if self.error:
            text += f"; error: {self.error}"
        for t in self.tables:
            if t.status == Status.FAILED and t.error != self.error:
                text += f"\n  FAILED {t.error}"
        return text


async def offload_table(
    services: Services,
    table: TableConfig,
    timeout: float | None = None,
    stopping: anyio.Event | None = None,
    surveyed: Survey | None = None,
) -> TableReport:
    """Run one table to its high-water mark within `timeout` seconds.

    Never raises for a table problem: it is reported. Commits made before a
    timeout are kept; the rest continues next cycle.
    """
    report = TableReport(target=table.target, source=table.source)
    started_at = finished_at = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    log.info("table started", extra={"table": table.target, "run_id": run_id})
    with guarded(report, "table run"):
        with anyio.move_on_after(timeout) as deadline:
            async with services.watermarks.table_lock(table.target):
                # The run's interval in the log is the time it held the table's lock.
                started_at = datetime.now(UTC)
                try:
                    await run_table(services, table, report, run_id, stopping, surveyed)
                finally:
                    finished_at = datetime.now(UTC)
        if deadline.cancelled_caught:
            report.status = Status.FAILED
            report.reason = "timeout"
            report.error = (
                f"{table.target}: table_timeout of {timeout:g}s exceeded after {report.rows} rows "
                "(committed rows are kept; the rest continues next cycle)"
            )
    if report.status != Status.SKIPPED:
        run = RunRecord(
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
        await _record_run(services, run)
    if services.progress is not None:
        services.progress.finish(table.target, report.status)
    # Logged last, once the run is recorded, so `status` agrees with the log line.
    event = {Status.FAILED: log.error, Status.SKIPPED: log.info}.get(report.status, log.info)
    event(
        f"table {report.status}",
        extra={
            "table": table.target,
            **{k: v for k, v in report.as_dict().items() if k != "target"},
        },
    )
    return report


async def _record_run(services: Services, run: RunRecord) -> None:
    """Add `run` to the runs log, shielded from the run's deadline or a shutdown and
    given CLEANUP_SECONDS; a failure to record it is logged, never raised."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
        try:
            await services.watermarks.record_run(run)
        except TableError as exc:
            log.warning("could not record run", extra={"table": run.target, "error": str(exc)})


TableHook = Callable[[TableReport], None]


def _unrun(table: TableConfig, status: Status, reason: str, why: str) -> TableReport:
    """The report of a table whose run did not happen or did not end normally."""
    return TableReport(
        table.target, table.source, status=status, reason=reason, error=f"{table.target}: {why}"
    )


async def run_cycle(
    cfg: Config,
    services: Services,
    *,
    stopping: anyio.Event | None = None,
    on_table: TableHook | None = None,
) -> CycleReport:
    """Offload every enabled table once. One table's failure never cancels another."""
    report = CycleReport(cycle_id=uuid.uuid4().hex, started_at=datetime.now(UTC))
    started = time.monotonic()
    limiter = anyio.CapacityLimiter(cfg.service.max_parallel_tables)
    tables = cfg.enabled_tables
    log.info("cycle started", extra={"cycle_id": report.cycle_id, "tables": len(tables)})
    surveyed = await _survey(cfg, tables)

    async def one(table: TableConfig) -> None:
        # Guarded here too, not only inside offload_table: an exception escaping this
        # coroutine would make the task group cancel every other table of the cycle.
        result = _unrun(table, Status.FAILED, "internal", "the run ended without a report")
        with guarded(result, "table run outside its guard"):
            async with limiter:
                if stopping is not None and stopping.is_set():
                    result = _unrun(table, Status.SKIPPED, "shutdown", "not started, shutting down")
                else:
                    result = await offload_table(
                        services, table, cfg.service.table_timeout, stopping, surveyed
                    )
        report.tables.append(result)
        if on_table is not None:
            try:
                on_table(result)
            except Exception:
                log.exception("reporting a table's run failed", extra={"table": table.target})

    async with anyio.create_task_group() as tg:
        for table in tables:
            tg.start_soon(one, table)
    order = {t.target: i for i, t in enumerate(tables)}
    report.tables.sort(key=lambda r: order[r.target])
    report.seconds = time.monotonic() - started
    log.info("cycle finished", extra={"report": report.as_dict()})
    return report


async def _survey(cfg: Config, tables: Sequence[TableConfig]) -> Survey:
    """The cycle's survey (source.survey: two ClickHouse queries for all tables, instead
    of two per table); if it fails, each table asks for itself (and fails alone)."""
    if len(tables) < 2:
        return Survey.empty()
    try:
        return await survey(cfg.clickhouse, tables)
    except TableError as exc:
        log.warning("could not survey the sources", extra={"error": str(exc)})
        return Survey.empty()


async def run_once(
    cfg: Config, on_table: TableHook | None = None, progress: Progress | None = None
) -> CycleReport:
    """Open the services, run one cycle, close. A state database outage fails the cycle."""
    try:
        async with open_services(cfg, progress) as services:
            return await run_cycle(cfg, services, on_table=on_table)
    except TableError as exc:
        report = CycleReport(
            cycle_id=uuid.uuid4().hex, started_at=datetime.now(UTC), error=str(exc)
        )
        for t in cfg.enabled_tables:
            report.tables.append(
                TableReport(
                    t.target, t.source, status=Status.FAILED, reason=exc.reason, error=str(exc)
                )
            )
        log.error("cycle failed", extra={"report": report.as_dict()})
        return report
