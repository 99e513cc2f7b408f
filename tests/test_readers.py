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


def test_files_from_before_field_ids_are_given_them_by_maintain(
    env_parquet: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages stored without field ids (as the parquet transport wrote them before) read
    through the table's name mapping (Polars) but not by Daft; `offloader maintain
    --field-ids` writes them again with ids (data pages unchanged, one snapshot that
    changes no row), and Daft reads every row."""
    from offloader.iceberg import table as iceberg_table

    env = env_parquet
    env.create_trades("old")
    env.insert_trades("old", 4_000, 1, "2026-03-01 00:00:00", step_us=30_000_000)
    env.write_config([env.table("old", batch_rows=1_000)])
    monkeypatch.setattr(
        iceberg_table, "with_field_ids", lambda body, mapping, what: (len(body), b"")
    )
    assert env.once().ok
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="columns without a field id"):
        assert_field_ids_everywhere(env, "cold.old")
    assert assert_read_equal(env, "polars", "cold.old") == 4_000
    with pytest.raises(AssertionError, match="daft could not read"):
        assert_read_equal(env, "daft", "cold.old")
    dry = env.cli("maintain", "--field-ids", "--dry-run")
    assert dry.returncode == 0 and "would write 4 files again with field ids" in dry.stdout, (
        dry.stdout + dry.stderr
    )
    # The pass compacts the closed day's files (pyiceberg writes them with ids) and
    # writes the open day's file again with ids.
    done = env.cli("maintain", "--field-ids")
    assert done.returncode == 0 and "wrote 1 files again with field ids" in done.stdout, (
        done.stdout + done.stderr
    )
    assert "rewrote 3 files" in done.stdout, done.stdout
    assert assert_field_ids_everywhere(env, "cold.old") == 2
    assert assert_read_equal(env, "daft", "cold.old") == 4_000
    assert env.assert_tiers_equal("cold.old") == 4_000
    again = env.cli("maintain", "--field-ids")
    assert "again with field ids" not in again.stdout, again.stdout  # nothing left
    env.insert_trades("old", 10, 90_000, "2026-03-05 00:00:00")
    assert env.once().ok  # offloading goes on from the carried marker
    assert env.assert_tiers_equal("cold.old") == 4_010
