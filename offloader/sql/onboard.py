"""The ClickHouse statements `offloader add` asks the user to run: a retiring table
for hot retention of a Replicated source, and the removal of the TTL that retention
replaces. Pure: no driver."""

from __future__ import annotations

import re

from offloader.sql.text import qualified, quote_string


def remove_ttl(database: str, table: str) -> str:
    return f"ALTER TABLE {qualified(database, table)} REMOVE TTL"


def retiring_table(database: str, table: str, retiring: str, engine_full: str) -> str:
    """The statement that creates `retiring` like `table`, whose engine clause is
    `engine_full` (system.tables): the same engine, a Replicated one with a ZooKeeper
    path of its own (the path's table name replaced, `{table}` kept)."""
    return (
        f"CREATE TABLE {qualified(database, retiring)} AS {qualified(database, table)} "
        f"ENGINE = {_retiring_engine(engine_full, retiring)}"
    )


def _retiring_engine(engine_full: str, retiring: str) -> str:
    match = re.match(r"(Replicated\w*MergeTree)\('([^']*)'(.*)", engine_full, re.S)
    if not match:
        return engine_full
    path = match.group(2)
    if "{table}" not in path:
        path = path.rstrip("/") + "_retiring" if path else f"/clickhouse/tables/{retiring}"
    return f"{match.group(1)}({quote_string(path)}{match.group(3)}"
