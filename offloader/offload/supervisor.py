"""One cycle: every enabled table as a coroutine behind max_parallel_tables."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from offloader.config import Config, TableConfig
from offloader.errors import Locked, TableError
from offloader.offload.pipeline import run_table
from offloader.postgres.watermarks import Watermarks
from offloader.progress import Progress
from offloader.report import RunStatus, TableReport
from offloader.state import CLEANUP_SECONDS
from offloader.tiers.services import Services

if TYPE_CHECKING:
    from offloader.iceberg.catalog import IcebergCatalog

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
        return self.error is None and all(t.status != "failed" for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def count(self, status: str) -> int:
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
            f"ok {self.count('ok')}, idle {self.count('idle')}, failed {self.count('failed')}, "
            f"skipped {self.count('skipped')}",
        ]
        text = "; ".join(parts)
        if self.error:
            text += f"; error: {self.error}"
        for t in self.tables:
            if t.status == "failed" and t.error != self.error:
                text += f"\n  FAILED {t.error}"
        return text


@dataclass(slots=True)
class Runtime:
    """Connections that live across cycles: the state pool and the Iceberg catalog."""

    services: Services


@asynccontextmanager
async def open_runtime(cfg: Config, progress: Progress | None = None) -> AsyncIterator[Runtime]:
    """Open PostgreSQL (migrating its schema) and the catalog for one process."""
    watermarks = await Watermarks.open(
        cfg.postgres, max_size=2 * cfg.service.max_parallel_tables + 2
    )
    try:
        services = Services(
            clickhouse=cfg.clickhouse,
            open_catalog=lambda: _open_catalog(cfg),
            watermarks=watermarks,
            cpu=anyio.CapacityLimiter(max(1, os.cpu_count() or 1)),
            io=anyio.CapacityLimiter(max(2, cfg.service.max_parallel_tables)),
            progress=progress,
            views=cfg.views,
        )
        yield Runtime(services)
    finally:
        await watermarks.close()


def _open_catalog(cfg: Config) -> IcebergCatalog:
    from offloader.iceberg.catalog import IcebergCatalog

    return IcebergCatalog(cfg.catalog, cfg.maintenance)


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
                    await run_table(services, table, report, run_id, stopping)
                finally:
                    finished_at = datetime.now(UTC)
        if deadline.cancelled_caught:
            report.status = RunStatus.FAILED
            report.reason = "timeout"
            report.error = (
                f"{table.target}: table_timeout of {timeout:g}s exceeded after {report.rows} rows "
                "(committed rows are kept; the rest continues next cycle)"
            )
    except TableError as exc:
        report.status = RunStatus.SKIPPED if isinstance(exc, Locked) else RunStatus.FAILED
        report.error = str(exc)
        report.reason = exc.reason
    except Exception as exc:  # a bug, not an expected failure: keep the traceback in the log
        log.exception("table run crashed", extra={"table": table.target})
        report.status = RunStatus.FAILED
        report.error = f"{table.target}: internal error {type(exc).__name__}: {exc}"
        report.reason = "internal"
    finally:
        report.seconds = time.monotonic() - started
    if report.status != "skipped":
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
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
    if services.progress is not None:
        services.progress.finish(table.target, report.status)
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


TableHook = Callable[[TableReport], None]


def _unrun(table: TableConfig, status: RunStatus, reason: str, why: str) -> TableReport:
    """The report of a table whose run did not happen or did not end normally."""
    return TableReport(
        table.target, table.source, status=status, reason=reason, error=f"{table.target}: {why}"
    )


async def run_cycle(
    cfg: Config,
    runtime: Runtime,
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

    async def one(table: TableConfig) -> None:
        # Guarded here, not only inside offload_table: an exception escaping this
        # coroutine would make the task group cancel every other table of the cycle.
        try:
            async with limiter:
                if stopping is not None and stopping.is_set():
                    result = _unrun(
                        table, RunStatus.SKIPPED, "shutdown", "not started, shutting down"
                    )
                else:
                    result = await offload_table(
                        runtime.services, table, cfg.service.table_timeout, stopping
                    )
        except Exception as exc:
            log.exception("table run crashed outside its guard", extra={"table": table.target})
            result = _unrun(
                table, RunStatus.FAILED, "internal", f"internal error {type(exc).__name__}: {exc}"
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


async def run_once(
    cfg: Config, on_table: TableHook | None = None, progress: Progress | None = None
) -> CycleReport:
    """Open the runtime, run one cycle, close. A state database outage fails the cycle."""
    try:
        async with open_runtime(cfg, progress) as runtime:
            return await run_cycle(cfg, runtime, on_table=on_table)
    except TableError as exc:
        report = CycleReport(
            cycle_id=uuid.uuid4().hex, started_at=datetime.now(UTC), error=str(exc)
        )
        for t in cfg.enabled_tables:
            report.tables.append(
                TableReport(
                    t.target, t.source, status=RunStatus.FAILED, reason=exc.reason, error=str(exc)
                )
            )
        log.error("cycle failed", extra={"report": report.as_dict()})
        return report
