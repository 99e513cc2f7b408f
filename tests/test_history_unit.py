"""A run's Iceberg work does not grow with the table's history: on a table with many
snapshots a commit copies none of them, and the audit's per-day figures read only the
manifests the manifest list cannot answer for. Counts, never time. No server: a SQLite
catalog in a temporary directory."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.manifest import ManifestFile
from pyiceberg.table.metadata import TableMetadataUtil
from pyiceberg.table.snapshots import Snapshot

from offloader.config import CatalogConfig, PartitionField
from offloader.errors import InconsistentState
from offloader.iceberg import Marker, files
from offloader.iceberg.catalog import IcebergCatalog
from offloader.iceberg.table import IcebergTable

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False)])
TS = pa.timestamp("us", tz="UTC")
TIMED = pa.schema([pa.field("ts", TS, nullable=False), pa.field("id", pa.int64(), nullable=False)])
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
FIRST = (DAY0 - datetime(1970, 1, 1, tzinfo=UTC)).days  # DAY0 in days since 1970


def _catalog(tmp_path: Path) -> IcebergCatalog:
    cfg = CatalogConfig(
        "unit",
        {
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": f"file://{tmp_path}/warehouse",
        },
    )
    return IcebergCatalog(cfg)


def _table(
    tmp_path: Path, name: str, schema: pa.Schema = SCHEMA, by: tuple[PartitionField, ...] = ()
) -> IcebergTable:
    return _catalog(tmp_path).ensure(f"cold.{name}", schema, by)


def _commit(table: IcebergTable, seq: int) -> None:
    batch = pa.RecordBatch.from_pylist([{"id": seq}], schema=SCHEMA)
    table.commit_files([table.write_files([batch])], Marker(seq, [seq], f"run-{seq}", 1))


@pytest.fixture
def snapshot_copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts deep copies of Snapshot models (pydantic's __deepcopy__ on Snapshot)."""
    copies = [0]
    original = Snapshot.__deepcopy__

    def counting(self: Snapshot, memo: dict[int, Any] | None = None) -> Snapshot:
        copies[0] += 1
        return original(self, memo)

    monkeypatch.setattr(Snapshot, "__deepcopy__", counting)
    return copies


def test_a_commit_copies_no_snapshot_of_the_history(
    tmp_path: Path, snapshot_copies: list[int]
) -> None:
    table = _table(tmp_path, "history")
    for seq in range(1, 31):
        _commit(table, seq)
    assert table.snapshot_count() == 30
    snapshot_copies[0] = 0
    _commit(table, 31)
    assert snapshot_copies[0] == 0, (
        f"one commit on a table of 30 snapshots deep-copied {snapshot_copies[0]} snapshots: "
        "a commit's cost grows with the table's history"
    )
    copy.deepcopy(table.table.metadata)  # the counter itself counts
    assert snapshot_copies[0] == 31


def test_a_commit_parses_no_metadata_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run loaded the table's metadata (every snapshot) once; its commit builds on
    that copy instead of loading and parsing the current metadata file again."""
    catalog = _catalog(tmp_path)
    catalog.ensure("cold.parses", SCHEMA, ())
    table = catalog.load("cold.parses")  # as a run loads it
    assert table is not None
    _commit(table, 1)
    parses = [0]
    original = TableMetadataUtil.parse_raw

    def counting(data: str | bytes) -> Any:
        parses[0] += 1
        return original(data)

    monkeypatch.setattr(TableMetadataUtil, "parse_raw", staticmethod(counting))
    _commit(table, 2)
    assert parses[0] == 0, f"one commit parsed the table's metadata file {parses[0]} times"
    table.refresh()  # the counter itself counts
    assert parses[0] == 1


def test_a_commit_built_on_a_stale_table_is_refused(tmp_path: Path) -> None:
    """Building on the run's own copy of the metadata keeps the compare-and-set: a
    worker whose copy is older than the catalog's commits nothing and is told why."""
    catalog = _catalog(tmp_path)
    first = catalog.ensure("cold.cas", SCHEMA, ())
    stale = catalog.load("cold.cas")
    assert stale is not None
    _commit(first, 1)
    batch = pa.RecordBatch.from_pylist([{"id": 1}], schema=SCHEMA)
    with pytest.raises(InconsistentState, match="another worker"):
        stale.commit_files([stale.write_files([batch])], Marker(1, [1], "run-b", 1))
    fresh = catalog.load("cold.cas")
    assert fresh is not None and fresh.snapshot_count() == 1
    mark = fresh.latest_mark()
    assert mark is not None and mark.run_id == "run-1"


def _commit_days(table: IcebergTable, seq: int, *day_offsets: int, split: bool = True) -> None:
    """One offloader commit of one row on each of `day_offsets` (days after DAY0); a file
    per day if `split`, else one file (spanning those days)."""
    rows = [{"ts": DAY0 + timedelta(days=d, minutes=seq), "id": seq} for d in day_offsets]
    batch = pa.RecordBatch.from_pylist(rows, schema=TIMED)
    written = table.write_files([batch], day_column="ts" if split else None)
    table.commit_files([written], Marker(seq, [seq], f"run-{seq}", len(rows)))


@pytest.fixture
def manifests_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts manifest files read (ManifestFile.fetch_manifest_entry)."""
    reads = [0]
    original = ManifestFile.fetch_manifest_entry

    def counting(self: ManifestFile, *args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ManifestFile, "fetch_manifest_entry", counting)
    return reads


HISTORIES = {
    # manifests merged across days, of one day, outside the window
    "mixed": [(0,), (0, 1), (1,), (2,), (2,), (4,), (0, 4)],
    # four commits of one day merged into one manifest (added and existing rows), then one
    "merged-day": [(0,), (0,), (0,), (0,), (1,)],
}


@pytest.mark.parametrize("history", sorted(HISTORIES))
@pytest.mark.parametrize("transform", ["day", "hour", "identity"])
def test_day_figures_are_what_the_live_files_count(
    tmp_path: Path, transform: str, history: str
) -> None:
    """Figures from the manifest list where it can answer, from the files elsewhere: the
    same counts and unknown days as counting every live file (identity: nothing to
    answer from the list, every manifest read, files spanning days)."""
    by = (PartitionField(transform, "ts"),) if transform != "identity" else ()
    table = _table(tmp_path, transform, TIMED, by)
    for seq, day_offsets in enumerate(HISTORIES[history], start=1):
        _commit_days(table, seq, *day_offsets, split=bool(by))
    live = files.live_files(table, "ts")
    spanning = not by and history == "mixed"
    assert bool(files.day_counts(live, FIRST, FIRST + 4)[1]) == spanning  # unknown days
    for first, last in [(0, 4), (1, 2), (3, 3), (4, 9), (-3, -1), (0, 0)]:
        window = (FIRST + first, FIRST + last)
        assert files.day_figures(table, "ts", *window) == files.day_counts(live, *window), window


def test_the_audit_reads_no_manifest_the_manifest_list_answers_for(
    tmp_path: Path, manifests_read: list[int]
) -> None:
    """A day of 15-minute commits on a day-partitioned table: however many snapshots,
    the manifest list says which day each manifest's rows are on and how many are live,
    so the audit's figures read no manifest."""
    table = _table(tmp_path, "days", TIMED, (PartitionField("day", "ts"),))
    for seq in range(1, 13):
        _commit_days(table, seq, 0)
    manifests_read[0] = 0
    window = (FIRST - 3, FIRST)
    assert files.day_figures(table, "ts", *window) == ({FIRST: 12}, set())
    assert manifests_read[0] == 0, (
        f"the audit of a table of 12 snapshots read {manifests_read[0]} manifests"
    )
    assert files.day_figures(table, "ts", FIRST + 1, FIRST + 4) == ({}, set())
    assert manifests_read[0] == 0
    files.live_files(table, "ts")  # the counter itself counts
    assert manifests_read[0] > 0
