"""The source side shared by both transports: a session of the table's transport and
the introspection both answer the same way.

A table on the `arrow` transport talks to ClickHouse over HTTP only (introspection,
the high-water mark and pages), so it needs no access to the native port; a table on
`native` uses the TCP protocol only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from offloader import clickhouse, clickhouse_http
from offloader.config import ClickHouseConfig, TableConfig, Transport
from offloader.errors import SourceSchemaError
from offloader.sql import quote_string

__all__ = ["Source", "Transport", "session", "table_columns", "table_ttl", "transport_of"]


class Source(Protocol):
    """What introspection needs of a session: typed rows of a small query."""

    label: str
    endpoint: str

    async def rows(self, query: str) -> list[tuple[Any, ...]]: ...

    async def scalar(self, query: str) -> Any: ...


def transport_of(cfg: ClickHouseConfig, table: TableConfig) -> Transport:
    return table.transport or cfg.transport


@asynccontextmanager
async def session(
    cfg: ClickHouseConfig, label: str, transport: Transport
) -> AsyncIterator[clickhouse.ClickHouseSession | clickhouse_http.ArrowHttpSession]:
    if transport == "arrow":
        async with clickhouse_http.session(cfg, label) as http:
            yield http
    else:
        async with clickhouse.session(cfg, label) as native:
            yield native


async def table_columns(s: Source, database: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of every column in table order; SourceSchemaError if there are none."""
    rows = await s.rows(
        "SELECT name, type FROM system.columns WHERE database = "
        f"{quote_string(database)} AND table = {quote_string(table)} ORDER BY position"
    )
    if not rows:
        exists = await s.scalar(
            "SELECT count() FROM system.tables WHERE database = "
            f"{quote_string(database)} AND name = {quote_string(table)}"
        )
        raise SourceSchemaError(
            f"{s.label}: source table {database}.{table} "
            + ("has no columns" if exists else "does not exist in ClickHouse")
            + f" ({s.endpoint}); check tables.source in the config",
            reason="missing_table",
        )
    return [(str(name), str(type_)) for name, type_ in rows]


async def table_ttl(s: Source, database: str, table: str) -> str | None:
    """The table's TTL clause, if any (from its CREATE statement)."""
    create = await s.scalar(
        "SELECT create_table_query FROM system.tables WHERE database = "
        f"{quote_string(database)} AND name = {quote_string(table)}"
    )
    if not create or " TTL " not in str(create):
        return None
    ttl = str(create).split(" TTL ", 1)[1]
    return ttl.split(" SETTINGS ", 1)[0].strip()
