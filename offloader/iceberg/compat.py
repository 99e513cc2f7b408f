"""pyiceberg's private names offloader relies on, in one place, each with what it is for.

Checked against pyiceberg 0.12.0 (pyproject pins >=0.12,<0.13). tests/test_compat_unit.py
fails loudly when an upgrade moves or renames one, or when the installed pyiceberg is a
version these were not checked against: re-check each use below, then widen CHECKED.
"""

from __future__ import annotations

from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import (
    # table.write_files: pyiceberg's own check that a batch matches the table's schema,
    # and its writer of Parquet data files (sized, with stats) without committing them,
    # so offloader commits the files itself with its marker, compare-and-set.
    _check_pyarrow_schema_compatible,
    _dataframe_to_data_files,
    # maintenance.rewrite_group: read old data files projected onto the current schema.
    _to_requested_schema,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import update_table_metadata
from pyiceberg.table.update.snapshot import (
    # maintenance._CompactFiles: an overwrite snapshot that also merges data manifests.
    _ManifestMergeManager,
    _OverwriteFiles,
)

__all__ = [
    "CHECKED",
    "_ManifestMergeManager",
    "_OverwriteFiles",
    "_check_pyarrow_schema_compatible",
    "_dataframe_to_data_files",
    "_to_requested_schema",
    "iceberg_schema",
    "transaction",
]

# The pyiceberg versions (major.minor) the names and overrides here were checked against.
CHECKED = ("0.12",)


class _Transaction(Transaction):
    """pyiceberg's Transaction with its `table_metadata` computed once per state
    (overrides a property; reads the private `_table` and `_updates`).

    Why: pyiceberg 0.12 rebuilds and deep-copies the whole table metadata (every
    snapshot) each time a snapshot producer reads `table_metadata`, about fifteen times
    per append, so a commit's cost grew with the table's snapshot count (0.02 s fresh,
    0.3 s at 400 snapshots here). The result depends only on the base metadata and the
    staged updates, both replaced (never mutated) when they change, so it is cached
    on their identity; the copy is still pyiceberg's own. Snapshot producers only
    read it.
    """

    _cached: tuple[object, object, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        if not updates:
            return base  # nothing staged: read-only use of the loaded metadata
        cached = self._cached
        if cached is None or cached[0] is not base or cached[1] is not updates:
            cached = (base, updates, update_table_metadata(base, updates))
            self._cached = cached
        return cached[2]


def transaction(table: Table) -> Transaction:
    """A transaction on `table` (offloader's commits all go through it)."""
    return _Transaction(table)


def iceberg_schema(schema: object) -> Schema:
    """An Arrow schema as pyiceberg converts it when it creates a table (the private
    `Catalog._convert_schema_if_needed`): catalog.describe and table.evolve compare it
    with the table's."""
    converted: Schema = Catalog._convert_schema_if_needed(schema)
    return converted
