"""What an operation on a table did: the reports the supervisor, the operations, metrics,
logs and `--json` share, their one status vocabulary, and `guarded`, the one shell that
keeps a table's problem from escaping its operation."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from offloader.errors import Locked, TableError

if TYPE_CHECKING:
    from offloader.state import Committed

log = logging.getLogger(__name__)
T = TypeVar("T")


class Status(StrEnum):
    """How one operation on one table ended — a table run, a repair, a maintenance or a
    retention pass (logs, `--json`, the metrics' labels, exit codes)."""

    OK = "ok"  # done: rows committed, days replaced, a pass ran
    IDLE = "idle"  # a run with nothing to read
    NOTHING = "nothing"  # a repair with no day to replace
    MISSING = "missing"  # no Iceberg table yet (maintenance)
    OFF = "off"  # not asked of this table (retention without hot_retention)
    REFUSED = "refused"  # a repair whose every day must not be replaced
    FAILED = "failed"  # `reason` and `error` say why; what was committed is kept
    SKIPPED = "skipped"  # another worker holds the table's lock


class Verdict(StrEnum):
    """What `verify` found for a table."""

    EQUAL = "equal"
    DIFFERENT = "different"
    NOTHING = "nothing"  # no day compared: not a proof
    ERROR = "error"


class Guarded(Protocol):
    """A report `guarded` fills in when its operation fails."""

    target: str
    status: Status
    error: str | None
    reason: str | None
    seconds: float


def in_time(
    tables: Sequence[T], deadline: float | None, stopping: anyio.Event | None, what: str
) -> Iterator[T]:
    """The tables of a pass (maintenance, retention) one after another, until its
    `deadline` (time.monotonic()) or a shutdown: those not reached wait for the next
    pass (logged)."""
    for done, table in enumerate(tables):
        if (deadline is not None and time.monotonic() > deadline) or (
            stopping is not None and stopping.is_set()
        ):
            log.info(
                f"{what} pass out of time; the remaining tables wait for the next pass",
                extra={"remaining": len(tables) - done},
            )
            return
        yield table


@contextmanager
def guarded(report: Guarded, what: str) -> Iterator[None]:
    """The one shell around an operation on one table (a run, a repair, a maintenance or
    retention pass): it never raises for the table. A TableError fails the operation
    (skipped when another worker holds the table's lock) with its line and reason; any
    other exception is a bug, logged with its traceback as `<what> crashed` and
    reported as an internal error. Cancellation passes through, unless it is stray (no
    cancellation of this task raised it): that fails the operation like a bug, as a task
    group would otherwise end the table's task without a report. Times the operation."""
    started = time.monotonic()
    try:
        yield
    except TableError as exc:
        report.status = Status.SKIPPED if isinstance(exc, Locked) else Status.FAILED
        report.error, report.reason = str(exc), exc.reason
    except Exception as exc:
        _crashed(report, what, exc)
    except BaseException as exc:
        if not stray_cancellation(exc):
            raise
        _crashed(report, what, exc, "a cancellation no one asked for")
    finally:
        report.seconds = time.monotonic() - started


def _crashed(report: Guarded, what: str, exc: BaseException, kind: str = "") -> None:
    log.error(f"{what} crashed", extra={"table": report.target}, exc_info=exc)
    report.status = Status.FAILED
    report.reason = "internal"
    named = f"{kind} ({type(exc).__name__}: {exc})" if kind else f"{type(exc).__name__}: {exc}"
    report.error = f"{report.target}: internal error {named}"


def stray_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is a cancellation that nothing cancelled: no cancel scope around the
    current task is cancelled and the task has no cancel request pending. A cancelled
    future awaited again raises one (a driver's stale close waiter, say); passed through,
    it ends the task quietly, and a task group takes it for a cancellation it asked for."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    if anyio.current_effective_deadline() == -math.inf:
        return False  # a cancel scope around this task was cancelled
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


@dataclass(slots=True)
class TableReport:
    target: str
    source: str
    status: Status = Status.OK
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
    # Audited days whose checksums were not compared: their sums were recorded over other
    # columns than the source's now (checkup.note_unchecked).
    unchecked: list[str] = field(default_factory=list)

    def reached(self, committed: Committed) -> None:
        """The table's offloaded rows stand at `committed` (its position is the report's
        watermark)."""
        self.watermark = committed.watermark

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
        if self.unchecked:
            d["unchecked"] = self.unchecked
        if self.rows_behind is not None:
            d["rows_behind"] = self.rows_behind
            d["lag_seconds"] = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableReport:
        """The report `as_dict` gave (a worker process's, read back by `once`)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["status"] = Status(d["status"])
        return cls(**values)


# Why a partition was not dropped (offloader_retention_refusals_total{reason}): the tiers
# differ on one of its days, it changed while compared or dropped, verify's checksum
# found a difference, or rows arrived in days already dropped.
REFUSAL_REASONS = ("differ", "changed", "verify", "late")
# A pass per table (offloader_retention_passes_total{result}, RetentionReport.result).
RETENTION_RESULTS = (Status.OK, Status.REFUSED, Status.FAILED, Status.SKIPPED)
