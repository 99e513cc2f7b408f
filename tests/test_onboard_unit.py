"""`offloader add`'s proposals from ClickHouse's metadata (pure: no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offloader.errors import ConfigError
from offloader.ops.onboard import (
    Proposal,
    SourceInfo,
    partition_transform,
    propose,
    render,
    split_expressions,
    ttl_duration,
    write,
)

COLUMNS = (
    ("ts", "DateTime64(6, 'UTC')"),
    ("id", "UInt64"),
    ("symbol", "LowCardinality(String)"),
    ("n", "Int32"),
)


def info(**kw: object) -> SourceInfo:
    base: dict[str, object] = {
        "database": "market",
        "name": "trades",
        "engine": "MergeTree",
        "engine_full": "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id)",
        "sorting_key": "ts, id",
        "partition_key": "toYYYYMMDD(ts)",
        "ttl": None,
        "columns": COLUMNS,
    }
    base.update(kw)
    return SourceInfo(**base)  # type: ignore[arg-type]


def test_a_mergetree_gets_watermark_keys_and_partitioning_from_its_keys() -> None:
    p = propose(info(), "cold")
    assert p.block == {
        "source": "market.trades",
        "target": "cold.trades",
        "watermark": "ts",
        "keys": ["id"],
        "partition_by": ["day(ts)"],
    }
    assert p.statements == []


def test_the_watermark_is_the_sorting_keys_first_time_column() -> None:
    p = propose(info(sorting_key="symbol, ts, id"), "cold")
    assert (p.block["watermark"], p.block["keys"]) == ("ts", ["symbol", "id"])


@pytest.mark.parametrize(
    ("sorting_key", "why"),
    [
        ("id, n", "no usable watermark"),
        ("", "no usable watermark"),
        ("toStartOfHour(ts), id", "no usable watermark"),
        ("ts", "no key columns"),
        ("ts, id % 10", "no key columns"),
    ],
)
def test_a_table_without_a_usable_watermark_or_keys_is_refused_saying_why(
    sorting_key: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=why) as exc:
        propose(info(sorting_key=sorting_key), "cold")
    assert "market.trades" in str(exc.value)


def test_a_nullable_watermark_is_refused() -> None:
    columns = (("ts", "Nullable(DateTime)"), ("id", "UInt64"))
    with pytest.raises(ConfigError, match="Nullable"):
        propose(info(columns=columns), "cold")


@pytest.mark.parametrize(
    ("engine", "final"),
    [
        ("MergeTree", False),
        ("ReplacingMergeTree", True),
        ("CollapsingMergeTree", True),
        ("VersionedCollapsingMergeTree", True),
        ("ReplicatedReplacingMergeTree", True),
        ("SummingMergeTree", False),
    ],
)
def test_replacing_and_collapsing_engines_are_read_with_final(engine: str, final: bool) -> None:
    assert propose(info(engine=engine), "cold").block.get("final", False) is final


def test_a_distributed_source_is_read_shard_by_shard() -> None:
    p = propose(
        info(engine="Distributed", local_engine="MergeTree", local_table=("market", "t_local")),
        "cold",
    )
    assert p.block["distributed"] == "shards"
    assert "final" not in p.block


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        ("ts + toIntervalDay(7)", "7d"),
        ("toDateTime(ts) + toIntervalHour(36)", "36h"),
        ("ts + toIntervalWeek(2) DELETE", "14d"),
        ("ts + toIntervalMonth(1)", None),
        ("other + toIntervalDay(7)", None),
        ("ts + toIntervalDay(7) TO VOLUME 'cold'", None),
        (None, None),
    ],
)
def test_a_ttl_of_the_watermark_becomes_hot_retention(ttl: str | None, expected: str) -> None:
    assert ttl_duration(ttl, "ts") == expected
    p = propose(info(ttl=ttl), "cold")
    assert p.block.get("hot_retention") == expected
    if expected:
        assert any("REMOVE TTL" in n for n in p.notes)


def test_a_replicated_source_with_retention_gets_a_retiring_table_and_its_ddl() -> None:
    p = propose(
        info(
            engine="ReplicatedMergeTree",
            engine_full="ReplicatedMergeTree('/clickhouse/tables/{shard}/trades', '{replica}') "
            "PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id)",
            ttl="ts + toIntervalDay(7)",
        ),
        "cold",
    )
    assert p.block["retiring_table"] == "trades_retiring"
    (ddl,) = p.statements
    assert ddl.startswith("CREATE TABLE `market`.`trades_retiring` AS `market`.`trades` ")
    assert "'/clickhouse/tables/{shard}/trades_retiring'" in ddl


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("toYYYYMMDD(ts)", "day(ts)"),
        ("toDate(ts)", "day(ts)"),
        ("toYYYYMM(ts)", "month(ts)"),
        ("toYear(ts)", "year(ts)"),
        ("toYYYYMM(other)", None),
        ("(toYYYYMM(ts), symbol)", None),
        ("", None),
    ],
)
def test_the_partition_key_maps_to_an_iceberg_transform(key: str, expected: str | None) -> None:
    assert partition_transform(key, "ts") == expected
    assert propose(info(partition_key=key), "cold").block["partition_by"] == [expected or "day(ts)"]


def test_expression_lists_split_at_top_level_commas_only() -> None:
    assert split_expressions("a, f(b, c), 'x,y', `d`") == ["a", "f(b, c)", "'x,y'", "`d`"]
    assert split_expressions("tuple(a, b)") == ["a", "b"]
    assert split_expressions("") == []


CONFIG = """# my comment stays
[offloader]
interval = "15m"   # aligned

[[tables]]
source = "market.old"   # kept as written
target = "cold.old"
watermark = "ts"
keys = ["id"]
"""


def test_write_appends_keeping_comments_and_refuses_a_configured_source(tmp_path: Path) -> None:
    path = tmp_path / "tables.toml"
    path.write_text(CONFIG)
    p = propose(info(), "cold")
    write(path, [p])
    text = path.read_text()
    assert text.startswith(CONFIG)
    assert 'source = "market.trades"' in text
    with pytest.raises(ConfigError, match=r"market\.trades already configured"):
        write(path, [p])
    assert path.read_text() == text
    old = Proposal("market.old", {"source": "market.old"})
    with pytest.raises(ConfigError, match="already configured"):
        write(path, [old])


def test_render_shows_the_block_with_its_notes_as_comments() -> None:
    text = render(propose(info(ttl="ts + toIntervalDay(7)"), "cold"))
    assert "[[tables]]" in text
    assert 'hot_retention = "7d"' in text
    assert all(line.startswith("#") for line in text.split("[[tables]]")[0].splitlines())
