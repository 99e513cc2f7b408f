"""What offloader keeps per table in its state store, and what a table run needs of
that store: the `Store` protocol PostgreSQL's `Watermarks` implements (and the unit
tests' in-memory fake). Pure: no driver."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, ClassVar, Protocol

__all__ = [
    "Advance",
    "AuditAgreed",
    "Committed",
    "CommittedMark",
    "DaySum",
    "DaySums",
    "RetentionIntent",
    "StatusRow",
    "Store",
    "TableState",
    "ViewState",
]


# Row-hash sums add up modulo 2^64, as ClickHouse's sum of UInt64 wraps.
HASH_MODULUS = 2**64
# How long closing a connection or releasing a lock may take once a run is cancelled
# (shielded): a dead server must not hold up a shutdown.
CLEANUP_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class DaySum:
    """A day's offloaded rows and the sum of their row hashes (sql.RowHash)."""

    rows: int
    checksum: int
    columns_key: str = ""


DaySums = Mapping[int, DaySum]  # by day number (days since 1970-01-01)


def encode_days(days: DaySums, replace: bool = False) -> str:
    """A commit's per-day sums as the JSON its Iceberg snapshot carries, so a commit
    recovered from Iceberg after a crash records them in PostgreSQL too."""
    body = {str(d): [s.rows, str(s.checksum), s.columns_key] for d, s in sorted(days.items())}
    return json.dumps({"replace": replace, "days": body}, separators=(",", ":"))


def decode_days(text: str | None) -> tuple[dict[int, DaySum], bool]:
    """(days, replace) from encode_days' text; nothing for a snapshot without it."""
    if not text:
        return {}, False
    doc = json.loads(text)
    days = {int(d): DaySum(int(v[0]), int(v[1]), str(v[2])) for d, v in doc["days"].items()}
    return days, bool(doc.get("replace"))


@dataclass(frozen=True, slots=True)
class AuditAgreed:
    """An audit window (day numbers first..last) that agreed in full at commit `seq`,
    and the source's parts then (sql.system.parts_fingerprint): while the seq, the window and
    the parts stay the same, so do ClickHouse's rows and the answer. `caught_up`: no
    row was waiting past the position then (nor is one while the parts stay the same)."""

    seq: int
    first: int
    last: int
    parts: str
    caught_up: bool = False

    def encode(self) -> str:
        return f"{self.seq} {self.first} {self.last} {self.parts} {int(self.caught_up)}"

    @classmethod
    def decode(cls, text: str | None) -> AuditAgreed | None:
        try:
            seq, first, last, parts, caught_up = (text or "").split(" ")
            return cls(int(seq), int(first), int(last), parts, caught_up == "1")
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RetentionIntent:
    """A hot partition retention is about to detach and drop (retention.py), recorded
    before the detach so a pass killed at any step is finished or undone: the parts that
    were compared, the partition's detached parts before (not ours), the day the table's
    `retained_until` moves to once they are dropped, and the phase. In phase `detach`
    a stopped pass may still be undone (its parts attached again); once the detached
    parts were found to be the compared ones, phase `drop` is recorded with
    `retained_until` in one transaction, and from then on recovery only moves forward:
    it drops whatever of the parts is still detached, never attaches one again.

    `method` "move" (a `retiring_table`): the partition is moved to that table instead of
    detached, parts are named by their contents' hash (a moved part is renamed), and
    "detached" means "in the retiring table".

    While an intent is pending, its days (`first_day` up to `retained_until`) belong to
    retention: the cycle's audit, `late_rows = "repair"` and `offloader repair` leave
    them alone (`covers`). `snapshot_id` is the Iceberg snapshot the partition was
    compared against: a pass recovering the intent drops nothing if Iceberg moved since
    (it puts the parts back and compares again). Intents recorded by 0.3.0 have neither:
    they hold every day before `retained_until`, and count as compared against an
    unknown snapshot."""

    partition: str
    parts: tuple[str, ...]
    detached_before: tuple[str, ...]
    retained_until: str  # ISO day
    phase: str = "detach"  # RetentionIntent.DETACH or .DROP
    method: str = "detach"  # "detach" or "move" (retention.Method)
    first_day: str = ""  # ISO day: the partition's first ('' from 0.3.0: unknown)
    snapshot_id: int | None = None  # the Iceberg snapshot compared against

    DETACH: ClassVar[str] = "detach"
    DROP: ClassVar[str] = "drop"

    def encode(self) -> str:
        return json.dumps(
            [
                self.partition,
                list(self.parts),
                list(self.detached_before),
                self.retained_until,
                self.phase,
                self.method,
                self.first_day,
                self.snapshot_id,
            ]
        )

    @classmethod
    def decode(cls, text: str | None) -> RetentionIntent | None:
        """An intent as encoded; those recorded before `method` existed detached, those
        recorded by 0.3.0 have no first day nor snapshot."""
        if not text:
            return None
        partition, parts, before, until, *rest = json.loads(text)
        return cls(str(partition), tuple(parts), tuple(before), str(until), *rest)

    def covers(self, day: date) -> bool:
        """Whether `day` is one of the partition's days (every day before its
        retained_until when the first is unknown)."""
        after = date.fromisoformat(self.retained_until)
        first = date.fromisoformat(self.first_day) if self.first_day else date.min
        return first <= day < after

    def pending(self, target: str) -> str:
        """Why a day it covers is left alone, and what to do."""
        first = self.first_day or "the first day"
        last = date.fromisoformat(self.retained_until) - timedelta(days=1)
        return (
            f"{target}: a retention pass of partition {self.partition} ({first} to {last}) "
            f"is pending (phase {self.phase}: its parts are being parked or dropped, so "
            "ClickHouse's rows of those days are not all visible); those days are neither "
            "audited nor repaired until the next retention pass (`offloader retain`) "
            "finishes or undoes it"
        )


@dataclass(frozen=True, slots=True)
class Advance:
    """One offloader commit as PostgreSQL records it: the watermark moves to `seq` at
    `position` with its commit-log row and the per-day sums of the rows it moved
    (added; replaced with `replace_days`, as a repair does), in one transaction."""

    seq: int
    position: Sequence[Any]
    rows: int
    run_id: str
    snapshot_id: int | None
    days: DaySums | None = None
    replace_days: bool = False
    recovered: bool = False  # taken from Iceberg's marker after a crash (plan.reconcile_with)


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a table's offloaded rows stand: the offloader commit `seq` (0: none yet) and
    the position `(watermark, keys…)` of the last row it holds (None: no row yet). A run
    starts from its state's (`TableState.committed`), each commit returns the next
    (`after`), and what reports and views show is read from the last."""

    seq: int = 0
    position: tuple[Any, ...] | None = None

    def after(self, position: Sequence[Any]) -> Committed:
        """The commit that follows this one, reaching `position`."""
        return Committed(self.seq + 1, tuple(position))

    @property
    def watermark(self) -> list[Any] | None:
        """The position as a list (the form queries and reports take), None before any row."""
        return list(self.position) if self.position else None


@dataclass(frozen=True, slots=True)
class CommittedMark:
    """What the newest offloader snapshot of a table says it reached (the Iceberg side of
    the state PostgreSQL keeps; plan.reconcile_with compares the two)."""

    seq: int
    position: tuple[Any, ...]
    run_id: str
    snapshot_id: int
    committed_at: datetime
    rows: int
    days: str | None = None  # the commit's per-day sums (state.encode_days), if recorded


@dataclass(frozen=True, slots=True)
class TableState:
    target: str
    seq: int
    position: tuple[Any, ...] | None
    rows_total: int
    updated_at: datetime | None
    agreed: AuditAgreed | None = None  # cleared by every commit
    has_view: bool = False  # a view over both tiers was recorded for the table
    # Days before it were dropped from ClickHouse by hot_retention: Iceberg's alone.
    retained_until: date | None = None
    retention_intent: RetentionIntent | None = None  # a drop in progress (retention.py)

    @property
    def committed(self) -> Committed:
        return Committed(self.seq, self.position)


@dataclass(frozen=True, slots=True)
class StatusRow:
    target: str
    source: str
    seq: int
    position: tuple[Any, ...] | None
    rows_total: int
    updated_at: datetime | None
    last_status: str | None
    last_run_at: datetime | None
    last_rows: int | None
    last_error: str | None
    retained_until: date | None = None  # hot_retention dropped the days before it
    retention_last: dict[str, Any] | None = None  # the last retention pass (record_retention)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One table run as the runs log keeps it (Store.record_run): its id, table, the
    interval it held the table's lock, how it ended and what it moved."""

    run_id: str
    target: str
    started_at: datetime
    finished_at: datetime
    status: str
    rows: int
    pages: int
    snapshots: int
    seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class ViewState:
    """The view over both tiers as offloader last replaced it (view.py): the commit and
    position it is at, the metadata file its cold side reads, a digest of its inputs;
    or the error of the last attempt to replace it."""

    target: str
    name: str
    seq: int = -1
    position: tuple[Any, ...] | None = None
    metadata: str | None = None
    snapshot_id: int | None = None
    signature: str = ""
    replaced_at: datetime | None = None
    error: str | None = None
    failed_at: datetime | None = None


class Store(Protocol):
    """What a table run needs of the state store (Watermarks; a fake in the unit tests)."""

    def table_lock(self, target: str) -> AbstractAsyncContextManager[None]: ...

    async def get(self, target: str, source: str) -> TableState: ...

    async def commit(self, target: str, prev_seq: int, advance: Advance) -> None: ...

    async def day_sums(self, target: str, first: int, last: int) -> dict[int, DaySum]: ...

    async def audit_agreed(self, target: str, agreed: AuditAgreed) -> None: ...

    async def view_state(self, target: str) -> ViewState | None: ...

    async def views(self, target: str | None = None) -> list[ViewState]: ...

    async def status(self) -> list[StatusRow]: ...

    async def record_view(self, state: ViewState) -> None: ...

    async def view_failed(self, target: str, name: str, error: str) -> None: ...

    async def forget_view(self, target: str) -> None: ...

    async def retention_intent(self, target: str, intent: RetentionIntent | None) -> None: ...

    async def record_retention(self, target: str, result: dict[str, Any]) -> None: ...

    async def retention_dropping(self, target: str, intent: RetentionIntent) -> None:
        """A retention drop's point of no return: `intent` (phase drop) and the days
        before its retained_until dropped from the hot tier (never moves back)."""
        ...

    async def record_run(self, run: RunRecord) -> None: ...
