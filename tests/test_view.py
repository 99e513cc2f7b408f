"""One table over both tiers: the ClickHouse view offloader keeps at each table's
committed position (offloader/view.py), against the real embedded ClickHouse reading
the cold tier itself (icebergLocal) and the real PostgreSQL.

At every read the view must return each source row exactly once, with the source's
column names and types: while rows stream in over many cycles, with ties on the
watermark across page and cycle ends, after the hot partitions are dropped, after a
compaction and a repair, and across a kill between the Iceberg commit and the view's
replacement.
"""

from __future__ import annotations

import pytest

from tests.helpers import Env

pytestmark = pytest.mark.integration

SUMS = "count(), sum(cityHash64(trade_id, exchange_ts, price, quantity, side, symbol, tags))"


def _view(env: Env, name: str = "trades") -> str:
    return f"{env.ch_database}.{name}_all"


def _same_as_source(env: Env, name: str = "trades") -> tuple[int, int]:
    """The view's count and checksum, asserted equal to the source's."""
    db = env.ch_database
    view = env.ch(f"SELECT {SUMS} FROM {_view(env, name)}")[0]
    hot = env.ch(f"SELECT {SUMS} FROM {db}.{name}")[0]
    assert view == hot, (view, hot)
    return view


def test_view_returns_every_row_once_with_the_source_types(env: Env) -> None:
    db = env.ch_database
    env.create_trades("trades")
    env.insert_trades("trades", 10_000, 1, "2025-03-01 00:00:00", step_us=20_000_000)
    env.write_config([env.table("trades", view=True, batch_rows=3001)])
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].rows == 10_000
    assert report.tables[0].view_error is None, report.tables[0].view_error
    assert _same_as_source(env)[0] == 10_000
    assert env.ch(f"DESCRIBE {_view(env)}") == env.ch(f"DESCRIBE {db}.trades")
    # Rows in both tiers come from Iceberg for the offloaded part, from the hot table after.
    env.insert_trades("trades", 500, 20_001, "2025-03-04 00:00:00", step_us=1_000_000)
    assert _same_as_source(env)[0] == 10_500
    comment = env.ch(
        f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = 'trades_all'"
    )[0][0]
    assert comment.startswith("offloader: both tiers at commit 1, position"), comment
