"""The `parquet` transport: ClickHouse encodes each keyset page as a Parquet file of the
Iceberg schema (HTTP, `FORMAT Parquet`), and offloader stores the file as a data file
as it came: no row is decoded in Python. Python reads only each file's footer and the
last row's watermark and keys (the position).

The page query asks for the exact Iceberg types: leaf values a CAST cannot make exact
first (`_leaves`: Strings checked as UTF-8 and UInt64 against Int64's range with
`throwIf`, Enums, IPs and JSON as text, the wire forms every transport shares), then
a CAST of the whole column to the ClickHouse type whose Parquet is the Iceberg type
(`iceberg_type`: small integers widened, times as UTC microseconds, tuple fields
named as Iceberg names them). A value ClickHouse refuses fails the page with
the column named (ParquetPager._explain -> DataError), never a wrong file.

With a date or time watermark every page ends at the end of its first row's UTC day
(sql.scan.page_query `one_day`), so each file holds one day (the late-rows audit counts
days from the manifests; a day, month or year partition holds whole files). Pages
carry no per-row hash: when the audit asks for checksums, one more small query sums
the page's row hashes in ClickHouse (sql.scan.range_sums_query).

What the transport cannot produce exactly (FixedString, `strings = "binary"`,
partitions other than day/month/year of the watermark) is refused when the table is
opened, naming the column and pointing to `transport = "arrow"`, which stores the
same Iceberg contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio

from offloader import cursor
from offloader.config import TableConfig
from offloader.days import day_number, watermark_day
from offloader.errors import DataError, SourceSchemaError, TableError
from offloader.pinned import PINNED
from offloader.source import invalid_utf8_columns
from offloader.source.arrow import ArrowHttpSession
from offloader.sql.scan import Scan, above_int64_query, range_sums_query
from offloader.sql.text import RowHash, quote_ident, quote_string
from offloader.state import DaySum
from offloader.types import INT64_MAX, ChType
from offloader.wire import SHARED_LEAVES, TEXT_LEAVES, iceberg_type, rewrite_leaves

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.plan import SourcePlan

# ClickHouse's Parquet output pinned to what the Iceberg schema needs, whatever the
# server's profile says: Strings as Parquet strings, dates and times as logical types,
# nested types in the standard (compliant) layout, zstd as pyiceberg writes. Bloom
# filters are off (pyiceberg does not write them either; they cost ClickHouse CPU).
# Each column's CAST is aliased by the column's own name: WHERE and ORDER BY must still
# mean the source column (a DateTime64(9) watermark is compared as a time, not as the
# ticks it is stored as), so column names win over aliases.
# A column's dictionary is abandoned once it grows past this: ClickHouse's default
# (1 MiB) spends a fifth of a page's CPU building dictionaries of unique values (times,
# ids, prices) before giving up on them; low-cardinality columns (symbols, enums, tags)
# stay far below it. Same file sizes here, 0.29 -> 0.23 CPU seconds per 500k-row page
# (benchmarks/RESULTS.md, 2026-11-27, 1978f25).
DICTIONARY_BYTES = 64 * 1024
SETTINGS = {
    **PINNED,
    "prefer_column_name_to_alias": "1",
    "output_format_parquet_string_as_string": "1",
    "output_format_parquet_datetime_as_uint32": "0",
    "output_format_parquet_date_as_uint16": "0",
    "output_format_parquet_compliant_nested_types": "1",
    "output_format_parquet_compression_method": "zstd",
    "output_format_parquet_write_bloom_filter": "0",
    "output_format_parquet_max_dictionary_size": str(DICTIONARY_BYTES),
    "output_format_parquet_write_page_index": "1",
    "output_format_parquet_wide_integer_as_decimal": "0",
    "output_format_parquet_enum_as_byte_array": "1",
}
PARTITION_TRANSFORMS = ("day", "month", "year")

# A page of this transport is one data file, held in memory as ClickHouse encoded it.
# Pages are sized to about PAGE_BYTES of Parquet from the bytes per row of the page
# before (the first one reads FIRST_PAGE_ROWS), never more than batch_rows rows: a
# narrow table gets batch_rows-row pages (fewer queries, bigger files), a wide one
# pages of bounded memory.
PAGE_BYTES = 64 * 1024 * 1024
FIRST_PAGE_ROWS = 250_000
MIN_PAGE_ROWS = 10_000


def page_rows(limit: int, row_bytes: float | None) -> int:
    """The rows to ask of the next page: about PAGE_BYTES at `row_bytes` per row (the
    page before), FIRST_PAGE_ROWS without one, within [MIN_PAGE_ROWS, limit]. Pure."""
    wanted = FIRST_PAGE_ROWS if row_bytes is None else int(PAGE_BYTES / max(row_bytes, 1.0))
    return min(limit, max(MIN_PAGE_ROWS, wanted))


def _leaves(table: TableConfig, column: str) -> dict[str, str]:
    """SQL templates for the leaf values a CAST cannot make exact: Strings checked as
    UTF-8, UInt64 checked against Int64's range, text forms."""
    not_utf8 = (
        f"{table.target}: column {column!r}: a String value is not valid UTF-8; offload "
        'this table with transport = "arrow" and strings = "binary"'
    )
    too_big = (
        f"{table.target}: column {column!r}: a UInt64 value is above {INT64_MAX}; "
        'set uint64 = "decimal" on this table to store UInt64 as decimal(20,0)'
    )
    utf8 = f"throwIf(NOT ifNull(isValidUTF8({{0}}), 1), {_template_text(not_utf8)})"
    leaves = {"String": f"tupleElement(({{0}}, {utf8}), 1)", **TEXT_LEAVES, **SHARED_LEAVES}
    if table.uint64 == "error":
        big = f"throwIf(ifNull({{0}} > {INT64_MAX}, 0), {_template_text(too_big)})"
        leaves["UInt64"] = f"toInt64(tupleElement(({{0}}, {big}), 1))"
    return leaves


def _template_text(message: str) -> str:
    """A SQL string literal that survives str.format in a leaf template."""
    return quote_string(message).replace("{", "{{").replace("}", "}}")


def _unsupported(t: ChType) -> str | None:
    """Why a column of type `t` cannot travel as Parquet exactly, or None."""
    base = t.unwrap()
    if base.name == "FixedString":
        return "FixedString is stored as Iceberg binary, which ClickHouse's Parquet writes as text"
    for arg in base.args:
        if isinstance(arg, ChType) and (why := _unsupported(arg)):
            return why
    return None


def _check_table(table: TableConfig, plan: SourcePlan) -> bool:
    """Refuse what this transport cannot store exactly; whether pages end at UTC days."""

    def refuse(what: str) -> SourceSchemaError:
        return SourceSchemaError(
            f'{table.target}: the parquet transport cannot {what}; use transport = "arrow" '
            "for this table (it stores the same Iceberg contents)",
            reason="config",
        )

    if table.strings == "binary":
        raise refuse('store Strings as binary (strings = "binary")')
    for col in plan.columns:
        if why := _unsupported(col.ch_type):
            raise refuse(f"store column {col.name!r} ({col.ch_type}): {why}")
    wm_name, wm_type = plan.order[0]
    by_day = wm_type.unwrap().name in ("Date", "Date32", "DateTime", "DateTime64")
    for p in table.partition_by:
        if p.column != wm_name or p.transform not in PARTITION_TRANSFORMS or not by_day:
            raise refuse(
                f"write one file per partition of {p} (it splits files at UTC days of the "
                f"watermark {wm_name!r} only: day, month or year of it)"
            )
    return by_day


@dataclass(frozen=True, slots=True)
class ParquetPage:
    target: str
    plan: SourcePlan
    body: bytes  # a complete Parquet file of the Iceberg schema
    rows: int
    position: list[Any]  # the encoded (watermark, keys...) of the last row
    cut: bool  # ended at a UTC day or at its own size (the next page's size follows it)
    day: int | None = None  # the UTC day (number) all its rows are on
    sums_query: str | None = None  # sql.scan.range_sums_query of its rows
    http: ArrowHttpSession | None = None
    hash_key: str = ""
    last = False  # a short page proves nothing (source.scan_complete)

    def to_batch(self) -> pa.RecordBatch:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(self.body)).combine_chunks()
        table = table.cast(self.plan.schema)
        batches = table.to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=self.plan.schema)

    def checksums(self) -> pa.Array | None:
        return None

    def encoded(self) -> bytes | None:
        return self.body

    async def summed(self) -> dict[int, DaySum] | None:
        if self.day is None:
            return None
        total, key = 0, ""
        if self.sums_query is not None and self.http is not None:
            [(counted, summed)] = await self.http.rows(self.sums_query)
            if int(counted) == self.rows:  # else a row came in between: counts only
                total, key = int(summed), self.hash_key
        return {self.day: DaySum(self.rows, total, key)}


class ParquetPager:
    # A page is a compressed file (about 11 MB for 2M rows of trades, PAGE_BYTES at
    # most): one more is read while Iceberg opens or the pages before are committed.
    read_ahead = 1
    encodes = True

    def __init__(
        self,
        http: ArrowHttpSession,
        table: TableConfig,
        plan: SourcePlan,
        row_hash: RowHash | None = None,
    ) -> None:
        self._http = http
        self._target = table.target
        self._plan = plan
        self._hashed = row_hash
        self._by_day = _check_table(table, plan)
        self._checked = False
        self._row_bytes: float | None = None  # Parquet bytes per row of the last page
        self.select = [
            f"CAST({rewrite_leaves(c.ch_type, quote_ident(c.name), _leaves(table, c.name))}"
            f", {quote_string(iceberg_type(c.ch_type, table.uint64))}) AS {quote_ident(c.name)}"
            for c in plan.columns
        ]

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> ParquetPage:
        plan = self._plan
        rows_asked = page_rows(limit, self._row_bytes)
        query = scan.query(plan, self.select, after, rows_asked, one_day=self._by_day)
        try:
            body = await self._http.parquet_page(query, SETTINGS)
        except TableError as exc:  # a value check of the page query (throwIf) failed?
            raise await self._explain(scan, exc) from exc
        rows, position = await anyio.to_thread.run_sync(
            _footer, self._target, plan, body, not self._checked
        )
        self._checked = True
        if rows:
            self._row_bytes = len(body) / rows
        # A page full at a size below `limit` (page_rows) ended at a boundary of its own.
        page = ParquetPage(self._target, plan, body, rows, position, rows_asked <= rows < limit)
        if not rows or not self._by_day:
            return page
        wm_type = plan.order[0][1]
        day = watermark_day(wm_type, position[0])
        last = watermark_day(wm_type, scan.upto)
        assert day is not None and last is not None
        # A short page before the scan's last day ended at its day's end: read on.
        page = replace(page, cut=page.cut or day < last)
        sums_query = None
        if self._hashed is not None:
            sums_query = range_sums_query(scan, plan.order, after, position, self._hashed)
        key = self._hashed.key if self._hashed else ""
        return replace(
            page, day=day_number(day), sums_query=sums_query, http=self._http, hash_key=key
        )

    async def _explain(self, scan: Scan, exc: TableError) -> TableError:
        """When a value check of the page query failed (its message is in the error):
        DataError naming the column, with an example value; else `exc` as it is."""
        text = str(exc)
        for col in self._plan.columns:
            where = f"{self._target}: column {col.name!r} ({col.ch_type})"
            if f"column {col.name!r}: a String value is not valid UTF-8" in text:
                found = await invalid_utf8_columns(self._http, self._plan, scan.relation)
                return DataError(
                    f"{where}: a String value is not valid UTF-8{found}; offload this table "
                    'with transport = "arrow" and strings = "binary" to store Strings as bytes',
                    reason="utf8",
                )
            if f"column {col.name!r}: a UInt64 value is above" in text:
                example = ""
                if col.ch_type.unwrap().name == "UInt64":
                    top = await self._http.scalar(above_int64_query(scan.relation, col.name))
                    example = f" (e.g. {top})"
                return DataError(
                    f"{where}: a value{example} is above {INT64_MAX} and cannot be "
                    'stored as long; set uint64 = "decimal" on this table to store UInt64 '
                    "as decimal(20,0)"
                )
        return exc


def _footer(target: str, plan: SourcePlan, body: bytes, check: bool) -> tuple[int, list[Any]]:
    """A Parquet page's row count and its last row's encoded position (reading only the
    watermark and key columns of the last row group); with `check`, first that its
    schema is the Iceberg schema's, column by column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(pa.BufferReader(body))
    if check:
        got = f.schema_arrow
        for want in plan.schema:
            i = got.get_field_index(want.name)
            have = got.field(i) if i >= 0 else None
            if have is None or not have.type.equals(want.type) or have.nullable != want.nullable:
                shown = f"{have.type}{'' if have.nullable else ' not null'}" if have else "nothing"
                raise SourceSchemaError(
                    f"{target}: column {want.name!r}: ClickHouse's Parquet holds {shown}, "
                    f"Iceberg needs {want.type}{'' if want.nullable else ' not null'}; use "
                    'transport = "arrow" for this table',
                    reason="config",
                )
    rows = f.metadata.num_rows
    if not rows:
        return 0, []
    names = [plan.columns[i].name for i in plan.order_index]
    last = f.read_row_group(f.metadata.num_row_groups - 1, columns=names)
    row = last.num_rows - 1
    return rows, [cursor.encode_value(last.column(n)[row].as_py()) for n in names]


class ParquetHttpSession(ArrowHttpSession):
    """The HTTP session of the parquet transport: its pages are the Parquet files
    ClickHouse encodes (the rest is the arrow transport's session)."""

    def pager(
        self, table: TableConfig, plan: SourcePlan, row_hash: RowHash | None = None
    ) -> ParquetPager:
        return ParquetPager(self, table, plan, row_hash)
