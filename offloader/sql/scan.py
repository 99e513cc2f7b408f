"""ClickHouse SQL reading a source table's rows: keyset pages (of a `Scan`), range sums,
what is behind, per-day counts, a shard's probe, the order of positions, the examples of
values a page refused. Pure: no driver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from offloader.sql.text import (
    NOW_MICROS,
    RowHash,
    day_expr,
    keyset_after,
    literal,
    watermark_int,
    with_text_settings,
)
from offloader.types import INT64_MAX, ChType, quote_ident, time_precision


@dataclass(frozen=True, slots=True)
class Scan:
    """Which rows a keyset scan reads, in (watermark, keys) order: `relation` (a table,
    with FINAL when configured) up to watermark `upto`; for repair, only the watermarks
    in [since, before) and never past the committed position `through`."""

    relation: str
    upto: Any
    since: Any = None
    before: Any = None
    through: Sequence[Any] | None = None

    def query(
        self,
        plan: Ordered,
        select: Sequence[str],
        after: Sequence[Any] | None,
        limit: int,
        one_day: bool = False,
    ) -> str:
        """The SQL of one page of this scan after position `after` in `plan`'s order
        (page_query)."""
        return page_query(self, plan.order, select, after, limit, one_day)


class Ordered(Protocol):
    """What has a keyset order: (watermark, keys...) with their types (a SourcePlan)."""

    @property
    def order(self) -> Sequence[tuple[str, ChType]]: ...


def page_query(
    scan: Scan,
    order: Sequence[tuple[str, ChType]],
    select: Sequence[str],
    after: Sequence[Any] | None,
    limit: int,
    one_day: bool = False,
) -> str:
    """One keyset page of `scan`: rows after `after`, watermark <= `upto`, in (watermark,
    keys) `order`.

    `LIMIT n WITH TIES` ends every page on a complete (watermark, keys) group, so
    rows that share a position with the page's last row are never split across
    pages (and so never skipped) even if the keys are not unique. With `one_day`
    (a date or time watermark), the page also ends at the end of the UTC day of its
    first row (a scalar subquery reading only the granules after the position).
    """
    source = scan.relation
    wm_name, wm_type = order[0]
    where = [f"{quote_ident(wm_name)} <= {literal(wm_type, scan.upto)}"]
    if after is not None:
        where.append(f"({keyset_after(order, after)})")
    if scan.since is not None:  # repair: a range of days
        where.append(f"{quote_ident(wm_name)} >= {literal(wm_type, scan.since)}")
    if scan.before is not None:
        where.append(f"{quote_ident(wm_name)} < {literal(wm_type, scan.before)}")
    if scan.through is not None:  # ... never past the committed position
        where.append(f"NOT ({keyset_after(order, scan.through)})")
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
    scan: Scan,
    order: Sequence[tuple[str, ChType]],
    after: Sequence[Any] | None,
    last: Sequence[Any],
    hashed: RowHash,
) -> str:
    """The rows of `scan` after `after` up to and including `last` (one page's keyset
    range; none before the scan's watermark `since`) and the sum of their row hashes, as
    text. The page's other bounds (upto, before, through) hold for every row up to its
    last one, so they are not repeated."""
    where = [f"NOT ({keyset_after(order, last)})"]
    if after is not None:
        where.append(f"({keyset_after(order, after)})")
    if scan.since is not None:
        wm_name, wm_type = order[0]
        where.append(f"{quote_ident(wm_name)} >= {literal(wm_type, scan.since)}")
    return (
        f"SELECT count(), toString(sum({hashed.expr})) FROM {scan.relation} "
        f"WHERE {' AND '.join(where)}"
    )


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


def probe_relation(
    relation: str,
    order: Sequence[tuple[str, ChType]],
    columns: Sequence[str],
    upto: Any,
    after: Sequence[Any] | None,
    offset: int,
) -> str:
    """The rows (all `columns`) at the position of the `offset`-th row (0-based) after
    `after` up to watermark `upto`, as a subquery a pager reads like a table: only the
    watermark and key columns of the rows before it are read, in the table's order."""
    cols = ", ".join(quote_ident(c) for c, _ in order)
    wm, wm_type = order[0]
    where = [f"{quote_ident(wm)} <= {literal(wm_type, upto)}"]
    if after is not None:
        where.append(f"({keyset_after(order, after)})")
    names = ", ".join(quote_ident(c) for c in columns)
    return (
        f"(SELECT {names} FROM {relation} WHERE ({cols}) IN (SELECT {cols} FROM {relation} "
        f"WHERE {' AND '.join(where)} ORDER BY {cols} LIMIT 1 OFFSET {int(offset)}))"
    )


def positions_order_query(
    order: Sequence[tuple[str, ChType]], positions: Sequence[Sequence[Any]]
) -> str:
    """The indexes (0-based) of `positions` (encoded (watermark, keys...) values of
    `order`'s types) in keyset order, as ClickHouse orders the values; ties by index."""
    selects = [
        f"SELECT {i} AS i, tuple("
        + ", ".join(literal(t, v) for (_, t), v in zip(order, p, strict=True))
        + ") AS p"
        for i, p in enumerate(positions)
    ]
    return f"SELECT i FROM ({' UNION ALL '.join(selects)}) ORDER BY p, i"


def invalid_utf8_query(relation: str, column: str) -> str:
    """Of String `column`: one value that is not valid UTF-8 (as hex) and how many are."""
    q = quote_ident(column)
    return f"SELECT hex(any({q})), count() FROM {relation} WHERE NOT isValidUTF8({q})"


def above_int64_query(relation: str, column: str) -> str:
    """The greatest value of UInt64 `column` above Int64's range, as text (an example for
    an error)."""
    q = quote_ident(column)
    return f"SELECT toString(max({q})) FROM {relation} WHERE {q} > {INT64_MAX}"
