"""Prometheus metrics (prometheus_client), served on [offloader] metrics_port when set."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from offloader.errors import FAILURE_REASONS
from offloader.report import REFUSAL_REASONS, RETENTION_RESULTS, Status, TableReport

if TYPE_CHECKING:
    from offloader.ops.maintenance import MaintenanceReport
    from offloader.ops.retention import RetentionReport

log = logging.getLogger(__name__)

_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


# The *_created series double the exposition and no dashboard or rule uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """offloader's series, one registry per service: the runs' and cycles', the view's,
    retention's and maintenance's (each group declared by its own method)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tracked: set[str] = set()  # tables whose series exist (track)
        self._run_metrics(self.registry)
        self._view_metrics(self.registry)
        self._retention_metrics(self.registry)
        self._maintenance_metrics(self.registry)
        self._table_shape_metrics(self.registry)

    def _run_metrics(self, r: CollectorRegistry) -> None:
        """Table runs and cycles: rows, failures, durations, lag."""
        self.rows = Counter("offloader_rows", "Rows offloaded", ["table"], registry=r)
        self.bytes = Counter("offloader_bytes", "Arrow bytes offloaded", ["table"], registry=r)
        self.snapshots = Counter(
            "offloader_snapshots", "Iceberg snapshots written", ["table"], registry=r
        )
        self.failures = Counter(
            "offloader_table_failures", "Failed table runs", ["table", "reason"], registry=r
        )
        self.table_seconds = Histogram(
            "offloader_table_duration_seconds",
            "Duration of one table run",
            ["table"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.cycle_seconds = Histogram(
            "offloader_cycle_duration_seconds",
            "Duration of one cycle",
            buckets=_BUCKETS,
            registry=r,
        )
        self.cycles = Counter("offloader_cycles", "Cycles run", ["result"], registry=r)
        for result in ("ok", "failed"):
            self.cycles.labels(result)  # at 0 from the start
        self.skipped_ticks = Counter(
            "offloader_skipped_ticks", "Ticks skipped because a cycle overran", registry=r
        )
        self.last_success = Gauge(
            "offloader_last_success_timestamp_seconds",
            "Last successful run of a table",
            ["table"],
            registry=r,
        )
        self.lag = Gauge(
            "offloader_lag_seconds",
            "How far Iceberg is behind ClickHouse: age on ClickHouse's clock of the oldest row "
            "not yet offloaded, 0 when none waits (time and date watermarks), as in "
            "`offloader status`",
            ["table"],
            registry=r,
        )
        self.rows_behind = Gauge(
            "offloader_rows_behind",
            "Rows in ClickHouse past the table's committed watermark, after its last run",
            ["table"],
            registry=r,
        )
        self.newest_age = Gauge(
            "offloader_newest_offloaded_row_age_seconds",
            "Now minus the newest offloaded row's watermark (time watermarks; grows while a "
            "source is quiet: for dashboards, not for lag alerts)",
            ["table"],
            registry=r,
        )
        self.config_errors = Counter(
            "offloader_config_reload_errors", "Config reloads rejected", registry=r
        )

    def _view_metrics(self, r: CollectorRegistry) -> None:
        """The view over both tiers (view.py)."""
        self.view_failures = Counter(
            "offloader_view_failures",
            "Failed replacements of the table's view over both tiers (the view keeps its "
            "previous consistent definition; the next run retries)",
            ["table"],
            registry=r,
        )
        self.view_current = Gauge(
            "offloader_view_current",
            "1 when the table's view over both tiers was brought to the committed position "
            "by its last run, 0 when that failed",
            ["table"],
            registry=r,
        )

    def _retention_metrics(self, r: CollectorRegistry) -> None:
        """Verified hot retention (retention.py) and the audit's drifted days."""
        self.retention_partitions = Counter(
            "offloader_retention_partitions_dropped",
            "Hot partitions dropped by hot_retention after Iceberg was verified to hold them",
            ["table"],
            registry=r,
        )
        self.retention_rows = Counter(
            "offloader_retention_rows_dropped",
            "Hot rows dropped by hot_retention (each also in Iceberg, verified)",
            ["table"],
            registry=r,
        )
        self.retention_refusals = Counter(
            "offloader_retention_refusals",
            "Partitions hot_retention would have dropped but did not, by reason: the tiers "
            "differ (differ), the partition changed while compared or dropped (changed), "
            "verify's checksum differs (verify), or rows arrived in days already dropped "
            "(late)",
            ["table", "reason"],
            registry=r,
        )
        self.retention_passes = Counter(
            "offloader_retention_passes",
            "Retention passes per table by result: ok, refused (a partition refused or rows "
            "in dropped days), failed (an error: see the log), skipped (table locked)",
            ["table", "result"],
            registry=r,
        )
        self.retention_refused = Gauge(
            "offloader_retention_refused_partitions",
            "Partitions the table's last retention pass refused to drop, or holding rows in "
            "days already dropped (0: nothing refused)",
            ["table"],
            registry=r,
        )
        self.drifted_days = Gauge(
            "offloader_drifted_days",
            "Days in the audit window whose row counts differ between ClickHouse and Iceberg "
            "after the last run (late rows, deletes); see `offloader repair`",
            ["table"],
            registry=r,
        )

    def _maintenance_metrics(self, r: CollectorRegistry) -> None:
        """Maintenance passes and what they did (the table's shape after them:
        _table_shape_metrics)."""
        self.maintenance_runs = Counter(
            "offloader_maintenance_runs",
            "Maintenance passes of a table, by result (ok, failed, skipped, missing)",
            ["table", "result"],
            registry=r,
        )
        self.maintenance_seconds = Histogram(
            "offloader_maintenance_duration_seconds",
            "Duration of one table's maintenance pass",
            ["table"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.files_rewritten = Counter(
            "offloader_maintenance_files_rewritten",
            "Data files replaced by compaction",
            ["table"],
            registry=r,
        )
        self.bytes_rewritten = Counter(
            "offloader_maintenance_bytes_rewritten",
            "Bytes of data files replaced by compaction",
            ["table"],
            registry=r,
        )
        self.snapshots_expired = Counter(
            "offloader_maintenance_snapshots_expired", "Snapshots expired", ["table"], registry=r
        )
        self.orphans_deleted = Counter(
            "offloader_maintenance_orphan_files_deleted",
            "Unreferenced files deleted",
            ["table"],
            registry=r,
        )

    def _table_shape_metrics(self, r: CollectorRegistry) -> None:
        """The Iceberg table's shape after the last maintenance pass."""
        self.data_files = Gauge(
            "offloader_table_data_files",
            "Data files in the table's current snapshot (after the last maintenance pass)",
            ["table"],
            registry=r,
        )
        self.manifests = Gauge(
            "offloader_table_manifests",
            "Manifests of the table's current snapshot (after the last maintenance pass)",
            ["table"],
            registry=r,
        )
        self.table_snapshots = Gauge(
            "offloader_table_snapshots",
            "Snapshots the table's metadata holds (after the last maintenance pass)",
            ["table"],
            registry=r,
        )
        self.metadata_files = Gauge(
            "offloader_table_metadata_files",
            "Metadata files kept (after the last maintenance pass)",
            ["table"],
            registry=r,
        )

    def serve(self, host: str, port: int) -> Any:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info(
            "metrics listening", extra={"address": f"http://{host}:{server.server_port}/metrics"}
        )
        return server

    def track(self, tables: Iterable[str]) -> None:
        """Create every labelled counter an alert or a panel takes increase() or rate()
        of at 0 for each of these tables and each label value it can take, and drop the
        series of tables no longer configured. Without the 0, a series would appear at
        its first event, and `increase(...[30m]) >= 2` would fire only on the third.
        Called at start and after each config reload."""
        wanted = set(tables)
        for table in wanted - self.tracked:
            for reason in FAILURE_REASONS:
                self.failures.labels(table, reason)
            for result in MAINTENANCE_RESULTS:
                self.maintenance_runs.labels(table, result)
            for reason in REFUSAL_REASONS:
                self.retention_refusals.labels(table, reason)
            for result in RETENTION_RESULTS:
                self.retention_passes.labels(table, result)
            for counter in (*self._per_table_counters, self.table_seconds):
                counter.labels(table)
            self.maintenance_seconds.labels(table)
        for table in self.tracked - wanted:
            for metric in self._per_table:
                _remove(metric, table)
            for reason in FAILURE_REASONS:
                _remove(self.failures, table, reason)
            for result in MAINTENANCE_RESULTS:
                _remove(self.maintenance_runs, table, result)
            for reason in REFUSAL_REASONS:
                _remove(self.retention_refusals, table, reason)
            for result in RETENTION_RESULTS:
                _remove(self.retention_passes, table, result)
        self.tracked = wanted

    def table(self, report: TableReport) -> None:
        t = report.target
        self.table_seconds.labels(t).observe(report.seconds)
        self.rows.labels(t).inc(report.rows)
        self.bytes.labels(t).inc(report.bytes)
        self.snapshots.labels(t).inc(report.snapshots)
        if report.status == Status.FAILED:
            self.failures.labels(t, report.reason or "error").inc()
        elif report.status in (Status.OK, Status.IDLE):
            self.last_success.labels(t).set(time.time())
        if report.drifted is not None:
            self.drifted_days.labels(t).set(len(report.drifted))
        if report.view_error is not None:
            self.view_failures.labels(t).inc()
            self.view_current.labels(t).set(0)
        elif report.status in (Status.OK, Status.IDLE):
            self.view_failures.labels(t).inc(0)  # the series exists at 0 from the start
            self.view_current.labels(t).set(1)
        if report.rows_behind is not None:
            self.rows_behind.labels(t).set(report.rows_behind)
        if report.lag_seconds is not None:
            self.lag.labels(t).set(report.lag_seconds)
        age = newest_row_age(report.watermark)
        if age is not None:
            self.newest_age.labels(t).set(age)

    def maintenance(self, report: MaintenanceReport) -> None:
        t = report.target
        self.maintenance_runs.labels(t, report.status).inc()
        self.maintenance_seconds.labels(t).observe(report.seconds)
        self.files_rewritten.labels(t).inc(report.files_rewritten)
        self.bytes_rewritten.labels(t).inc(report.bytes_rewritten)
        self.snapshots_expired.labels(t).inc(report.snapshots_expired)
        self.orphans_deleted.labels(t).inc(report.orphans_deleted)
        if report.view_error is not None:
            self.view_failures.labels(t).inc()
            self.view_current.labels(t).set(0)
        if report.shape is not None:
            self.data_files.labels(t).set(report.shape.data_files)
            self.manifests.labels(t).set(report.shape.manifests)
            self.table_snapshots.labels(t).set(report.shape.snapshots)
            self.metadata_files.labels(t).set(report.shape.metadata_files)

    @property
    def _per_table_counters(self) -> tuple[Counter, ...]:
        return (
            self.rows,
            self.bytes,
            self.snapshots,
            self.view_failures,
            self.retention_partitions,
            self.retention_rows,
            self.files_rewritten,
            self.bytes_rewritten,
            self.snapshots_expired,
            self.orphans_deleted,
        )

    @property
    def _per_table(self) -> tuple[Any, ...]:
        """Every metric labelled by the table alone (a removed table's series go with it)."""
        return (
            *self._per_table_counters,
            self.table_seconds,
            self.last_success,
            self.lag,
            self.rows_behind,
            self.newest_age,
            self.drifted_days,
            self.view_current,
            self.retention_refused,
            self.maintenance_seconds,
            self.data_files,
            self.manifests,
            self.table_snapshots,
            self.metadata_files,
        )

    def retention(self, report: RetentionReport) -> None:
        t = report.target
        if report.dry_run:
            return
        if report.result == Status.OFF:
            return
        self.retention_passes.labels(t, report.result).inc()
        self.retention_partitions.labels(t).inc(len(report.dropped))
        self.retention_rows.labels(t).inc(sum(d.rows for d in report.dropped))
        for reason in report.reasons:
            self.retention_refusals.labels(t, reason).inc()
        if report.late:
            self.retention_refusals.labels(t, "late").inc(len(report.late))
        if report.status == Status.OK:
            self.retention_refused.labels(t).set(len(report.refused) + len(report.late))

    def cycle(self, seconds: float, ok: bool) -> None:
        self.cycle_seconds.observe(seconds)
        self.cycles.labels("ok" if ok else "failed").inc()


# The results of a table's maintenance pass (maintenance.MaintenanceReport.status).
MAINTENANCE_RESULTS = (Status.OK, Status.FAILED, Status.SKIPPED, Status.MISSING)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never created (e.g. a gauge set only after a run)
        pass


def newest_row_age(position: list[Any] | None) -> float | None:
    """Seconds between now and a time watermark ("YYYY-MM-DD HH:MM:SS.ffffff" UTC)."""
    if not position or not isinstance(position[0], str):
        return None
    try:
        when = dt.datetime.fromisoformat(position[0]).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return max(0.0, time.time() - when.timestamp())
