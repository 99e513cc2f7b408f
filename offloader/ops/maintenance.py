"""`offloader maintain` and the service's maintenance pass: keep each table's shape
bounded however many cycles ran.

One pass over a table, under the table's lock (a concurrent offload of the same table
by another process is also safe: every commit is compare-and-set):
1. offloader's table properties and the sort order (watermark, keys) are set;
2. compaction: closed partitions' small files are merged, sorted, into files of about
   `target_file_size`, all in one snapshot that changes no row;
3. snapshots older than `snapshot_retention` are expired (never the newest offloader
   commit, never the one the view over both tiers reads);
4. files nothing retained refers to, older than `orphan_age`, are deleted, and metadata
   files the metadata log no longer lists at any age — never the one the view pins, and
   only what is provably the table's (iceberg/orphans.py): a location that also holds
   another table's metadata is refused before the pass changes anything.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from offloader import faults
from offloader.config import MaintenanceConfig, TableConfig
from offloader.iceberg import IcebergCatalog, IcebergTable, compaction, files, rewrite
from offloader.report import Status, guarded, in_time
from offloader.tiers import view
from offloader.tiers.services import Services

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MaintenanceReport:
    target: str
    dry_run: bool = False
    status: Status = Status.OK  # OK, MISSING (no Iceberg table yet), SKIPPED (locked), FAILED
    sort_order_set: bool = False
    groups: int = 0  # partitions compacted
    files_rewritten: int = 0
    files_written: int = 0
    bytes_rewritten: int = 0
    rows_rewritten: int = 0
    partial: bool = False  # the time budget ended the compaction early
    snapshots_expired: int = 0
    orphans_deleted: int = 0
    orphan_bytes: int = 0
    files_given_ids: int = 0  # data files written again with field ids (--field-ids)
    shape: files.Shape | None = None
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    planned: list[str] = field(default_factory=list)  # what a dry run would do
    view_error: str | None = None  # the view could not be pointed at the rewritten table

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d

    def line(self) -> str:
        if self.status != Status.OK:
            return f"{self.target}: {self.status}" + (f": {self.error}" if self.error else "")
        verb = "would rewrite" if self.dry_run else "rewrote"
        text = (
            f"{self.target}: {verb} {self.files_rewritten} files ({_mb(self.bytes_rewritten)}, "
            f"{self.rows_rewritten} rows) in {self.groups} partitions"
            + (f" into {self.files_written}" if not self.dry_run else "")
            + f"; {'would expire' if self.dry_run else 'expired'} {self.snapshots_expired} "
            f"snapshots; {'would delete' if self.dry_run else 'deleted'} "
            f"{self.orphans_deleted} orphan files ({_mb(self.orphan_bytes)})"
        )
        if self.files_given_ids:
            verb = "would write" if self.dry_run else "wrote"
            text += f"; {verb} {self.files_given_ids} files again with field ids"
        if self.partial:
            text += "; time budget reached, the rest waits for the next pass"
        if self.view_error:
            text += f"; the view was not replaced ({self.view_error})"
        if self.shape is not None:
            s = self.shape
            text += (
                f"; now {s.data_files} data files, {s.manifests} manifests, "
                f"{s.snapshots} snapshots, {s.metadata_files} metadata files"
            )
        return text + f" ({self.seconds:.1f}s)"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def maintain_table(
    services: Services,
    table: TableConfig,
    *,
    dry_run: bool = False,
    deadline: float | None = None,
    field_ids: bool = False,
) -> MaintenanceReport:
    """One maintenance pass over one table ([maintenance] of `services`), under its lock.
    Never raises for a table problem (`guarded`).

    `deadline` (time.monotonic()) bounds the compaction: no new partition is started
    past it; what was rewritten by then is committed. The table's view over both tiers
    is pointed at the rewritten table after the pass, and what it reads until then
    (snapshot, metadata file) is never expired or deleted. `field_ids`: also write
    again, with field ids in their footer, the data files that lack them.
    """
    report = MaintenanceReport(table.target, dry_run=dry_run)
    with guarded(report, "maintenance"):
        async with services.watermarks.table_lock(table.target):
            catalog = await services.open_iceberg()
            ice = await anyio.to_thread.run_sync(catalog.load, table.target, limiter=services.io)
            if ice is None:
                report.status = Status.MISSING
                report.error = "no Iceberg table yet (it is created by the first offload)"
            else:
                known = await services.watermarks.view_state(table.target) if table.view else None
                # What the view over both tiers reads is kept until the view moves on,
                # however long its replacement keeps failing: its snapshot and its
                # metadata file.
                pinned = Pinned(
                    {known.snapshot_id} if known and known.snapshot_id else set(),
                    {known.metadata} if known and known.metadata else set(),
                )
                cfg = services.maintenance
                await anyio.to_thread.run_sync(
                    _pass,
                    catalog,
                    ice,
                    table,
                    cfg,
                    report,
                    (deadline, field_ids),
                    pinned,
                    limiter=services.io,
                )
                if not dry_run:
                    report.view_error = await view.after_rewrite(services, table, ice)
    event = log.error if report.status == Status.FAILED else log.info
    event(f"maintenance {report.status}", extra={"table": table.target, **report.as_dict()})
    return report


@dataclass(frozen=True, slots=True)
class Pinned:
    """What a view over both tiers reads: never expired or deleted by a pass."""

    snapshots: set[int]
    metadata: set[str]


def _pass(
    catalog: IcebergCatalog,
    ice: IcebergTable,
    table: TableConfig,
    cfg: MaintenanceConfig,
    report: MaintenanceReport,
    asked: tuple[float | None, bool],
    pinned: Pinned,
) -> None:
    deadline, field_ids = asked
    # Listed before anything changes: a location that also holds another table's
    # metadata is refused before this pass writes or deletes anything in it.
    surveyed = files.survey(ice)
    surveyed.check()
    sort_by = (table.watermark, *table.keys)
    if not report.dry_run:
        ice.ensure_properties(catalog.properties)
        report.sort_order_set = ice.ensure_sort_order(sort_by)
    _compact(ice, table, cfg, report, deadline, sort_by)
    ice.refresh()
    if field_ids:
        _give_field_ids(ice, table, report)
    older = datetime.now(UTC) - timedelta(seconds=cfg.snapshot_retention)
    victims = [v for v in files.expirable_snapshots(ice, older) if v not in pinned.snapshots]
    report.snapshots_expired = len(victims)
    if report.dry_run:
        report.planned += [f"expire {len(victims)} snapshots older than {older:%Y-%m-%d %H:%M}"]
    elif victims:
        files.expire(ice, victims)
        faults.point("expire")
    orphans = files.orphan_files(ice, cfg.orphan_age, pinned.metadata, surveyed)
    report.orphan_bytes = sum(o.bytes for o in orphans)
    if report.dry_run:
        report.orphans_deleted = len(orphans)
        report.planned += [f"delete orphan {o.path} ({o.bytes} bytes)" for o in orphans]
    else:
        report.orphans_deleted = files.delete_orphans(ice, orphans)
    report.shape = files.shape(ice)


def _give_field_ids(ice: IcebergTable, table: TableConfig, report: MaintenanceReport) -> None:
    """Write again the live data files whose footer lacks field ids (the parquet
    transport's pages from before they were given them), in one snapshot that changes
    no row, so readers that map columns by id only (Daft) read every file."""
    live = files.live_files(ice, table.watermark)
    lacking = rewrite.without_field_ids(ice, live)
    report.files_given_ids = len(lacking)
    if report.dry_run:
        report.planned.append(f"write {len(lacking)} data files again with field ids")
        return
    if lacking:
        added = rewrite.give_field_ids(ice, lacking)
        rewrite.replace_files(ice, lacking, added, uuid.uuid4().hex)
        ice.refresh()
        log.info("field ids given", extra={"table": table.target, "files": len(lacking)})


def _compact(
    ice: IcebergTable,
    table: TableConfig,
    cfg: MaintenanceConfig,
    report: MaintenanceReport,
    deadline: float | None,
    sort_by: tuple[str, ...],
) -> None:
    live = files.live_files(ice, table.watermark)
    cutoff = compaction.compaction_cutoff(
        [f.upper for f in live.stats if f.upper is not None],
        live.kind,
        time.time(),
        table.lag + cfg.settle,
    )
    groups = compaction.compaction_groups(
        live.stats, cutoff, cfg.target_file_size, whole_partitions=live.whole_partitions
    )
    deleted, added = [], []
    for group in groups:
        if deadline is not None and time.monotonic() > deadline:
            report.partial = True
            break
        report.groups += 1
        report.files_rewritten += len(group.files)
        report.bytes_rewritten += group.bytes
        report.rows_rewritten += group.rows
        if report.dry_run:
            report.planned.append(
                f"compact partition {group.partition[1:]}: {len(group.files)} files, "
                f"{group.rows} rows, {_mb(group.bytes)}"
            )
            continue
        written = rewrite.rewrite_group(ice, live, group, sort_by, cfg.target_file_size)
        deleted += [live.files[f.path] for f in group.files]
        added += written
        report.files_written += len(written)
    if not added:
        return
    faults.point("compact_write")
    rewrite.replace_files(ice, deleted, added, uuid.uuid4().hex)
    faults.point("compact_commit")
    log.info(
        "compacted",
        extra={
            "table": table.target,
            "partitions": report.groups,
            "files_rewritten": report.files_rewritten,
            "files_written": report.files_written,
            "rows": report.rows_rewritten,
        },
    )


async def maintain(
    services: Services,
    tables: list[TableConfig],
    *,
    dry_run: bool = False,
    deadline: float | None = None,
    stopping: anyio.Event | None = None,
    field_ids: bool = False,
) -> list[MaintenanceReport]:
    """A pass over `tables`, one after another (maintenance is not urgent, and one at a
    time keeps its memory to one table's work). Tables not reached before `deadline`
    or a shutdown are left for the next pass."""
    return [
        await maintain_table(
            services, table, dry_run=dry_run, deadline=deadline, field_ids=field_ids
        )
        for table in in_time(tables, deadline, stopping, "maintenance")
    ]
