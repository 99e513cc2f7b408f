"""The one write path: pages read from ClickHouse become Parquet data files of the
Iceberg table (PageWriter), and the one two-phase commit that makes them part of it
(commit: Iceberg, then PostgreSQL). Used by a table run (pipeline.py), which commits
every `append_rows`, and by a repair (repair.py), which commits once at the end.

Pages are converted to Arrow in worker threads (`cpu` limiter) as they arrive, and
chunks of about FILE_ROWS rows are written as data files by a second task (`io`
limiter), so writing Parquet overlaps reading and converting the next pages. A page
ClickHouse encoded as Parquet already (the parquet transport) is stored as it is.
Each chunk carries the position it reaches and the per-day rows and row-hash sums of
its rows (the audit's record), added up until the files are handed over."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from offloader import faults
from offloader.iceberg import Marker, WrittenFiles
from offloader.source import Page
from offloader.source.shards import parts_of
from offloader.sql.text import RowHash
from offloader.state import Advance, DaySum, Store
from offloader.tiers import audit

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.iceberg import IcebergTable

# Converted pages are written to Parquet data files in chunks of about this many rows
# (or the flush size if smaller): memory stays bounded by a chunk and a few pages.
FILE_ROWS = 250_000

# The files written since the last hand-over, the position they reach and their
# per-day sums.
Flush = Callable[[list[WrittenFiles], list[Any], dict[int, DaySum]], Awaitable[None]]


def _no_stage(name: str, seconds: float) -> None:
    pass


@dataclass(frozen=True)
class PageWriter:
    """Writes a table's pages as data files of `ice` (see the module's docstring)."""

    ice: IcebergTable
    watermark: str  # the column data files are sorted and split on
    day_column: str | None  # per-day sums are kept of this column (None: not audited)
    day_kind: str  # days.kind_of the watermark type
    hashed: RowHash | None
    cpu: anyio.CapacityLimiter | None = None
    io: anyio.CapacityLimiter | None = None
    stage: Callable[[str, float], None] = _no_stage  # TableReport.stage
    page_done: Callable[[int], None] | None = None  # after each page, its rows (progress)

    async def write(self, pages: AsyncIterable[Page], flush: Flush, flush_rows: int) -> None:
        """Write every page of `pages`; hand the files over to `flush` each time they
        hold `flush_rows` rows or more, and at the end."""
        send, receive = anyio.create_memory_object_stream[_Chunk](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._files, receive, flush, flush_rows)
            async with send:
                await self._convert(pages, send, min(FILE_ROWS, flush_rows))

    async def _convert(
        self, pages: AsyncIterable[Page], chunks: MemoryObjectSendStream[_Chunk], chunk_rows: int
    ) -> None:
        pending: list[pa.RecordBatch | bytes] = []
        pending_rows = 0
        sums: dict[int, DaySum] = {}
        position: list[Any] | None = None
        async for read in pages:
            # A sharded read's round is one position over several pages: the chunk
            # that holds its last page is the first to reach that position.
            for page in parts_of(read):
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
                        limiter=self.cpu,
                    )
                    self.stage("convert", time.monotonic() - t0)
                faults.point("convert")
                del page  # the driver's Python objects are the bulk of a page's memory
                pending.append(item)
                pending_rows += rows
                audit.add_sums(sums, page_sums)
                if self.page_done is not None:
                    self.page_done(rows)
            position = read.position
            del read
            if pending_rows >= chunk_rows:
                await chunks.send((pending, position, sums))
                pending, pending_rows, sums = [], 0, {}
        if pending and position is not None:
            await chunks.send((pending, position, sums))

    async def _files(
        self, receive: MemoryObjectReceiveStream[_Chunk], flush: Flush, flush_rows: int
    ) -> None:
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
                        self.ice.add_encoded, encoded, limiter=self.io
                    )
                else:
                    batches = [i for i in items if not isinstance(i, bytes)]
                    files = await anyio.to_thread.run_sync(
                        self.ice.write_files, batches, self.watermark, limiter=self.io
                    )
                self.stage("iceberg_write", time.monotonic() - t0)
                faults.point("write")
                written.append(files)
                rows += files.rows
                audit.add_sums(sums, chunk_sums)
                position = at
                if rows >= flush_rows:
                    await flush(written, position, sums)
                    written, rows, sums = [], 0, {}
        if written and position is not None:
            await flush(written, position, sums)


# Converted batches (or the Parquet files ClickHouse encoded), the position they reach
# and their per-day sums.
_Chunk = tuple[list["pa.RecordBatch | bytes"], list[Any], dict[int, DaySum]]


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """What one offloader commit records: the marker its Iceberg snapshot carries and
    the per-day sums PostgreSQL adds (or, with `replace_days`, replaces those recorded
    with: a repair). The marker's `days` is these sums as `state.encode_days` wrote them."""

    marker: Marker
    sums: dict[int, DaySum]
    replace_days: bool = False

    def advance(self, snapshot_id: int) -> Advance:
        """PostgreSQL's side of the commit, once Iceberg's snapshot `snapshot_id` holds it."""
        m = self.marker
        return Advance(
            m.seq,
            m.position,
            m.rows,
            m.run_id,
            snapshot_id,
            self.sums,
            replace_days=self.replace_days,
        )


async def commit(
    store: Store,
    target: str,
    record: CommitRecord,
    iceberg: Callable[[Marker], int],
    *,
    limiter: anyio.CapacityLimiter | None = None,
    stage: Callable[[str, float], None] = _no_stage,
    point: str = "iceberg_commit",
) -> int:
    """The one two-phase commit of a table run's append and of a repair: the Iceberg
    snapshot carrying `record.marker` (`iceberg(marker)`, compare-and-set, returns its
    id), then PostgreSQL advanced to it in one transaction (compare-and-set on the seq
    before). Shielded: once the Iceberg commit starts, a deadline or shutdown waits for
    both. A kill between the two is recovered from the marker by the next run.
    Returns the snapshot id."""
    marker = record.marker
    with anyio.CancelScope(shield=True):
        t0 = time.monotonic()
        snapshot_id = await anyio.to_thread.run_sync(iceberg, marker, limiter=limiter)
        stage("iceberg_commit", time.monotonic() - t0)
        faults.point(point)
        t0 = time.monotonic()
        await store.commit(target, marker.seq - 1, record.advance(snapshot_id))
        stage("watermark_commit", time.monotonic() - t0)
    return snapshot_id
