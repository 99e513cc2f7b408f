"""Pure planning decisions of a table run: the high-water mark and state reconciliation."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from offloader.convert import encode_value
from offloader.errors import InconsistentState
from offloader.types import ChType


def high_water_mark(max_value: Any, server_now: dt.datetime, lag: float, wm_type: ChType) -> Any:
    """The newest watermark value this run may read, as an encoded cursor value.

    Time columns: min(max(column), now - lag), so rows still being inserted wait.
    Date columns: only whole days that ended before now - lag.
    Integer columns: max(column); lag does not apply to a counter.
    """
    name = wm_type.unwrap().name
    if server_now.tzinfo is None:
        server_now = server_now.replace(tzinfo=dt.UTC)
    cutoff = server_now - dt.timedelta(seconds=lag)
    if name in ("DateTime", "DateTime64"):
        assert isinstance(max_value, dt.datetime)
        if max_value.tzinfo is None:
            max_value = max_value.replace(tzinfo=dt.UTC)
        upto = min(max_value, cutoff)
        if name == "DateTime":
            upto = upto.replace(microsecond=0)
        return encode_value(upto)
    if name in ("Date", "Date32"):
        assert isinstance(max_value, dt.date)
        last_complete_day = cutoff.astimezone(dt.UTC).date() - dt.timedelta(days=1)
        return encode_value(min(max_value, last_complete_day))
    return encode_value(max_value)


Action = Literal["fresh", "continue", "recover"]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    action: Action
    seq: int
    position: tuple[Any, ...] | None


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
