"""ClickHouse SQL reading what a source's rows are like as a whole, for `offloader add`:
whether (watermark, keys) tells them apart and whether their values fit what Iceberg
stores. (How far they span is sql.scan.behind_query after no position.) Pure: no
driver."""

from __future__ import annotations

from collections.abc import Sequence

from offloader.types import INT64_MAX, quote_ident

# The checks misfits_query makes of a column, by the block key that says how to store it.
MISFITS = {
    "uint64": "max({}) > " + str(INT64_MAX),  # UInt64 values above Int64's
    "strings": "NOT min(isValidUTF8({}))",  # String bytes that are not UTF-8
}


def ties_query(relation: str, wm_name: str, position: Sequence[str]) -> str:
    """The most rows of the newest day (a day back from the newest watermark) that share
    one value of the `position` columns (watermark and keys): 1 when they tell rows apart."""
    wm = quote_ident(wm_name)
    columns = ", ".join(quote_ident(c) for c in position)
    return (
        f"SELECT max(c) FROM (SELECT count() AS c FROM {relation} WHERE {wm} >= "
        f"(SELECT max({wm}) FROM {relation}) - INTERVAL 1 DAY "
        f"GROUP BY {columns})"
    )


def misfits_query(relation: str, checks: Sequence[tuple[str, str]]) -> str:
    """One row: per (column, check) of `checks` (a key of MISFITS), whether any of the
    column's values fails it (1) or none does (0)."""
    exprs = ", ".join(MISFITS[check].format(quote_ident(name)) for name, check in checks)
    return f"SELECT {exprs} FROM {relation}"
