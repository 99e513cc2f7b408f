"""Reading one keyset page through a table's transport, and turning it into Arrow.

Both transports answer the same two calls: `page_reader` gives the reader of a page
query (and the SELECT list it wants), `to_batch` turns what it read into an Arrow
batch of the Iceberg schema. The pipeline and repair use only these.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from offloader import convert
from offloader.clickhouse import ClickHouseSession, Page
from offloader.clickhouse_http import ArrowHttpSession
from offloader.config import TableConfig
from offloader.errors import DataError, TableError
from offloader.plan import SourcePlan
from offloader.source import Source
from offloader.sql import quote_ident

# Converted pages are written to Parquet data files in chunks of about this many rows
# (or append_rows if smaller) while the run goes on; a commit then adds the files
# of up to append_rows rows as one snapshot. Memory stays bounded by a chunk and a
# few pages instead of a whole append.
FILE_ROWS = 250_000


def position_of(page: Page, plan_: SourcePlan, row: int) -> list[Any]:
    """The encoded (watermark, keys...) of one row of a page."""
    offsets = plan_.offsets
    out = []
    for i in plan_.order_index:
        col = plan_.columns[i]
        wire = [page.columns[offsets[i] + k][row] for k in range(len(col.select))]
        out.append(convert.encode_value(convert.cursor_value(col, wire)))
    return out


@dataclass(frozen=True, slots=True)
class Fetched:
    """One page as a transport read it, with the position of its last row."""

    payload: Page | pa.RecordBatch  # native columns, or an Arrow batch of wire forms
    rows: int
    position: list[Any]


Reader = Callable[[str, Sequence[str]], Awaitable[Fetched]]


def page_reader(
    ch: Source, table: TableConfig, src: SourcePlan, source: str
) -> tuple[Reader, list[str]]:
    """How this table's transport reads a page: a reader and the SELECT list it wants."""
    if isinstance(ch, ArrowHttpSession):
        return _arrow_reader(ch, src)
    assert isinstance(ch, ClickHouseSession)
    return _native_reader(ch, table, src, source)


def to_batch(table: TableConfig, src: SourcePlan, page: Fetched) -> pa.RecordBatch:
    """Turn a fetched page into an Arrow batch of the Iceberg schema (blocking: run it in
    a worker thread)."""
    payload = page.payload
    if isinstance(payload, pa.RecordBatch):
        return convert.conform_batch(table.target, src.columns, payload)
    return convert.to_record_batch(table.target, src.columns, payload.columns)


def _native_reader(
    ch: ClickHouseSession, table: TableConfig, src: SourcePlan, source: str
) -> tuple[Reader, list[str]]:
    binary = table.strings == "binary"

    async def read(query: str, select: Sequence[str]) -> Fetched:
        try:
            page = await ch.page(query, len(select), strings_as_bytes=binary)
        except DataError as exc:
            if exc.reason == "utf8":
                detail = await _invalid_utf8_columns(ch, src, source)
                raise DataError(str(exc) + detail, reason="utf8") from exc
            raise
        at = position_of(page, src, page.rows - 1) if page.rows else []
        return Fetched(page, page.rows, at)

    return read, src.select


def _arrow_reader(http: ArrowHttpSession, src: SourcePlan) -> tuple[Reader, list[str]]:
    async def read(query: str, select: Sequence[str]) -> Fetched:
        batch = await http.page(query)
        rows = batch.num_rows
        at = arrow_position(batch, src, rows - 1) if rows else []
        return Fetched(batch, rows, at)

    return read, src.arrow_select


def arrow_position(batch: pa.RecordBatch, src: SourcePlan, row: int) -> list[Any]:
    return [
        convert.encode_value(convert.arrow_cursor(src.columns[i], batch.column(i)[row].as_py()))
        for i in src.order_index
    ]


async def _invalid_utf8_columns(ch: Source, src: SourcePlan, source: str) -> str:
    """Name the String columns holding invalid UTF-8, with one example, for the error."""
    found = []
    for col in src.columns:
        if col.ch_type.unwrap().name not in ("String", "FixedString"):
            continue
        q = quote_ident(col.name)
        try:
            bad = await ch.rows(
                f"SELECT hex(any({q})), count() FROM {source} WHERE NOT isValidUTF8({q})"
            )
        except TableError:
            return ""
        if bad and bad[0][1]:
            found.append(f"column {col.name!r}: {bad[0][1]} values, e.g. hex {bad[0][0][:40]}")
    return ("; " + "; ".join(found)) if found else ""


async def keyset_pages(
    read: Reader,
    select: Sequence[str],
    query: Callable[[Sequence[Any] | None], str],
    after: Sequence[Any] | None,
    batch_rows: int,
) -> AsyncGenerator[Fetched, None]:
    """The pages of a keyset scan, in order: `query(after)` is the page query after a
    position; each next page starts after the previous page's last row. Ends after an
    empty or short page."""
    while True:
        page = await read(query(after), select)
        if page.rows == 0:
            return
        yield page
        if page.rows < batch_rows:
            return
        after = page.position
