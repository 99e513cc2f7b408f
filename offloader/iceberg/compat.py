"""pyiceberg's private names offloader relies on, in one place, each with what it is for.

Checked against pyiceberg 0.12.0 (pyproject pins >=0.12,<0.13). tests/test_compat_unit.py
fails loudly when an upgrade moves or renames one, or when the installed pyiceberg is a
version these were not checked against: re-check each use below, then widen CHECKED.
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime
from types import MethodType
from typing import Any

from pyiceberg.catalog import Catalog, MetastoreCatalog
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
from pyiceberg.table import StagedTable, Table, Transaction
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import (
    AssertCreate,
    # updated_metadata: pyiceberg's update_table_metadata, step by step, without its copy.
    TableRequirement,
    TableUpdate,
    _apply_table_update,
    _TableMetadataUpdateContext,
    _update_table_metadata_log,
)
from pyiceberg.table.update.snapshot import (
    # maintenance._CompactFiles: an overwrite snapshot that also merges data manifests.
    _ManifestMergeManager,
    _OverwriteFiles,
)
from pyiceberg.typedef import Identifier
from pyiceberg.utils.datetime import datetime_to_millis

__all__ = [
    "CHECKED",
    "_ManifestMergeManager",
    "_OverwriteFiles",
    "_check_pyarrow_schema_compatible",
    "_dataframe_to_data_files",
    "_to_requested_schema",
    "iceberg_schema",
    "lighten",
    "transaction",
    "updated_metadata",
]

# The pyiceberg versions (major.minor) the names and overrides here were checked against.
CHECKED = ("0.12",)


def updated_metadata(
    base: TableMetadata, updates: tuple[TableUpdate, ...], metadata_location: str | None = None
) -> TableMetadata:
    """`base` with `updates` applied: pyiceberg 0.12's `update_table_metadata` (the
    private steps it is made of, in its order, with its checks) less its last step, a
    deep copy of the result.

    Why: that copy walks every snapshot, snapshot-log and metadata-log entry of the
    table, so each commit cost time in proportion to the table's history (two copies
    per append: 8 ms each at 300 snapshots, more than the rest of the commit's metadata
    work). It protects nothing here: TableMetadata and its members are frozen pydantic
    models, and every update step builds new lists and dicts rather than changing the
    base's (the result shares the unchanged ones with `base`, as pyiceberg's own
    `model_copy(update=...)` steps do)."""
    context = _TableMetadataUpdateContext()
    new = base
    for update in updates:
        new = _apply_table_update(update, new, context)
    if context.has_changes():
        if metadata_location:
            new = _update_table_metadata_log(new, metadata_location, base.last_updated_ms)
        if base.last_updated_ms == new.last_updated_ms:
            now = datetime_to_millis(datetime.now().astimezone())
            new = new.model_copy(update={"last_updated_ms": now})
    new.spec().check_compatible(new.schema())
    new.sort_order().check_compatible(new.schema())
    return new


def _update_and_stage_table(
    self: MetastoreCatalog,
    current_table: Table | None,
    table_identifier: Identifier,
    requirements: tuple[TableRequirement, ...],
    updates: tuple[TableUpdate, ...],
) -> StagedTable:
    """MetastoreCatalog._update_and_stage_table (the SQL and other metastore catalogs'
    commit: the new metadata and its file name), with updated_metadata in place of
    pyiceberg's deep-copying update_table_metadata. Creating a table (no current one)
    stays pyiceberg's own, validation included."""
    if current_table is None:
        return MetastoreCatalog._update_and_stage_table(
            self, current_table, table_identifier, requirements, updates
        )
    for requirement in requirements:
        requirement.validate(current_table.metadata)
    metadata = updated_metadata(current_table.metadata, updates, current_table.metadata_location)
    version = self._parse_metadata_version(current_table.metadata_location) + 1
    provider = load_location_provider(metadata.location, metadata.properties)
    location = provider.new_table_metadata_file_location(version)
    return StagedTable(
        identifier=table_identifier,
        metadata=metadata,
        metadata_location=location,
        io=self._load_file_io(properties=metadata.properties, location=location),
        catalog=self,
    )


# The table whose commit this thread is making through _commit_table (SQL catalogs).
_committing = threading.local()


def _commit_table(
    self: Catalog,
    table: Table,
    requirements: tuple[TableRequirement, ...],
    updates: tuple[TableUpdate, ...],
) -> Any:
    """SqlCatalog.commit_table building on the committing `table`'s own metadata where
    pyiceberg loads the table again (the private detail relied on: it calls
    `self.load_table` once for the current state, answered by _load_table).

    Why: that load parses the whole metadata file (every snapshot) on each commit, after
    the run has loaded it already. Nothing is lost by building on the run's copy: the
    catalog row is still updated only where it names `table.metadata_location` (the
    compare-and-set), so if another writer committed since the run loaded the table the
    commit fails with CommitFailedException as before, and offloader refreshes and
    checks its marker again (IcebergTable.commit_snapshot). A table being created (its
    AssertCreate requirement: no current state) is committed as pyiceberg does."""
    if any(isinstance(requirement, AssertCreate) for requirement in requirements):
        return type(self).commit_table(self, table, requirements, updates)
    _committing.table = table
    try:
        return type(self).commit_table(self, table, requirements, updates)
    finally:
        _committing.table = None


def _load_table(self: Catalog, identifier: str | Identifier) -> Table:
    """The table being committed through _commit_table in this thread, else the
    catalog's own load_table."""
    table: Table | None = getattr(_committing, "table", None)
    if table is not None and identifier == table.name():
        return table
    return type(self).load_table(self, identifier)


def lighten(catalog: Catalog) -> Catalog:
    """`catalog` committing without copying the table's whole metadata
    (_update_and_stage_table) and, for a SQL catalog, without parsing its metadata file
    again (_commit_table), overriding those methods of this one instance. REST catalogs
    build the new metadata on the server: nothing to change there."""
    if isinstance(catalog, MetastoreCatalog):
        catalog._update_and_stage_table = MethodType(  # type: ignore[method-assign]
            _update_and_stage_table, catalog
        )
    sql = sys.modules.get("pyiceberg.catalog.sql")  # imported if the catalog is one
    if sql is not None and isinstance(catalog, sql.SqlCatalog):
        catalog.commit_table = MethodType(_commit_table, catalog)
        catalog.load_table = MethodType(_load_table, catalog)
    return catalog


class _Transaction(Transaction):
    """pyiceberg's Transaction with its `table_metadata` computed once per state
    (overrides a property; reads the private `_table` and `_updates`), by
    updated_metadata (no copy of the whole metadata).

    Why: pyiceberg 0.12 rebuilds and deep-copies the whole table metadata (every
    snapshot) each time a snapshot producer reads `table_metadata`, about fifteen times
    per append, so a commit's cost grew with the table's snapshot count (0.02 s fresh,
    0.3 s at 400 snapshots here). The result depends only on the base metadata and the
    staged updates, both replaced (never mutated) when they change, so it is cached
    on their identity. Snapshot producers only read it.
    """

    _cached: tuple[object, object, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        if not updates:
            return base  # nothing staged: read-only use of the loaded metadata
        cached = self._cached
        if cached is None or cached[0] is not base or cached[1] is not updates:
            cached = (base, updates, updated_metadata(base, updates))
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
