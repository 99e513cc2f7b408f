"""The `arrow` transport: keyset pages read over ClickHouse's HTTP interface as
`FORMAT ArrowStream`, parsed by pyarrow with no per-value Python work; small queries
(introspection, the high-water mark) as `JSONCompact`. The only module importing httpx.

The page query asks for wire forms (arrow_wire_expr) whose Arrow types conform exactly
to offloader's schema (arrow_convert.conform_batch), column-wise, with no per-value
Python work. pyarrow loads with the first page: an idle run never imports it.

A page is trusted only if the response is complete: HTTP 200, no exception block that
ClickHouse appends to a body it had already started (marked `__exception__`), the Arrow
end-of-stream marker at the very end, and a stream pyarrow parses. Anything else fails
the page, so the watermark never moves past rows that were not read. Credentials go in
headers, never in URLs or logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import orjson

from offloader import cursor
from offloader.config import ClickHouseConfig, TableConfig
from offloader.errors import (
    CLICKHOUSE_SCHEMA_CODES,
    SourceSchemaError,
    SourceUnavailable,
    unreachable,
)
from offloader.pinned import PINNED, refusal
from offloader.source import CLOSE_SECONDS, Pager
from offloader.sql.scan import Scan
from offloader.sql.text import quote_ident
from offloader.types import ChType, parse_type
from offloader.wire import SHARED_LEAVES, TEXT_LEAVES, rewrite_leaves

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.plan import SourcePlan
    from offloader.sql.text import RowHash
    from offloader.state import DaySum

log = logging.getLogger(__name__)

_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
# Every query carries the pinned settings (offloader.pinned): a settings profile on the
# user cannot change which rows it returns. Small queries keep the server's other settings.
QUERY_SETTINGS: dict[str, str] = dict(PINNED)
SETTINGS = {
    **PINNED,
    # Strings arrive as binary and are validated as UTF-8 in conversion.
    "output_format_arrow_string_as_string": "0",
    "output_format_arrow_low_cardinality_as_dictionary": "0",
    "output_format_arrow_compression_method": "none",
}


class ArrowHttpSession:
    def __init__(self, cfg: ClickHouseConfig, label: str) -> None:
        self._cfg = cfg
        self.label = label
        self.endpoint = f"{cfg.host}:{cfg.http_port}"
        scheme = "https" if cfg.secure else "http"
        self._url = f"{scheme}://{cfg.host}:{cfg.http_port}/"
        self._client = httpx.AsyncClient(
            headers={
                "X-ClickHouse-User": cfg.user,
                "X-ClickHouse-Key": cfg.password,
                "X-ClickHouse-Database": cfg.database,
                # ClickHouse compresses HTTP replies (zstd) when asked; on a fast link
                # that costs CPU on both ends: 1.45M -> 1.67M rows/s end to end
                # without it (benchmarks/RESULTS.md).
                "Accept-Encoding": "zstd, gzip" if cfg.http_compression else "identity",
            },
            timeout=httpx.Timeout(cfg.query_timeout, connect=cfg.connect_timeout),
            verify=True,
        )

    def __repr__(self) -> str:
        return f"<ArrowHttpSession {self._cfg.user}@{self._url}>"

    async def close(self) -> None:
        with anyio.move_on_after(CLOSE_SECONDS, shield=True):
            await self._client.aclose()

    def _where(self) -> str:
        return f"{self.label}: ClickHouse HTTP {self._cfg.host}:{self._cfg.http_port}"

    async def _post(self, query: str, settings: dict[str, str], what: str) -> bytes:
        """POST one query; the whole body, or an error if the server reported one.

        A body cut short is returned as far as it came only if the server said nothing;
        callers check their format's own end marker.
        """
        chunks: list[bytes] = []
        cut: httpx.HTTPError | None = None
        try:
            with anyio.fail_after(self._cfg.query_timeout):
                async with self._client.stream(
                    "POST", self._url, params=settings, content=query.encode()
                ) as response:
                    try:
                        async for chunk in response.aiter_bytes():
                            chunks.append(chunk)
                    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                        # ClickHouse ends a failed stream with an exception block and closes
                        # the connection; a dying server just closes it. Either way the
                        # body is incomplete: keep what came, to report why.
                        cut = exc
        except TimeoutError:
            msg = f"{self._where()}: {what} timed out"
            raise SourceUnavailable(msg, reason="timeout") from None
        except httpx.HTTPError as exc:
            raise SourceUnavailable(
                f"{self._where()}: {type(exc).__name__}: {exc}; is ClickHouse running and "
                "its http_port right?"
            ) from exc
        body = b"".join(chunks)
        code = response.headers.get("X-ClickHouse-Exception-Code")
        if response.status_code != 200 or code:
            text = body.decode("utf-8", "replace").strip().splitlines()
            message = text[0][:500] if text else f"HTTP {response.status_code}"
            if code is not None and code.isdigit():
                message += unreachable(int(code), "\n".join(text))
            schema = code is not None and code.isdigit() and int(code) in CLICKHOUSE_SCHEMA_CODES
            error = SourceSchemaError if schema else SourceUnavailable
            number = int(code) if code is not None and code.isdigit() else None
            refused = refusal(number, message, self._cfg.user, settings)
            if refused is not None:
                raise SourceUnavailable(f"{self._where()}: {refused}: {message}", reason="config")
            raise error(f"{self._where()}: server error {code}: {message}")
        if b"__exception__" in body[-4096:]:
            tail = body[-2000:].decode("utf-8", "replace")
            message = next((ln for ln in tail.splitlines() if "Code:" in ln), tail[-300:])
            raise SourceUnavailable(
                f"{self._where()}: the {what} failed mid-stream: {message.strip()[:500]}"
            )
        if cut is not None:
            raise SourceUnavailable(
                f"{self._where()}: the connection closed mid-{what} after {len(body)} bytes "
                f"({type(cut).__name__}); the {what} is discarded"
            )
        return body

    def pager(self, table: TableConfig, plan: SourcePlan, row_hash: RowHash | None = None) -> Pager:
        return ArrowPager(self, table, plan, row_hash)

    async def parquet_page(self, query: str, settings: dict[str, str]) -> bytes:
        """Run one page query as `FORMAT Parquet`: the complete file ClickHouse wrote."""
        body = await self._post(query + " FORMAT Parquet", settings, "page")
        if len(body) < 12 or body[:4] != b"PAR1" or body[-4:] != b"PAR1":
            raise SourceUnavailable(
                f"{self._where()}: truncated Parquet file ({len(body)} bytes, no footer "
                "magic); the page is discarded"
            )
        return body

    async def page(self, query: str) -> pa.RecordBatch:
        """Run one page query and return its rows as one RecordBatch (wire forms)."""
        body = await self._post(query + " FORMAT ArrowStream", SETTINGS, "page")
        if not body.endswith(_EOS):
            raise SourceUnavailable(
                f"{self._where()}: truncated ArrowStream ({len(body)} bytes, no end-of-stream "
                "marker); the page is discarded"
            )
        from offloader.source import arrow_convert  # pyarrow: with the first page

        return arrow_convert.read_stream(body, self._where())

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        """A small query's rows, from JSONCompact and its column types: integers as int
        (however the server's settings quote them), other values as JSON gives them.

        No output setting is changed here: they also shape toString() of some types
        (JSON), which verify compares with what pages stored. Time values travel as
        integers instead (sql.text.watermark_int).
        """
        body = await self._post(query + " FORMAT JSONCompact", QUERY_SETTINGS, "query")
        try:
            doc = orjson.loads(body)
            if doc.get("exception"):
                raise SourceUnavailable(f"{self._where()}: query failed: {doc['exception']}")
            parsers = [json_value_parser(str(m["type"])) for m in doc["meta"]]
            return [tuple(p(v) for p, v in zip(parsers, row, strict=True)) for row in doc["data"]]
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SourceUnavailable(
                f"{self._where()}: malformed JSON reply ({type(exc).__name__}: {exc})"
            ) from None

    async def command(self, query: str) -> None:
        await self._post(query, QUERY_SETTINGS, "statement")

    async def scalar(self, query: str) -> Any:
        rows = await self.rows(query)
        return rows[0][0] if rows else None


@dataclass(frozen=True, slots=True)
class ArrowPage:
    target: str
    plan: SourcePlan
    batch: pa.RecordBatch  # wire forms
    position: list[Any]  # the encoded (watermark, keys...) of the last row, read once
    hashes: pa.Array | None = None

    @property
    def rows(self) -> int:
        return int(self.batch.num_rows)

    def to_batch(self) -> pa.RecordBatch:
        from offloader.source import arrow_convert

        return arrow_convert.conform_batch(self.target, self.plan.columns, self.batch)

    def checksums(self) -> pa.Array | None:
        return self.hashes

    cut = False  # pages end at their row limit or the scan's end
    last = False  # a short page proves nothing (source.scan_complete)

    def encoded(self) -> bytes | None:
        return None

    async def summed(self) -> dict[int, DaySum] | None:
        return None


class ArrowPager:
    read_ahead = 0
    encodes = False

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
        self._hashed = row_hash is not None
        self.select = [arrow_wire_expr(c.ch_type, quote_ident(c.name)) for c in plan.columns]
        if row_hash:
            self.select.append(row_hash.expr)

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> ArrowPage:
        from offloader.source import arrow_convert  # loaded by page() already

        batch = await self._http.page(scan.query(self._plan, self.select, after, limit))
        hashes = None
        if self._hashed:
            batch, hashes = arrow_convert.split_last(batch)
        plan = self._plan
        position = []
        if batch.num_rows:
            row = batch.num_rows - 1
            position = [
                cursor.encode_value(
                    arrow_convert.arrow_cursor(plan.columns[i], batch.column(i)[row].as_py())
                )
                for i in plan.order_index
            ]
        return ArrowPage(self._target, plan, batch, position, hashes)


@asynccontextmanager
async def session(
    cfg: ClickHouseConfig, label: str, kind: type[ArrowHttpSession] = ArrowHttpSession
) -> AsyncIterator[ArrowHttpSession]:
    """An HTTP session (of `kind`: its pages are ArrowStream, or, with
    parquet.ParquetHttpSession, the Parquet files ClickHouse encodes)."""
    s = kind(cfg, label)
    try:
        yield s
    finally:
        await s.close()


# --- wire forms and conversion ---------------------------------------------------------
# ClickHouse's ArrowStream output has its own type choices (UUID as 16 bytes in its
# internal order, Enum and IPv4 as integers, DateTime as seconds, ...). The page query
# asks for wire forms whose Arrow types conform exactly to ours (conform);
# containers are rewritten element by element with arrayMap / mapApply / tuple.

_ARROW_LEAVES = {
    "DateTime64": "toUnixTimestamp64Micro({})",
    "DateTime": "toInt64(toUnixTimestamp({})) * 1000000",
    "Date": "toInt32({})",
    "Date32": "toInt32({})",
    "UUID": "UUIDStringToNum(toString({}))",
    **TEXT_LEAVES,
    **SHARED_LEAVES,
}


def arrow_wire_expr(t: ChType, expr: str) -> str:
    """SQL turning a value of type `t` into the ArrowStream wire form offloader expects."""
    return rewrite_leaves(t, expr, _ARROW_LEAVES)


def _identity(v: Any) -> Any:
    return v


def _int_or_none(v: Any) -> Any:
    return None if v is None else int(v)


def json_value_parser(type_text: str) -> Callable[[Any], Any]:
    """Turn one JSONCompact value of ClickHouse type `type_text` into Python: integers
    as int (a server may quote 64-bit ones), anything else as JSON has it."""
    try:
        name = parse_type(type_text).unwrap().name
    except ValueError:
        return _identity
    return _int_or_none if name.startswith(("Int", "UInt")) else _identity
