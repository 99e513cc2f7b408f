"""A run's Iceberg work does not grow with the table's history: on a table with many
snapshots a commit copies none of them, and the newest offloader marker is found
without walking them. Counts, never time. No server: a SQLite catalog in a temporary
directory."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.table.snapshots import Snapshot

from offloader.config import CatalogConfig
from offloader.iceberg import Marker
from offloader.iceberg.catalog import IcebergCatalog
from offloader.iceberg.table import IcebergTable

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False)])


def _table(tmp_path: Path, name: str) -> IcebergTable:
    cfg = CatalogConfig(
        "unit",
        {
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": f"file://{tmp_path}/warehouse",
        },
    )
    return IcebergCatalog(cfg).ensure(f"cold.{name}", SCHEMA, ())


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
