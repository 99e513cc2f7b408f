"""In-memory stand-ins for ClickHouse (the source interface) and PostgreSQL (the state
store), so a whole table run can be unit-tested without servers.

FakeSource holds rows of (id Int64 watermark, v String) in memory and answers the page
interface by filtering and sorting them in Python, with ClickHouse's `LIMIT n WITH
TIES` semantics; its small queries are recognised by what they ask for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from offloader.config import TableConfig
from offloader.errors import InconsistentState, Locked
from offloader.plan import SourcePlan
from offloader.sql.scan import Scan
from offloader.sql.text import RowHash
from offloader.state import Advance, AuditAgreed, DaySum, RunRecord, TableState, ViewState

COLUMNS = [("id", "Int64"), ("v", "String")]
NOW_MICROS = int(dt.datetime(2026, 11, 27, tzinfo=dt.UTC).timestamp() * 1_000_000)


@dataclass
class FakePage:
    data: list[tuple[int, str]]
    plan: SourcePlan

    @property
    def rows(self) -> int:
        return len(self.data)

    @property
    def position(self) -> list[Any]:
        return [self.data[-1][0]] if self.data else []

    def checksums(self) -> pa.Array | None:
        return None

    cut = False
    last = False

    def encoded(self) -> bytes | None:
        return None

    async def summed(self) -> dict[int, DaySum] | None:
        return None

    def to_batch(self) -> pa.RecordBatch:
        ids, vs = zip(*self.data, strict=True) if self.data else ((), ())
        return pa.RecordBatch.from_arrays(
            [pa.array(ids, pa.int64()), pa.array(vs, pa.string())], schema=self.plan.schema
        )


@dataclass
class FakeSource:
    data: list[tuple[int, str]]
    label: str = "fake"
    endpoint: str = "memory"
    # Called with the page number (1-based) before a page is served: raise to fail it.
    on_page: Callable[[int], None] | None = None
    pages_served: int = 0
    commands: list[str] = field(default_factory=list)  # DDL run through command()
    broken_filter: bool = False  # pages ignore the position they are given (a server bug)

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        if "system.columns" in query:
            return list(COLUMNS)
        if query.startswith("DESCRIBE TABLE iceberg"):  # the view's cold side (view.py)
            return [("id", "Int64", ""), ("v", "String", "")]
        if "default_kind IN" in query:  # the view's constant defaults: none
            return []
        if query.startswith("SELECT count(), min("):  # rows behind (sql.scan.behind_query)
            after = _after_value(query)
            waiting = [r[0] for r in self.data if after is None or r[0] > after]
            return [(len(waiting), min(waiting, default=0), NOW_MICROS, max(waiting, default=0))]
        raise AssertionError(f"FakeSource cannot answer {query!r}")

    async def scalar(self, query: str) -> Any:
        return (await self.rows(query))[0][0]

    async def command(self, query: str) -> None:
        self.commands.append(query)

    def pager(
        self, table: TableConfig, plan: SourcePlan, row_hash: RowHash | None = None
    ) -> FakePager:
        return FakePager(self, plan)


def _after_value(query: str) -> int | None:
    """The position in a behind query: `id` > N (None without one)."""
    found = re.search(r"`id` > (-?\d+)", query)
    return int(found.group(1)) if found else None


@dataclass
class FakePager:
    read_ahead = 0
    encodes = False

    source: FakeSource
    plan: SourcePlan

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> FakePage:
        self.source.pages_served += 1
        if self.source.on_page is not None:
            self.source.on_page(self.source.pages_served)
        rows = sorted(
            (r for r in self.source.data if r[0] <= int(scan.upto)),
            key=lambda r: r[0],
        )
        if after is not None and not self.source.broken_filter:
            rows = [r for r in rows if r[0] > int(after[0])]
        page = rows[:limit]
        # LIMIT n WITH TIES: the rows sharing the last row's position come along.
        while page and len(page) < len(rows) and rows[len(page)][0] == page[-1][0]:
            page.append(rows[len(page)])
        return FakePage(page, self.plan)


@dataclass
class FakeStore:
    """The state store (PostgreSQL's Watermarks) in memory, with its compare-and-set."""

    seq: dict[str, int] = field(default_factory=dict)
    position: dict[str, tuple[Any, ...] | None] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    locked: set[str] = field(default_factory=set)
    sums: dict[tuple[str, int], DaySum] = field(default_factory=dict)
    agreed: dict[str, AuditAgreed] = field(default_factory=dict)
    views: dict[str, ViewState] = field(default_factory=dict)
    on_commit: Callable[[], Awaitable[None]] | None = None

    @asynccontextmanager
    async def table_lock(self, target: str) -> AsyncIterator[None]:
        if target in self.locked:
            raise Locked(f"{target}: locked")
        self.locked.add(target)
        try:
            yield
        finally:
            self.locked.discard(target)

    async def get(self, target: str, source: str) -> TableState:
        seq, position = self.seq.get(target, 0), self.position.get(target)
        agreed = self.agreed.get(target)
        return TableState(target, seq, position, 0, None, agreed, target in self.views)

    async def audit_agreed(self, target: str, agreed: AuditAgreed) -> None:
        if self.seq.get(target, 0) == agreed.seq:
            self.agreed[target] = agreed

    async def commit(self, target: str, prev_seq: int, advance: Advance) -> None:
        if self.on_commit is not None:
            await self.on_commit()  # a checkpoint inside the commit (tests fire deadlines here)
        if self.seq.get(target, 0) != prev_seq:
            raise InconsistentState(f"{target}: at {self.seq.get(target)}, expected {prev_seq}")
        self.seq[target] = advance.seq
        self.position[target] = tuple(advance.position)
        self.agreed.pop(target, None)
        for day, add in (advance.days or {}).items():
            old = self.sums.get((target, day))
            if old is not None and not advance.replace_days:
                add = DaySum(
                    old.rows + add.rows, (old.checksum + add.checksum) % 2**64, add.columns_key
                )
            self.sums[(target, day)] = add

    async def day_sums(self, target: str, first: int, last: int) -> dict[int, DaySum]:
        return {d: s for (t, d), s in self.sums.items() if t == target and first <= d <= last}

    async def record_run(self, run: RunRecord) -> None:
        self.runs.append(run)

    async def view_state(self, target: str) -> ViewState | None:
        return self.views.get(target)

    async def record_view(self, state: ViewState) -> None:
        self.views[state.target] = state

    async def retention_intent(self, target: str, intent: Any) -> None:
        raise NotImplementedError("retention runs against PostgreSQL only")

    async def retention_dropping(self, target: str, intent: Any) -> None:
        raise NotImplementedError("retention runs against PostgreSQL only")

    async def record_retention(self, target: str, result: Any) -> None:
        raise NotImplementedError("retention runs against PostgreSQL only")

    async def forget_view(self, target: str) -> None:
        self.views.pop(target, None)

    async def view_failed(self, target: str, name: str, error: str) -> None:
        old = self.views.get(target) or ViewState(target, name)
        self.views[target] = dataclasses.replace(old, error=error)
