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

from offloader.source.parquet import iceberg_type
from offloader.sql import quote_ident
from offloader.types import parse_type
from offloader.view import column_pair, exact
from tests.helpers import Env
from tests.test_every_type import create_every_table

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


def test_every_type_through_the_view_equals_the_source(env: Env) -> None:
    """Every type family (Nullable and in an Array where allowed) read back through the
    view: its types are the source's (the text-form families aside: their stored type,
    from both tiers), and its rows equal the source's value by value (EXCEPT both ways)
    while they come from Iceberg, then while they come from the hot table."""
    db = env.ch_database
    create_every_table(env)
    report = env.once()
    assert report.ok, report.summary()
    assert report.tables[0].view_error is None, report.tables[0].view_error
    source = [(str(r[0]), str(r[1])) for r in env.ch(f"DESCRIBE {db}.every")]
    viewed = [(str(r[0]), str(r[1])) for r in env.ch(f"DESCRIBE {db}.every_all")]
    assert [n for n, _ in viewed] == [n for n, _ in source]
    texts = []
    for (name, t), (_, got) in zip(source, viewed, strict=True):
        if exact(parse_type(t)):
            assert got == t, (name, got, t)
        else:
            assert got == iceberg_type(parse_type(t), "decimal"), (name, got)
            texts.append(name)
    assert {n.split("_", 1)[1] for n in texts} == {"Dynamic", "Variant", "Geometry"}, texts
    # The source's rows in the view's forms: the hot side of the view itself.
    hot = ", ".join(column_pair(n, t, t, "decimal")[0] for n, t in source)
    as_text = ", ".join(f"toString({quote_ident(n)})" for n, _ in source)

    def differences() -> list[tuple[object, ...]]:
        forms = f"SELECT {hot} FROM {db}.every"
        return env.ch(
            f"SELECT 'view', {as_text} FROM (SELECT * FROM {db}.every_all EXCEPT {forms}) "
            f"UNION ALL SELECT 'source', {as_text} FROM ({forms} EXCEPT SELECT * FROM "
            f"{db}.every_all)"
        )

    assert env.ch(f"SELECT count() FROM {db}.every_all")[0][0] == 5
    assert differences() == []
    # Every row from Iceberg: the hot table emptied (as a TTL would), the view unchanged.
    env.ch(f"CREATE TABLE {db}.every_hot AS {db}.every")
    env.ch(f"INSERT INTO {db}.every_hot SELECT * FROM {db}.every")
    env.ch(f"TRUNCATE TABLE {db}.every")
    assert env.ch(f"SELECT count() FROM {db}.every_all")[0][0] == 5
    forms = f"SELECT {hot} FROM {db}.every_hot"
    assert env.ch(f"SELECT count() FROM ({forms} EXCEPT SELECT * FROM {db}.every_all)") == [
        (0,)
    ]
