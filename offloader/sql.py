"""ClickHouse SQL text for introspection and keyset pages. Pure: no driver.

Cursor values are rendered as typed literals rather than passed as driver
parameters: asynch formats a `datetime` parameter without microseconds, which
would make a DateTime64 keyset re-read the same rows forever.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from offloader.cursor import ticks_text
from offloader.days import SECONDS_PER_DAY
from offloader.pinned import TEXT_SETTINGS
from offloader.types import ChType, leaf_name, quote_ident, time_precision

__all__ = ["behind_query", "keyset_after", "literal", "page_query", "qualified", "quote_ident"]


def with_text_settings(query: str) -> str:
    return f"{query} SETTINGS {', '.join(TEXT_SETTINGS)}"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def qualified(database: str, table: str) -> str:
    return f"{quote_ident(database)}.{quote_ident(table)}"


def read_from(database: str, table: str, final: bool) -> str:
    """The FROM target of every query reading a table's rows: with FINAL for tables
    configured `final = true`, so all of offloader sees the rows as ClickHouse shows them."""
    return f"{qualified(database, table)} FINAL" if final else qualified(database, table)


def literal(t: ChType, encoded: Any) -> str:
    """A SQL literal of ClickHouse type `t` for a value produced by cursor.encode_value."""
    base = t.unwrap()
    name = base.name
    if name == "DateTime64":
        precision = time_precision(base)
        if precision > 6 and not isinstance(encoded, str):  # ticks (cursor.Ticks)
            encoded = ticks_text(int(encoded), precision)
        return f"toDateTime64({quote_string(str(encoded))}, {precision}, 'UTC')"
    if name == "DateTime":
        text = str(encoded).split(".")[0]
        return f"toDateTime({quote_string(text)}, 'UTC')"
    if name in ("Date", "Date32"):
        return f"to{name}({quote_string(str(encoded))})"
    if name == "UUID":
        return f"toUUID({quote_string(str(encoded))})"
    if name.startswith(("Int", "UInt")):
        value = int(encoded)
        return str(value)
    if name.startswith("Decimal"):
        return f"toDecimal256({quote_string(str(encoded))}, {_decimal_scale(base)})"
    if name in ("String", "FixedString"):
        if isinstance(encoded, dict):  # bytes that are not plain text, see encode_value
            return f"unhex({quote_string(bytes.fromhex(encoded['hex']).hex())})"
        return quote_string(str(encoded))
    raise ValueError(f"cannot render a literal of ClickHouse type {t}")


def watermark_int(t: ChType, expr: str) -> str:
    """A watermark value as an integer (microseconds since 1970 for times, ticks for
    DateTime64(7..9), days for dates): read the same over every transport, whatever
    the server's output settings (cursor.watermark_from_int turns it back)."""
    name = t.unwrap().name
    if leaf_name(t) == "DateTime64Ticks":
        return f"reinterpretAsInt64({expr})"
    if name in ("DateTime", "DateTime64"):
        return f"toUnixTimestamp64Micro(toDateTime64({expr}, 6, 'UTC'))"
    if name in ("Date", "Date32"):
        return f"toInt32({expr})"
    return expr


NOW_MICROS = "toUnixTimestamp64Micro(now64(6, 'UTC'))"


def _decimal_scale(t: ChType) -> int:
    if t.name == "Decimal":
        return int(str(t.args[1])) if len(t.args) > 1 else 0
    return int(str(t.args[0]))


def keyset_after(columns: Sequence[tuple[str, ChType]], position: Sequence[Any]) -> str:
    """`(c1, c2, ...) > (v1, v2, ...)` expanded so every server version accepts it
    and the leading column stays usable by the primary key: c1 >= v1 AND (c1 > v1 OR ...)."""
    assert len(columns) == len(position) and columns
    lits = [literal(t, v) for (_, t), v in zip(columns, position, strict=True)]
    names = [quote_ident(c) for c, _ in columns]

    def rest(i: int) -> str:
        if i == len(names) - 1:
            return f"{names[i]} > {lits[i]}"
        return f"{names[i]} > {lits[i]} OR ({names[i]} = {lits[i]} AND ({rest(i + 1)}))"

    return f"{names[0]} >= {lits[0]} AND ({rest(0)})"


def page_query(
    *,
    source: str,
    select: Sequence[str],
    order: Sequence[tuple[str, ChType]],
    after: Sequence[Any] | None,
    upto: Any,
    limit: int,
    since: Any = None,
    before: Any = None,
    through: Sequence[Any] | None = None,
    one_day: bool = False,
) -> str:
    """One keyset page: rows after `after`, watermark <= `upto`, in (watermark, keys) order.

    `LIMIT n WITH TIES` ends every page on a complete (watermark, keys) group, so
    rows that share a position with the page's last row are never split across
    pages (and so never skipped) even if the keys are not unique. With `one_day`
    (a date or time watermark), the page also ends at the end of the UTC day of its
    first row (a scalar subquery reading only the granules after the position).
    """
    wm_name, wm_type = order[0]
    where = [f"{quote_ident(wm_name)} <= {literal(wm_type, upto)}"]
    if after is not None:
        where.append(f"({keyset_after(order, after)})")
    if since is not None:  # repair: a range of days
        where.append(f"{quote_ident(wm_name)} >= {literal(wm_type, since)}")
    if before is not None:
        where.append(f"{quote_ident(wm_name)} < {literal(wm_type, before)}")
    if through is not None:  # ... never past the committed position
        where.append(f"NOT ({keyset_after(order, through)})")
    if one_day:
        where.append(_first_day_only(source, wm_name, wm_type, " AND ".join(where)))
    order_by = ", ".join(quote_ident(c) for c, _ in order)
    return with_text_settings(
        f"SELECT {', '.join(select)} FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY {order_by} LIMIT {int(limit)} WITH TIES"
    )


def _first_day_only(source: str, wm_name: str, wm_type: ChType, where: str) -> str:
    """A predicate: the watermark is before the end of the UTC day of the first row
    that `where` selects."""
    q = quote_ident(wm_name)
    if wm_type.unwrap().name in ("Date", "Date32"):
        end = f"{q} + 1"
    elif wm_type.unwrap().name == "DateTime64":
        # Of the column's own type: ClickHouse 26.9 filters a DateTime64 column against
        # a DateTime bound wrongly when the primary key is used (a row at 23:59:59.999999
        # is dropped from `ts < toDateTime('…-02 00:00:00')`), which stalled the scan.
        precision = time_precision(wm_type)
        end = f"toDateTime64(toStartOfDay({q}, 'UTC') + toIntervalDay(1), {precision}, 'UTC')"
    elif wm_type.unwrap().name == "DateTime":
        end = f"toStartOfDay({q}, 'UTC') + toIntervalDay(1)"
    else:
        raise ValueError(f"no UTC day in a watermark of type {wm_type}")
    # ORDER BY ... LIMIT 1 rather than min(): read in the table's order, it stops at
    # the first granule instead of reading the watermark of the whole backlog.
    return f"{q} < (SELECT {end} FROM {source} WHERE {where} ORDER BY {q} LIMIT 1)"


def range_sums_query(
    source: str,
    order: Sequence[tuple[str, ChType]],
    after: Sequence[Any] | None,
    through: Sequence[Any],
    hashed: RowHash,
    since: Any = None,
) -> str:
    """The rows after `after` up to and including `through` (one page's keyset range;
    none before watermark `since`) and the sum of their row hashes, as text."""
    where = [f"NOT ({keyset_after(order, through)})"]
    if after is not None:
        where.append(f"({keyset_after(order, after)})")
    if since is not None:
        wm_name, wm_type = order[0]
        where.append(f"{quote_ident(wm_name)} >= {literal(wm_type, since)}")
    return f"SELECT count(), toString(sum({hashed.expr})) FROM {source} WHERE {' AND '.join(where)}"


def behind_query(
    source: str, order: Sequence[tuple[str, ChType]], after: Sequence[Any] | None
) -> str:
    """Rows not yet offloaded (after the committed position `after`): how many, the
    oldest one's watermark, the server's time and the newest one's watermark (times as
    watermark_int). The keyset predicate leads with the watermark, so ClickHouse reads
    only the newest granules; the newest row past the position is the table's newest."""
    wm_name, wm_type = order[0]
    where = f" WHERE {keyset_after(order, after)}" if after is not None else ""
    oldest = watermark_int(wm_type, f"min({quote_ident(wm_name)})")
    newest = watermark_int(wm_type, f"max({quote_ident(wm_name)})")
    return f"SELECT count(), {oldest}, {NOW_MICROS}, {newest} FROM {source}{where}"


# Engines whose merges keep every row (the others fold rows together: replace, collapse,
# sum or aggregate them), as system.parts names them.
ROW_KEEPING_ENGINES = ("MergeTree", "ReplicatedMergeTree", "SharedMergeTree")


def fingerprints_query(tables: Sequence[tuple[str, str]], cluster: str | None = None) -> str:
    """The parts fingerprint of each (database, table) that has active parts: database,
    table, fingerprint (a table without any has none: '').

    It names the data a MergeTree table holds but not how merges laid it out: a hash of,
    per partition (and per node with `cluster`: the local table on every replica of
    every shard, a Distributed source's), these merge-invariant values of its active
    parts (system.parts):

    - the highest block number. Every insert, and every part attached or taken by
      REPLACE PARTITION, takes new block numbers; a merge keeps its parts' lowest and
      highest (and bumps the level only);
    - the highest mutation version: a part's data_version where it differs from its
      lowest block number. A merged part's data_version is its lowest block number
      again unless its parts were mutated, so the plain highest data_version is not
      merge-invariant. Every ALTER UPDATE/DELETE, lightweight DELETE and MATERIALIZE
      TTL raises it once it rewrote the parts; a merge keeps its parts' highest;
    - whether a part still awaits the partition's newest mutation (a part older than
      it, max_block_number below its version, not rewritten by it yet): a mutation
      rewrites a partition's parts one by one, and the highest version moves with the
      first of them only; this moves when the last is done. A merge keeps it (merging
      parts that await gives one that awaits; a part newer than the mutation never
      awaits it). Without it, an audit between the first part and the last could agree
      with a repair of the half-mutated day and the rest of the mutation go unseen;
    - the rows, in engines whose merges keep every row (ROW_KEEPING_ENGINES): MOVE
      PARTITION leaves empty covering parts with the moved parts' block numbers, a TTL
      merge removes rows. The other engines' merges fold rows (ReplacingMergeTree keeps
      one row per key, CollapsingMergeTree cancels pairs), so there only whether the
      partition holds any rows counts (a collapsing merge that cancels every row of a
      partition moves the fingerprint once: an audit too many, never one too few);
    - the partition itself: DROP and DETACH PARTITION remove its parts;
    - the table's UUID (the directory holding its parts' directories, in an Atomic
      database): a table dropped and created again numbers its blocks from 1 again.

    So a merge does not move it, and every insert, finished mutation, lightweight
    delete, dropped, detached, attached, replaced or moved partition, truncation or
    recreation does. Not seen: a mutation applied on the fly, until it rewrites the
    parts; a table recreated in an Ordinary database; in engines that fold rows, DROP
    PART of one part among others and a background TTL merge that removes some of a
    partition's rows. Moved once without a change of rows: by the merge that removes
    rows a lightweight DELETE masked (in ROW_KEEPING_ENGINES) or that applies a
    lightweight UPDATE's patch parts."""
    where = f"active AND (database, table) IN ({_pairs(tables)})"
    parts, node = "system.parts", "0"
    if cluster is not None:
        parts = f"clusterAllReplicas({quote_string(cluster)}, system.parts)"
        node = "_shard_num"
    kept = ", ".join(quote_string(e) for e in ROW_KEEPING_ENGINES)
    rows = f"if(any(engine) IN ({kept}), sum(rows), toUInt64(sum(rows) > 0))"
    mutation = "if(data_version = toUInt64(min_block_number), 0, data_version)"
    uuid = "any(extract(path, '/([0-9a-f-]{36})/[^/]+/$'))"
    awaits = "toUInt64(countIf(max_block_number < newest AND mutation < newest) > 0)"
    each_part = (
        f"SELECT database, table, {node} AS node, partition_id, max_block_number, rows, "
        f"engine, path, {mutation} AS mutation, max({mutation}) OVER (PARTITION BY "
        f"database, table, {node}, partition_id) AS newest FROM {parts} WHERE {where}"
    )
    states = (
        "SELECT database, table, (node, partition_id, max(max_block_number), "
        f"max(mutation), {awaits}, {rows}, {uuid}) AS state FROM ({each_part}) "
        "GROUP BY database, table, node, partition_id"
    )
    return (
        "SELECT database, table, toString(cityHash64(arraySort(groupArray(state)))) "
        f"AS fingerprint FROM ({states}) GROUP BY database, table"
    )


def parts_fingerprint(database: str, table: str, cluster: str | None = None) -> str:
    """A scalar subquery of the table's parts fingerprint (fingerprints_query), '' when
    the table has no parts (empty, or not a MergeTree: a view or a Merge table), which
    the audit takes as "unknown"."""
    found = fingerprints_query([(database, table)], cluster)
    return f"(SELECT any(fingerprint) FROM ({found}))"


def _pairs(tables: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"({quote_string(d)}, {quote_string(t)})" for d, t in tables)


def survey_columns_query(tables: Sequence[tuple[str, str]]) -> str:
    """Every column of each (database, table), in table order, with its table's engine
    clause: what each table's run would ask for itself, for all tables at once."""
    return (
        "SELECT c.database, c.table, c.name, c.type, t.engine_full FROM system.columns AS c "
        "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
        f"WHERE (c.database, c.table) IN ({_pairs(tables)}) "
        "ORDER BY c.database, c.table, c.position"
    )


def distributed_over(engine_full: str) -> tuple[str, str, str] | None:
    """The cluster, database and table a `Distributed` table's engine clause names, or
    None for another engine (its `engine_full` in system.tables)."""
    match = re.match(
        r"\s*Distributed\(\s*'?([^',\s]+)'?\s*,\s*'?([^',\s]+)'?\s*,\s*'?([^',\s)]+)'?", engine_full
    )
    if match is None:
        return None
    return match.group(1), match.group(2), match.group(3)


def day_expr(wm_name: str, wm_type: ChType) -> str:
    """The UTC day of a watermark value as days since 1970 (Int32)."""
    q = quote_ident(wm_name)
    if wm_type.unwrap().name in ("Date", "Date32"):
        return f"toInt32({q})"
    return f"toInt32(toDate({q}, 'UTC'))"


@dataclass(frozen=True, slots=True)
class RowHash:
    """A 64-bit hash of a whole row, computed by ClickHouse: pages carry it so each
    commit records per-day sums, and the audit sums it again to find rows whose values
    changed in place. `key` names the columns (and types) it covers: sums are compared
    only when they cover the same columns."""

    expr: str
    key: str


def row_hash(columns: Sequence[tuple[str, str]]) -> RowHash:
    """The row hash over (name, type) columns. A tuple, because cityHash64 of several
    arguments is NULL when any of them is; a tuple hashes NULL apart from 0 and ''."""
    expr = f"cityHash64(tuple({', '.join(quote_ident(name) for name, _ in columns)}))"
    text = ";".join(f"{name} {type_}" for name, type_ in columns)
    return RowHash(expr, hashlib.sha1(text.encode()).hexdigest()[:16])


def day_counts_query(
    source: str,
    order: Sequence[tuple[str, ChType]],
    since: Any,
    through: Sequence[Any],
    hashed: RowHash | None = None,
    fingerprint: str | None = None,
) -> str:
    """Per UTC day from `since` (an encoded watermark value): the rows up to and including
    the committed position `through` (the audit's ClickHouse side) and the sum of their
    row hashes (0 without `hashed`), and the rows after it with the oldest one's
    watermark (how far Iceberg is behind: every row after the position is on or after
    its day) and the newest one's, plus the server's time, and the parts_fingerprint
    given (or ''). One grouped query: a run's prepare and idle audit in one."""
    wm_name, wm_type = order[0]
    day = day_expr(wm_name, wm_type)
    after = keyset_after(order, through)
    oldest = watermark_int(wm_type, f"minIf({quote_ident(wm_name)}, {after})")
    newest = watermark_int(wm_type, f"maxIf({quote_ident(wm_name)}, {after})")
    checksum = f"toString(sumIf({hashed.expr}, NOT ({after})))" if hashed else "'0'"
    parts = f"any({fingerprint})" if fingerprint else "''"
    return (
        f"SELECT {day} AS d, countIf(NOT ({after})), countIf({after}), {oldest}, "
        f"any({NOW_MICROS}), {checksum}, {newest}, {parts} FROM {source} "
        f"WHERE {quote_ident(wm_name)} >= {literal(wm_type, since)} GROUP BY d ORDER BY d"
    )


_INTERVAL = re.compile(
    r"(?:toInterval(Second|Minute|Hour|Day|Week|Month|Quarter|Year)\((\d+)\)"
    r"|INTERVAL\s+(\d+)\s+(SECOND|MINUTE|HOUR|DAY|WEEK|MONTH|QUARTER|YEAR))",
    re.IGNORECASE,
)
_UNIT = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": SECONDS_PER_DAY,
    "week": 7 * SECONDS_PER_DAY,
    "month": 30 * SECONDS_PER_DAY,
    "quarter": 91 * SECONDS_PER_DAY,
    "year": 365 * SECONDS_PER_DAY,
}


def ttl_seconds(ttl: str | None) -> float | None:
    """The shortest interval in a TTL clause such as `toDateTime(ts) + toIntervalDay(30)`."""
    if not ttl:
        return None
    found = []
    for m in _INTERVAL.finditer(ttl):
        unit, count = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        found.append(int(count) * _UNIT[unit.lower()])
    return float(min(found)) if found else None
