"""The `native` transport: ClickHouse over its native TCP protocol (asynch). The only
module importing asynch.

Each page is one complete, non-streaming query: asynch's streaming cursor turns a
mid-stream server error into a normal end of results, so offloader never relies
on a stream's end. Any error or cancellation discards the connection, because a
cancelled asynch query leaves the connection unusable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from asynch import errors as ch_errors
from asynch.proto.connection import Connection

from offloader import cursor
from offloader.config import ClickHouseConfig, TableConfig
from offloader.errors import (
    CLICKHOUSE_SCHEMA_CODES,
    DataError,
    SourceSchemaError,
    SourceUnavailable,
    unreachable,
)
from offloader.pinned import PINNED, refusal
from offloader.source import CLOSE_SECONDS, invalid_utf8_columns
from offloader.sql.scan import Scan

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.plan import SourcePlan
    from offloader.sql.text import RowHash
    from offloader.state import DaySum

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Columns:
    """One complete result: one sequence of values per column."""

    columns: Sequence[Sequence[Any]]
    rows: int


class ClickHouseSession:
    """One native connection, used by one table run at a time."""

    def __init__(self, cfg: ClickHouseConfig, label: str) -> None:
        self._cfg = cfg
        self.label = label
        self.endpoint = f"{cfg.host}:{cfg.port}"
        self._conn = self._connection()
        self._open = False
        self._busy = anyio.Lock()

    def _connection(self) -> Connection:
        """A new asynch connection object (not yet connected)."""
        cfg = self._cfg
        kwargs: dict[str, Any] = {}
        if cfg.secure:
            kwargs.update(secure=True, verify=True)
        return Connection(  # type: ignore[no-untyped-call]
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=cfg.password,
            database=cfg.database,
            connect_timeout=cfg.connect_timeout,
            send_receive_timeout=cfg.query_timeout,
            client_name="offloader",
            **kwargs,
        )

    def __repr__(self) -> str:
        cfg = self._cfg
        return f"<ClickHouseSession {cfg.user}@{cfg.host}:{cfg.port} open={self._open}>"

    async def connect(self) -> None:
        try:
            with self._mapped("connect"), anyio.fail_after(self._cfg.connect_timeout + 1):
                await self._conn.connect()
        except BaseException:
            await self._discard()
            raise
        self._open = True

    async def close(self) -> None:
        await self._discard()

    async def _discard(self) -> None:
        self._open = False
        with anyio.move_on_after(CLOSE_SECONDS, shield=True):
            try:
                await self._conn.disconnect()
            except (Exception, anyio.get_cancelled_exc_class()):
                # The connection is being thrown away anyway. A cancellation here is not
                # ours (the scope is shielded): asynch re-raises the CancelledError stored
                # in its stream's close waiter when an earlier read was cancelled, and
                # letting it escape would turn a table's real error into a silent cancel.
                log.debug("ignored error closing ClickHouse connection", exc_info=True)
        # The next query connects a new object: asynch's connect() first closes the old
        # stream and awaits its close waiter, which a cancelled connect or read left
        # cancelled, so reconnecting the old object raised a stale CancelledError into
        # whatever task asked next (the run's audit, after a cancelled page read).
        self._conn = self._connection()

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """asynch's and the socket's exceptions -> offloader's (Exception only:
        cancellation passes through untouched)."""
        where = f"{self.label}: ClickHouse {self._cfg.host}:{self._cfg.port}"
        try:
            yield
        except ch_errors.ServerException as exc:
            code = getattr(exc, "code", None)
            first = str(exc).strip().splitlines()
            text = first[1] if len(first) > 1 else (first[0] if first else repr(exc))
            refused = refusal(code, text, self._cfg.user)
            if refused is not None:
                raise SourceUnavailable(f"{where}: {refused}: {text}", reason="config") from exc
            if code in CLICKHOUSE_SCHEMA_CODES:
                kind = CLICKHOUSE_SCHEMA_CODES[code]
                raise SourceSchemaError(f"{where}: {kind}: {text}", reason="schema") from exc
            text += unreachable(code, str(exc))
            raise SourceUnavailable(f"{where}: server error {code} during {what}: {text}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{self.label}: a String value is not valid UTF-8 ({exc.reason} at byte "
                f'{exc.start}); set strings = "binary" on this table to store String columns '
                "as Iceberg binary, byte for byte",
                reason="utf8",
            ) from exc
        except TimeoutError as exc:
            raise SourceUnavailable(f"{where}: {what} timed out", reason="timeout") from exc
        except (OSError, EOFError, ch_errors.ClickHouseException, ConnectionError) as exc:
            raise SourceUnavailable(
                f"{where}: {what} failed ({type(exc).__name__}: {exc}); is ClickHouse running?"
            ) from exc

    async def execute(
        self, query: str, *, columnar: bool = False, strings_as_bytes: bool = False
    ) -> Any:
        # One connection runs one query at a time: a statement from a sibling task (the
        # view replaced after a commit while the next page is read) waits its turn.
        async with self._busy:
            if not self._open:
                await self.connect()
            # Every query carries the pinned settings (offloader.pinned): a settings
            # profile on the user cannot change which rows it returns.
            settings: dict[str, Any] = dict(PINNED)
            if strings_as_bytes:
                settings["strings_as_bytes"] = True
            try:
                with self._mapped("query"), anyio.fail_after(self._cfg.query_timeout):
                    return await self._conn.execute(
                        query, columnar=columnar, with_column_types=columnar, settings=settings
                    )
            except BaseException:
                # Includes cancellation (deadline, shutdown): the connection is unusable now.
                await self._discard()
                raise

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        result = await self.execute(query)
        return list(result)

    async def scalar(self, query: str) -> Any:
        rows = await self.rows(query)
        return rows[0][0] if rows else None

    async def command(self, query: str) -> None:
        await self.execute(query)

    def pager(
        self, table: TableConfig, plan: SourcePlan, row_hash: RowHash | None = None
    ) -> NativePager:
        return NativePager(self, table, plan, row_hash)

    async def columns(
        self, query: str, expected_columns: int, *, strings_as_bytes: bool = False
    ) -> Columns:
        """One complete page. Strings are decoded as UTF-8 unless `strings_as_bytes`;
        invalid UTF-8 then raises DataError (never a silently altered value)."""
        columns, _types = await self.execute(
            query, columnar=True, strings_as_bytes=strings_as_bytes
        )
        if not columns:  # an empty result carries types but no columns
            return Columns(columns=[[] for _ in range(expected_columns)], rows=0)
        lengths = {len(c) for c in columns}
        if len(columns) != expected_columns or len(lengths) > 1:
            raise SourceUnavailable(
                f"{self.label}: malformed page from ClickHouse: {len(columns)} columns "
                f"(expected {expected_columns}), lengths {sorted(lengths)}"
            )
        return Columns(columns=columns, rows=lengths.pop() if lengths else 0)


@dataclass(frozen=True, slots=True)
class NativePage:
    """A page of wire columns (wire.wire_plan); converted by native_convert."""

    target: str
    plan: SourcePlan
    data: Columns
    position: list[Any]  # the encoded (watermark, keys...) of the last row, read once
    hashes: Sequence[int] | None = None

    @property
    def rows(self) -> int:
        return self.data.rows

    def to_batch(self) -> pa.RecordBatch:
        # Conversion (and pyarrow) load with the first page: an idle run needs neither.
        from offloader.source import native_convert

        return native_convert.to_record_batch(self.target, self.plan.columns, self.data.columns)

    def checksums(self) -> pa.Array | None:
        import pyarrow as pa

        return None if self.hashes is None else pa.array(self.hashes, pa.uint64())

    cut = False  # pages end at their row limit or the scan's end
    last = False  # a short page proves nothing (source.scan_complete)

    def encoded(self) -> bytes | None:
        return None

    async def summed(self) -> dict[int, DaySum] | None:
        return None


class NativePager:
    read_ahead = 0
    encodes = False

    def __init__(
        self,
        session: ClickHouseSession,
        table: TableConfig,
        plan: SourcePlan,
        row_hash: RowHash | None = None,
    ) -> None:
        self._session = session
        self._target = table.target
        self._plan = plan
        self._binary = table.strings == "binary"
        self._hashed = row_hash is not None
        self.select = plan.select + ([row_hash.expr] if row_hash else [])

    async def read(self, scan: Scan, after: Sequence[Any] | None, limit: int) -> NativePage:
        query = scan.query(self._plan, self.select, after, limit)
        try:
            data = await self._session.columns(
                query, len(self.select), strings_as_bytes=self._binary
            )
        except DataError as exc:
            if exc.reason != "utf8":
                raise
            detail = await invalid_utf8_columns(self._session, self._plan, scan.relation)
            raise DataError(str(exc) + detail, reason="utf8") from exc
        hashes = None
        if self._hashed:
            *columns, hashes = data.columns
            data = Columns(columns, data.rows)
        return NativePage(self._target, self._plan, data, _last_position(self._plan, data), hashes)


def _last_position(plan: SourcePlan, data: Columns) -> list[Any]:
    """The encoded (watermark, keys...) of a page's last row ([] for an empty page)."""
    if not data.rows:
        return []
    from offloader.source import native_convert

    row, offsets = data.rows - 1, plan.offsets
    out = []
    for i in plan.order_index:
        col = plan.columns[i]
        wire = [data.columns[offsets[i] + k][row] for k in range(len(col.select))]
        out.append(cursor.encode_value(native_convert.cursor_value(col, wire)))
    return out


@asynccontextmanager
async def session(cfg: ClickHouseConfig, label: str) -> AsyncIterator[ClickHouseSession]:
    # Connected by its first query: a table whose run asks ClickHouse nothing (an idle
    # run the cycle's survey answered) opens no connection.
    s = ClickHouseSession(cfg, label)
    try:
        yield s
    finally:
        await s.close()
