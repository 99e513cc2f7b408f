"""ClickHouse SQL reading what system.tables says of a table (`offloader add`, status's
view and Distributed source), and which tables a database holds. Pure: no driver."""

from __future__ import annotations

from offloader.sql.text import quote_string

# What offloader reads of a table's row of system.tables (table_query), in this order.
TABLE_COLUMNS = (
    "engine",
    "engine_full",
    "sorting_key",
    "partition_key",
    "create_table_query",
    "comment",
)


def table_query(database: str, table: str) -> str:
    """The table's row of system.tables (TABLE_COLUMNS); no row when there is no such
    table (or view)."""
    return (
        f"SELECT {', '.join(TABLE_COLUMNS)} FROM system.tables "
        f"WHERE database = {quote_string(database)} AND name = {quote_string(table)}"
    )


def readable_tables_query(database: str) -> str:
    """The names of `database`'s tables offloader can read (the MergeTree family or
    Distributed; no temporary table), in name order."""
    return (
        f"SELECT name FROM system.tables WHERE database = {quote_string(database)} "
        "AND (engine LIKE '%MergeTree' OR engine = 'Distributed') "
        "AND NOT is_temporary ORDER BY name"
    )
