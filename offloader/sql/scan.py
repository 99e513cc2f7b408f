"""ClickHouse SQL reading a source table's rows: keyset pages, range sums, what is
behind, per-day counts. Pure: no driver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offloader.sql.text import (
    NOW_MICROS,
    RowHash,
    day_expr,
    keyset_after,
    literal,
    watermark_int,
    with_text_settings,
)
from offloader.types import ChType, quote_ident, time_precision


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
