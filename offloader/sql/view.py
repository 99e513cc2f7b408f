"""ClickHouse SQL of the view over both tiers: the cold side's table function (pinned to
one metadata file), each tier's SELECT, the `CREATE OR REPLACE VIEW` and `DROP VIEW`,
and the system tables the view's upkeep reads (columns' DEFAULTs, the view on every
node of a cluster, the view's database, the named collection). Pure: no driver.

Which of these a view is made of (both tiers or the hot table only, which cast a
column takes) is decided by offloader.tiers.view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offloader.sql.system import cluster_query
from offloader.sql.text import keyset_after, qualified, quote_ident, quote_string
from offloader.types import ChType, time_precision

# Bumped when the SQL offloader writes for the same inputs changes: every view is
# replaced once by the next run. 2 (0.4.0): a column's DEFAULT only as a constant
# literal (0.3.0 views may carry other expressions, run with the definer's rights).
VIEW_FORMAT = "2"

# The cold value of a column that has none (a Nullable column added since, Nothing).
NULL = "NULL"
# The cold value of an Array(Nothing) column.
EMPTY_ARRAY = "[]"


def view_name(name: str) -> str:
    """`database.view` (or a bare `view`) quoted as ClickHouse names it."""
    db, _, table = name.rpartition(".")
    return qualified(db, table) if db else quote_ident(table)


# --- the cold side: the Iceberg table function --------------------------------------


def pinned_metadata(metadata: str) -> str:
    """The table function's setting that pins it to one metadata file (its path relative
    to the table's location)."""
    return "SETTINGS iceberg_metadata_file_path = " + quote_string(metadata)


def iceberg_local(path: str, metadata: str) -> str:
    """The cold side of a local warehouse: the table at `path`, pinned to `metadata`."""
    return f"icebergLocal({quote_string(path)}, {pinned_metadata(metadata)})"


def iceberg_s3(collection: str, url: str, metadata: str) -> str:
    """The cold side of an S3 warehouse: the table at `url`, with the credentials of the
    named collection `collection` (never in the view), pinned to `metadata`."""
    return f"icebergS3({collection}, url = {quote_string(url)}, {pinned_metadata(metadata)})"


def describe_query(reader: str) -> str:
    """The columns (name, type, ...) ClickHouse reads from the table function `reader`."""
    return f"DESCRIBE TABLE {reader}"


def _back_ticks(t: ChType) -> str:
    return f"reinterpret({{}}, 'DateTime64({time_precision(t)})')"


# How a value stored in a form ClickHouse cannot CAST back is turned back (the outer
# CAST to the source's type does the rest: tz, Time64's precision, containers).
BACK_LEAVES: dict[str, Any] = {
    "DateTime64Ticks": _back_ticks,  # its ticks, in a long
    "Time64": "reinterpret({}, 'Decimal64(9)')",  # nanoseconds, in a long
}


# --- one column ------------------------------------------------------------------------


def cast_as(expression: str, type_text: str, name: str) -> str:
    """`expression` as the view's column `name` of type `type_text`."""
    return f"CAST({expression}, {quote_string(type_text)}) AS {quote_ident(name)}"


def type_default(type_text: str) -> str:
    """The default value of the type `type_text` (0, '', ...)."""
    return f"defaultValueOfTypeName({quote_string(type_text)})"


def or_default(expression: str, type_text: str, default: str) -> str:
    """`expression` read as Nullable(`type_text`), `default` where it is NULL."""
    return f"ifNull(CAST({expression}, {quote_string(f'Nullable({type_text})')}), {default})"


def cast_default(expression: str, type_text: str) -> str:
    """A column's DEFAULT `expression` as a value of the column's type."""
    return f"CAST(({expression}), {quote_string(type_text)})"


def value_query(expression: str) -> str:
    """The one row holding the value of a constant `expression` (fails if it has none)."""
    return f"SELECT {expression}"


# --- the view -------------------------------------------------------------------------


def hot_select(columns: Sequence[str], relation: str) -> str:
    """The hot tier: the column expressions `columns` of every row of `relation`."""
    return f"SELECT {', '.join(columns)} FROM {relation}"


def hot_after(
    columns: Sequence[str],
    relation: str,
    order: Sequence[tuple[str, ChType]],
    position: Sequence[Any],
) -> str:
    """The hot tier's rows after the committed `position` in (watermark, keys) `order`."""
    return f"{hot_select(columns, relation)} WHERE {keyset_after(order, position)}"


def cold_select(columns: Sequence[str], reader: str) -> str:
    """The cold tier: the column expressions `columns` of the table function `reader`."""
    return f"SELECT {', '.join(columns)} FROM {reader}"


def union_all(hot: str, cold: str) -> str:
    """Both tiers' rows, one SELECT after the other."""
    return f"{hot}\nUNION ALL\n{cold}"


def sql_security(invoker: bool) -> str:
    """Whose rights the view reads with: the querying user's (INVOKER), else the rights of
    the user that replaced it (DEFINER)."""
    return "SQL SECURITY INVOKER" if invoker else "DEFINER = CURRENT_USER SQL SECURITY DEFINER"


def create_view(name: str, body: str, comment: str, *, invoker: bool) -> str:
    """`CREATE OR REPLACE VIEW` `name` (database.view) as the SELECT `body`, with
    `comment`."""
    return (
        f"CREATE OR REPLACE VIEW {view_name(name)} "
        f"{sql_security(invoker)} AS\n{body}\nCOMMENT {quote_string(comment)}"
    )


def drop_view(name: str) -> str:
    """Drop the view `name` (database.view), if it exists."""
    return f"DROP VIEW IF EXISTS {view_name(name)}"


# --- the system tables ------------------------------------------------------------------


def column_defaults_query(database: str, table: str, names: Sequence[str]) -> str:
    """The DEFAULT or MATERIALIZED expressions of the columns `names` of the table: name,
    type, default_expression (a column without one has no row)."""
    listed = ", ".join(quote_string(n) for n in names)
    return (
        "SELECT name, type, default_expression FROM system.columns WHERE database = "
        f"{quote_string(database)} AND table = {quote_string(table)} AND name IN ({listed}) "
        "AND default_kind IN ('DEFAULT', 'MATERIALIZED') AND default_expression != ''"
    )


def view_on_nodes_query(cluster: str, name: str, comment: str) -> str:
    """One row: the number of nodes of `cluster` (distinct host and port in
    system.clusters), and of its replicas holding the view `name` (database.view) with
    the `comment` it was last replaced with (system.tables on every replica)."""
    db, _, view = name.rpartition(".")
    return (
        "SELECT (SELECT count() FROM (SELECT DISTINCT host_address, port FROM "
        f"({cluster_query(cluster)}))), (SELECT count() FROM clusterAllReplicas("
        f"{quote_string(cluster)}, system.tables) WHERE database = {quote_string(db)} AND "
        f"name = {quote_string(view)} AND comment = {quote_string(comment)})"
    )


def database_exists_query(database: str) -> str:
    """1 if the server has the database `database`, else 0."""
    return f"SELECT count() FROM system.databases WHERE name = {quote_string(database)}"


def named_collection_exists_query(name: str) -> str:
    """1 if this user sees the named collection `name`, else 0."""
    return f"SELECT count() FROM system.named_collections WHERE name = {quote_string(name)}"
