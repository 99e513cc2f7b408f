"""Readers nobody here wrote, by field id: Polars and Daft read offloader's tables on
every transport, also after the source gained columns (the data files written before
have no such column; their field ids still map every other one). The every-type table
is in test_every_type.py."""

from __future__ import annotations

import pytest

from tests.helpers import Env, assert_field_ids_everywhere, assert_read_equal

pytestmark = pytest.mark.integration


def test_a_source_that_gained_columns_reads_equal_by_id(env: Env) -> None:
    db = env.ch_database
    env.create_trades("grown")
    env.insert_trades("grown", 3_000, 1, "2026-02-01 00:00:00", step_us=60_000_000)
    env.write_config([env.table("grown", batch_rows=1_000)])
    assert env.once().ok
    env.ch(f"ALTER TABLE {db}.grown ADD COLUMN venue LowCardinality(String) DEFAULT 'x'")
    env.ch(f"ALTER TABLE {db}.grown ADD COLUMN fills Array(Nullable(Int32))")
    env.ch(
        f"INSERT INTO {db}.grown SELECT * REPLACE (trade_id + 10000 AS trade_id, "
        "exchange_ts + INTERVAL 3 DAY AS exchange_ts, 'y' AS venue, [1, NULL] AS fills) "
        f"FROM {db}.grown LIMIT 500"
    )
    report = env.once()
    assert report.ok and report.tables[0].rows == 500, report.summary()
    # The rows from before the columns: Iceberg holds NULL, ClickHouse its default.
    assert env.assert_tiers_equal("cold.grown", ignore=("venue", "fills")) == 3_500
    assert assert_field_ids_everywhere(env, "cold.grown") >= 2
    cold = env.iceberg_arrow(env.config().table("cold.grown"))
    assert cold.column("venue").to_pylist().count("y") == 500
    for reader in ("polars", "daft"):
        assert assert_read_equal(env, reader, "cold.grown") == 3_500
