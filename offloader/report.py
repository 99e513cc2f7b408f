"""What one table run did: the report the supervisor, metrics, logs and `--json` share."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """How a table run ended (logs, `--json`, the metrics' `status` label)."""

    OK = "ok"  # rows committed
    IDLE = "idle"  # nothing to read
    FAILED = "failed"  # `reason` and `error` say why; committed rows are kept
    SKIPPED = "skipped"  # another worker holds the table's lock


@dataclass(slots=True)
class TableReport:
    target: str
    source: str
    status: RunStatus = RunStatus.OK
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
    view_error: str | None = None  # the view over both tiers could not be replaced (view.py)

    def stage(self, name: str, seconds: float) -> None:
        """Add `seconds` to the time spent in stage `name`."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds

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
        if self.view_error:
            d["view_error"] = self.view_error
        if self.rows_behind is not None:
            d["rows_behind"] = self.rows_behind
            d["lag_seconds"] = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


# Why a partition was not dropped (offloader_retention_refusals_total{reason}): the tiers
# differ on one of its days, it changed while compared or dropped, verify's checksum
# found a difference, or rows arrived in days already dropped.
REFUSAL_REASONS = ("differ", "changed", "verify", "late")
# A pass per table (offloader_retention_passes_total{result}, RetentionReport.result).
RETENTION_RESULTS = ("ok", "refused", "failed", "skipped")
