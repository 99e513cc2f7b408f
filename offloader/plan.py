"""Pure planning decisions of a table run: how the source columns travel (SourcePlan),
the high-water mark, state reconciliation and lag. (Which files compaction rewrites is
iceberg/compaction.py.)"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from offloader.config import TableConfig
from offloader.cursor import EPOCH, Ticks, as_datetime
from offloader.errors import InconsistentState, SourceSchemaError
from offloader.types import ChType, parse_type
from offloader.wire import ColumnPlan, plan_column

if TYPE_CHECKING:
    import pyarrow as pa

    from offloader.state import CommittedMark, TableState


@dataclass(frozen=True, slots=True)
class SourcePlan:
    columns: tuple[ColumnPlan, ...]
    order: tuple[tuple[str, ChType], ...]  # (watermark, keys...) with their types
    order_index: tuple[int, ...]  # their positions in `columns`

    @property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([c.field for c in self.columns])

    @property
    def select(self) -> list[str]:
        """The native transport's SELECT list: each column's wire expressions in order."""
        return [expr for c in self.columns for expr in c.select]

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each column's wire values start in a page."""
        out, at = [], 0
        for c in self.columns:
            out.append(at)
            at += len(c.select)
        return tuple(out)


# Types a keyset cursor can be compared on, and how the watermark column may be typed.
WATERMARK_TYPES = (
    "DateTime",
    "DateTime64",
    "Date",
    "Date32",
    *(f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)),
)
KEY_TYPES = (
    *WATERMARK_TYPES,
    "String",
    "FixedString",
    "UUID",
    "Decimal",
    "Decimal32",
    "Decimal64",
    "Decimal128",
    "Int128",
    "UInt128",
    "Int256",
    "UInt256",
)


def check_cursor_column(table: str, role: str, name: str, t: ChType) -> None:
    """The watermark and key columns must be non-Nullable and orderable."""
    allowed = WATERMARK_TYPES if role == "watermark" else KEY_TYPES
    if t.nullable:
        raise SourceSchemaError(
            f"{table}: {role} column {name!r} is {t}; it must not be Nullable "
            "(NULLs have no place in a keyset order)",
            reason="config",
        )
    base = t.unwrap()
    if base.name not in allowed:
        raise SourceSchemaError(
            f"{table}: {role} column {name!r} has type {t}; a {role} column must be one of "
            + ", ".join(allowed),
            reason="config",
        )


Order = tuple[tuple[str, ChType], ...]  # (watermark, keys...) with their types


def plan_order(
    table: TableConfig, columns: Sequence[tuple[str, str]]
) -> tuple[Order, tuple[int, ...]]:
    """The watermark and key columns with their types and positions, checked. Pure, and
    cheap: no column is mapped (an idle run needs no more)."""
    by_name = {name: i for i, (name, _) in enumerate(columns)}
    order: list[tuple[str, ChType]] = []
    index: list[int] = []
    for role, name in [("watermark", table.watermark)] + [("key", k) for k in table.keys]:
        if name not in by_name:
            raise SourceSchemaError(
                f"{table.source}: {role} column {name!r} does not exist; columns are "
                + ", ".join(by_name),
                reason="config",
            )
        t = parse_type(columns[by_name[name]][1])
        check_cursor_column(table.source, role, name, t)
        order.append((name, t))
        index.append(by_name[name])
    return tuple(order), tuple(index)


def plan_source(table: TableConfig, columns: Sequence[tuple[str, str]]) -> SourcePlan:
    """Map the source columns and check the watermark and key columns. Pure."""
    order, index = plan_order(table, columns)
    plans = tuple(
        plan_column(table.source, name, type_text, table.uint64, table.strings)
        for name, type_text in columns
    )
    order = tuple((name, plans[i].ch_type) for (name, _), i in zip(order, index, strict=True))
    return SourcePlan(plans, order, index)


def high_water_value(max_value: Any, server_now: dt.datetime, lag: float, wm_type: ChType) -> Any:
    """The newest watermark value this run may read.

    Time columns: min(max(column), now - lag), so rows still being inserted wait.
    Date columns: only whole days that ended before now - lag.
    Integer columns: max(column); lag does not apply to a counter.
    """
    name = wm_type.unwrap().name
    if server_now.tzinfo is None:
        server_now = server_now.replace(tzinfo=dt.UTC)
    cutoff = server_now - dt.timedelta(seconds=lag)
    if isinstance(max_value, Ticks):  # DateTime64(7..9): exact, in its own ticks
        micros = (cutoff - EPOCH) // dt.timedelta(microseconds=1)
        upto = min(max_value.count, micros * 10 ** (max_value.precision - 6))
        return Ticks(upto, max_value.precision)
    if name in ("DateTime", "DateTime64"):
        assert isinstance(max_value, dt.datetime)
        if max_value.tzinfo is None:
            max_value = max_value.replace(tzinfo=dt.UTC)
        upto = min(max_value, cutoff)
        if name == "DateTime":
            upto = upto.replace(microsecond=0)
        return upto
    if name in ("Date", "Date32"):
        assert isinstance(max_value, dt.date)
        last_complete_day = cutoff.astimezone(dt.UTC).date() - dt.timedelta(days=1)
        return min(max_value, last_complete_day)
    return max_value


@dataclass(frozen=True, slots=True)
class Behind:
    """How far Iceberg is behind ClickHouse: the one definition of lag that `status`,
    `status --check` and the metrics share."""

    rows: int  # rows not yet offloaded
    seconds: float | None  # age of the oldest of them on ClickHouse's clock; 0 when none
    # waits; None for integer watermarks (no time to measure)


def behind(rows: int, oldest: Any, server_now: dt.datetime, wm_type: ChType) -> Behind:
    """`oldest` is the oldest waiting row's watermark (datetime, date or integer)."""
    name = wm_type.unwrap().name
    if name not in ("DateTime", "DateTime64", "Date", "Date32"):
        return Behind(rows, None)
    if not rows:
        return Behind(0, 0.0)
    oldest = as_datetime(oldest)
    if isinstance(oldest, dt.datetime):
        when = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
    else:
        when = dt.datetime.combine(oldest, dt.time(), dt.UTC)
    now = server_now if server_now.tzinfo else server_now.replace(tzinfo=dt.UTC)
    return Behind(rows, max(0.0, (now - when).total_seconds()))


Action = Literal["fresh", "continue", "recover"]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    action: Action
    seq: int
    position: tuple[Any, ...] | None


def reconcile_with(target: str, state: TableState, mark: CommittedMark | None) -> Reconciliation:
    """`reconcile` of PostgreSQL's state and Iceberg's newest commit marker."""
    return reconcile(
        target,
        state.seq,
        state.position,
        mark.seq if mark else None,
        mark.position if mark else None,
    )


def reconcile(
    target: str,
    pg_seq: int,
    pg_position: tuple[Any, ...] | None,
    ice_seq: int | None,
    ice_position: tuple[Any, ...] | None,
) -> Reconciliation:
    """Decide where a run starts from the PostgreSQL and Iceberg views of the last commit.

    Iceberg ahead of PostgreSQL: a previous run died between its two commits;
    PostgreSQL is advanced to Iceberg ("recover"). Iceberg behind: someone rolled
    the Iceberg table back or recreated it; offloader stops that table.
    """
    ice = ice_seq or 0
    if ice == pg_seq:
        if ice and tuple(ice_position or ()) != tuple(pg_position or ()):
            raise InconsistentState(
                f"{target}: PostgreSQL and Iceberg both record commit {ice} but with different "
                f"watermarks ({pg_position} vs {ice_position}); see README 'Recovery'"
            )
        return Reconciliation("continue" if ice else "fresh", ice, ice_position)
    if ice > pg_seq:
        return Reconciliation("recover", ice, ice_position)
    hint = (
        f"run `offloader reset {target}` to continue from what Iceberg holds, "
        "after checking why (see README 'Recovery')"
    )
    if ice_seq is None:
        raise InconsistentState(
            f"{target}: PostgreSQL records {pg_seq} offloader commits but the Iceberg table has "
            f"none (dropped, recreated or rolled back?); {hint}"
        )
    raise InconsistentState(
        f"{target}: Iceberg is at offloader commit {ice} but PostgreSQL at {pg_seq}: the Iceberg "
        f"table was rolled back; {hint}"
    )
