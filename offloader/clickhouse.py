"""The source: ClickHouse over its native TCP protocol (asynch). The only module importing asynch.

Each page is one complete, non-streaming query: asynch's streaming cursor turns a
mid-stream server error into a normal end of results, so offloader never relies
on a stream's end. Any error or cancellation discards the connection, because a
cancelled asynch query leaves the connection unusable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from asynch import errors as ch_errors
from asynch.proto.connection import Connection

from offloader.config import ClickHouseConfig
from offloader.errors import (
    CLICKHOUSE_SCHEMA_CODES,
    DataError,
    SourceSchemaError,
    SourceUnavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    """One complete page: one sequence of values per column."""

    columns: Sequence[Sequence[Any]]
    rows: int


class ClickHouseSession:
    """One native connection, used by one table run at a time."""

    def __init__(self, cfg: ClickHouseConfig, label: str) -> None:
        self._cfg = cfg
        self.label = label
        self.endpoint = f"{cfg.host}:{cfg.port}"
        kwargs: dict[str, Any] = {}
        if cfg.secure:
            kwargs.update(secure=True, verify=True)
        self._conn = Connection(  # type: ignore[no-untyped-call]
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
        self._open = False

    def __repr__(self) -> str:
        cfg = self._cfg
        return f"<ClickHouseSession {cfg.user}@{cfg.host}:{cfg.port} open={self._open}>"

    async def connect(self) -> None:
        try:
            with anyio.fail_after(self._cfg.connect_timeout + 1):
                await self._conn.connect()
        except BaseException as exc:
            await self._discard()
            raise self._translate(exc, "connect") from exc
        self._open = True

    async def close(self) -> None:
        await self._discard()

    async def _discard(self) -> None:
        self._open = False
        with anyio.move_on_after(2, shield=True):
            try:
                await self._conn.disconnect()
            except (Exception, anyio.get_cancelled_exc_class()):
                # The connection is being thrown away anyway. A cancellation here is not
                # ours (the scope is shielded): asynch re-raises the CancelledError stored
                # in its stream's close waiter when an earlier read was cancelled, and
                # letting it escape would turn a table's real error into a silent cancel.
                log.debug("ignored error closing ClickHouse connection", exc_info=True)

    def _translate(self, exc: BaseException, what: str) -> BaseException:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
        where = f"{self.label}: ClickHouse {self._cfg.host}:{self._cfg.port}"
        if isinstance(exc, ch_errors.ServerException):
            code = getattr(exc, "code", None)
            first = str(exc).strip().splitlines()
            text = first[1] if len(first) > 1 else (first[0] if first else repr(exc))
            if code in CLICKHOUSE_SCHEMA_CODES:
                kind = CLICKHOUSE_SCHEMA_CODES[code]
                return SourceSchemaError(f"{where}: {kind}: {text}", reason="schema")
            return SourceUnavailable(f"{where}: server error {code} during {what}: {text}")
        if isinstance(exc, UnicodeDecodeError):
            return DataError(
                f"{self.label}: a String value is not valid UTF-8 ({exc.reason} at byte "
                f'{exc.start}); set strings = "binary" on this table to store String columns '
                "as Iceberg binary, byte for byte",
                reason="utf8",
            )
        if isinstance(exc, TimeoutError):
            return SourceUnavailable(f"{where}: {what} timed out", reason="timeout")
        if isinstance(exc, OSError | EOFError | ch_errors.ClickHouseException | ConnectionError):
            return SourceUnavailable(
                f"{where}: {what} failed ({type(exc).__name__}: {exc}); is ClickHouse running?"
            )
        return exc

    async def execute(
        self, query: str, *, columnar: bool = False, strings_as_bytes: bool = False
    ) -> Any:
        if not self._open:
            await self.connect()
        settings = {"strings_as_bytes": True} if strings_as_bytes else None
        try:
            with anyio.fail_after(self._cfg.query_timeout):
                return await self._conn.execute(
                    query, columnar=columnar, with_column_types=columnar, settings=settings
                )
        except BaseException as exc:
            # Includes cancellation (deadline, shutdown): the connection is unusable now.
            await self._discard()
            raise self._translate(exc, "query") from exc

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        result = await self.execute(query)
        return list(result)

    async def scalar(self, query: str) -> Any:
        rows = await self.rows(query)
        return rows[0][0] if rows else None

    async def page(
        self, query: str, expected_columns: int, *, strings_as_bytes: bool = False
    ) -> Page:
        """One complete page. Strings are decoded as UTF-8 unless `strings_as_bytes`;
        invalid UTF-8 then raises DataError (never a silently altered value)."""
        columns, _types = await self.execute(
            query, columnar=True, strings_as_bytes=strings_as_bytes
        )
        if not columns:  # an empty result carries types but no columns
            return Page(columns=[[] for _ in range(expected_columns)], rows=0)
        lengths = {len(c) for c in columns}
        if len(columns) != expected_columns or len(lengths) > 1:
            raise SourceUnavailable(
                f"{self.label}: malformed page from ClickHouse: {len(columns)} columns "
                f"(expected {expected_columns}), lengths {sorted(lengths)}"
            )
        return Page(columns=columns, rows=lengths.pop() if lengths else 0)


@asynccontextmanager
async def session(cfg: ClickHouseConfig, label: str) -> AsyncIterator[ClickHouseSession]:
    s = ClickHouseSession(cfg, label)
    try:
        await s.connect()
        yield s
    finally:
        await s.close()
