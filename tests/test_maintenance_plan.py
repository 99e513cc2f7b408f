"""Compaction and orphan planning and the [maintenance] config, pure: no servers."""

from __future__ import annotations

import gzip
import json

import pytest

from offloader.config import MaintenanceConfig, parse_size
from offloader.configfile import parse_config
from offloader.errors import ConfigError, SinkError
from offloader.iceberg.compaction import FileStat, compaction_cutoff, compaction_groups
from offloader.iceberg.orphans import Listed, Survey, declared_uuid, metadata_version, plan

MB = 1_000_000


def f(name: str, day: int, lower: int, upper: int, size: int = MB) -> FileStat:
    return FileStat(name, size, 100, (0, day), lower, upper)


def test_cutoff_is_the_newest_row_or_the_settled_clock() -> None:
    now = 1_000_000.0
    assert compaction_cutoff([5, 9, 7], "value", now, 3600) == 9
    assert compaction_cutoff([], "micros", now, 0) is None
    old = int((now - 7200) * 1e6)
    assert compaction_cutoff([old], "micros", now, 3600) == old  # data older than the clock
    fresh = int(now * 1e6)
    assert compaction_cutoff([fresh], "micros", now, 3600) == int((now - 3600) * 1e6)
    assert compaction_cutoff([30, 20], "days", 86400 * 25, 86400) == 24


def test_closed_partitions_with_small_files_are_grouped_oldest_first() -> None:
    files = [
        f("d2a", 2, 20, 21),
        f("d1b", 1, 12, 13),
        f("d1a", 1, 10, 11),
        f("d3a", 3, 30, 31),  # holds the newest row: the day is open
        f("d3b", 3, 31, 40),
        f("d2b", 2, 22, 23),
    ]
    groups = compaction_groups(files, 40, 128 * MB, whole_partitions=True)
    assert [[x.path for x in g.files] for g in groups] == [["d1a", "d1b"], ["d2a", "d2b"]]
    assert groups[0].rows == 200 and groups[0].bytes == 2 * MB


def test_whole_partitions_wait_until_every_file_is_closed() -> None:
    files = [f("a", 1, 1, 2), f("b", 1, 3, 4), f("c", 1, 5, 50)]
    assert compaction_groups(files, 40, 128 * MB, whole_partitions=True) == []
    # Unpartitioned (or partitioned by another column): the closed range is compacted.
    (group,) = compaction_groups(files, 40, 128 * MB, whole_partitions=False)
    assert [x.path for x in group.files] == ["a", "b"]


def test_files_near_the_target_are_left_alone_so_passes_converge() -> None:
    big = 100 * MB
    files = [f("big1", 1, 1, 2, big), f("big2", 1, 3, 4, big), f("small", 1, 5, 6)]
    assert compaction_groups(files, 40, 128 * MB, whole_partitions=True) == []
    files.append(f("small2", 1, 7, 8))
    (group,) = compaction_groups(files, 40, 128 * MB, whole_partitions=True)
    assert [x.path for x in group.files] == ["small", "small2"]
    # Output files are sized from the inputs' bytes per row (10 kB per row here).
    assert group.rows_per_file(128 * MB) == 12_800


def test_files_without_bounds_are_never_rewritten() -> None:
    files = [FileStat("x", MB, 1, (0,), None, None), FileStat("y", MB, 1, (0,), None, None)]
    assert compaction_groups(files, 10, 128 * MB, whole_partitions=False) == []
    assert (
        compaction_groups([f("a", 1, 1, 2), f("b", 1, 3, 4)], None, MB, whole_partitions=False)
        == []
    )


BASE = {
    "clickhouse": {},
    "postgres": {"dsn": "postgresql://x@127.0.0.1/db"},
    "iceberg": {"catalog": {"name": "cold", "type": "sql", "uri": "sqlite://"}},
}


def test_maintenance_config_defaults_and_values() -> None:
    assert parse_config(BASE, "t.toml", {}).maintenance == MaintenanceConfig()
    cfg = parse_config(
        {
            **BASE,
            "maintenance": {"interval": "2h", "target_file_size": "64MiB", "orphan_age": "1d"},
        },
        "t.toml",
        {},
    ).maintenance
    assert (cfg.interval, cfg.target_file_size, cfg.orphan_age) == (7200, 64 * 2**20, 86400)
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("4096") == 4096


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"orphan_age": "5m"}, "maintenance.orphan_age must be between 1h and 366d"),
        ({"target_file_size": "lots"}, "maintenance.target_file_size must be a size"),
        ({"metadata_versions": 0}, "maintenance.metadata_versions must be a positive integer"),
        ({"retention": "7d"}, "maintenance.retention is not a known key"),
    ],
)
def test_maintenance_config_errors_name_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "maintenance": section}, "t.toml", {})


OWN = "0b6e2f0e-0000-4000-8000-000000000001"
OTHER = "7d1c4a9b-0000-4000-8000-000000000002"
LOC = "/wh/cold.db/m"
DAY = 86400.0


def listed(name: str, age: float = 0.0) -> Listed:
    return Listed(f"{LOC}/{name}", 100, age)


def survey(files: list[Listed], uuids: dict[str, str | None]) -> Survey:
    return Survey("cold.m", f"file://{LOC}", "file", OWN, files, uuids)


def test_orphans_are_only_files_provably_the_tables_own() -> None:
    current = listed("metadata/00007-c.metadata.json")
    superseded = listed("metadata/00003-s.metadata.json")  # young, but a commit replaced it
    torn = listed("metadata/00002-t.metadata.json", 4 * DAY)  # declares no table-uuid
    leftover, young = listed("data/old.parquet", 4 * DAY), listed("data/new.parquet")
    live, notes = listed("data/live.parquet", 4 * DAY), listed("data/notes.txt", 4 * DAY)
    s = survey(
        [leftover, young, live, notes, current, superseded, torn],
        {current.path: OWN, superseded.path: OWN, torn.path: None},
    )
    orphans = plan(s, {current.path, live.path}, 7, DAY)
    assert [o.path for o in orphans] == [f"file://{leftover.path}", f"file://{superseded.path}"]


def test_a_location_holding_another_tables_metadata_is_refused() -> None:
    """Two deployments (two catalogs, one warehouse, the same target name): the other
    table's metadata, older versions than this table's current one, is never an orphan;
    the location is refused, naming it, both uuids and what to do."""
    own = listed("metadata/00009-a.metadata.json")
    other = listed("metadata/00001-b.metadata.json", 4 * DAY)
    their_data = listed("data/theirs.parquet", 4 * DAY)
    s = survey([their_data, own, other], {own.path: OWN, other.path: OTHER})
    assert s.foreign() == {other.path: OTHER}
    with pytest.raises(SinkError) as caught:
        plan(s, {own.path}, 9, DAY)
    text = str(caught.value)
    assert text.startswith(f"cold.m: the table's location file://{LOC} also holds")
    assert OWN in text and OTHER in text and other.path in text
    assert "its own warehouse" in text and "target name" in text
    # One location, one table: the same files are ordinary orphans.
    alone = survey([their_data, own, other], {own.path: OWN, other.path: OWN})
    assert len(plan(alone, {own.path}, 9, DAY)) == 2


def test_declared_uuid_is_read_from_a_plain_or_gzipped_head() -> None:
    text = json.dumps({"location": LOC, "table-uuid": OWN, "snapshots": list(range(5000))}).encode()
    assert declared_uuid(text[:200], gzipped=False) == OWN
    packed = gzip.compress(text)
    assert declared_uuid(packed[: len(packed) // 2], gzipped=True) == OWN  # a partial read
    assert declared_uuid(b"", gzipped=False) is None
    assert declared_uuid(b"not gzip", gzipped=True) is None
    assert metadata_version(f"{LOC}/metadata/00012-x.gz.metadata.json") == 12
