"""The sink: Apache Iceberg through pyiceberg. The only module importing pyiceberg.

Every call here blocks (catalog SQL, Parquet writes), so the pipeline runs them
in worker threads. Each append carries the offloader watermark, a commit
sequence number and the run id in its snapshot summary: the Iceberg commit and
the watermark it reaches are one atomic fact, which is what lets PostgreSQL be
repaired from Iceberg after a crash.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io import load_file_io
from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import update_table_metadata
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    VoidTransform,
    YearTransform,
)
from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

from offloader import cursor
from offloader.config import CatalogConfig, MaintenanceConfig, PartitionField
from offloader.errors import InconsistentState, SinkError, SourceSchemaError

log = logging.getLogger(__name__)

PROP_WATERMARK = "offloader.watermark"
PROP_SEQ = "offloader.seq"
PROP_RUN = "offloader.run_id"
PROP_ROWS = "offloader.rows"
PROP_OPERATION = "offloader.operation"  # absent on appends; "compact" or "repair"
COMMIT_ATTEMPTS = 5


def table_properties(maintenance: MaintenanceConfig) -> dict[str, str]:
    """The Iceberg table properties offloader sets on its tables (created or found)."""
    return {
        # pyiceberg retries a conflicting append by rebasing it onto the new snapshot. That
        # would defeat our compare-and-set and let two workers append the same rows, so
        # offloader's tables turn it off and retry themselves after re-checking the seq.
        "commit.retry.num-retries": "0",
        # Appends merge the current snapshot's manifests once there are this many, so a
        # table's manifest count stays small however many cycles ran.
        "commit.manifest-merge.enabled": "true",
        "commit.manifest.min-count-to-merge": "4",
        # Old metadata files are deleted on commit, keeping this many.
        "write.metadata.delete-after-commit.enabled": "true",
        "write.metadata.previous-versions-max": str(maintenance.metadata_versions),
        # Compaction's target; other engines' rewrite jobs read the same property.
        "write.target-file-size-bytes": str(maintenance.target_file_size),
    }


@dataclass(frozen=True, slots=True)
class WrittenFiles:
    """Parquet data files written for a table but not committed yet."""

    files: list[DataFile]
    rows: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class CommittedMark:
    """What the newest offloader snapshot of a table says it reached."""

    seq: int
    position: tuple[Any, ...]
    run_id: str
    snapshot_id: int
    committed_at: datetime
    rows: int


class _Transaction(Transaction):
    """pyiceberg's Transaction with its `table_metadata` computed once per state.

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
    return _Transaction(table)


class IcebergCatalog:
    """A lazily loaded pyiceberg catalog shared by all table runs of a process."""

    def __init__(self, cfg: CatalogConfig, maintenance: MaintenanceConfig | None = None) -> None:
        self._cfg = cfg
        self.properties = table_properties(maintenance or MaintenanceConfig())
        self._catalog: Catalog | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<IcebergCatalog {self._cfg.name} type={self._cfg.properties.get('type', '?')}>"

    @property
    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                try:
                    self._catalog = self._load()
                except Exception as exc:
                    raise SinkError(
                        f"cannot open Iceberg catalog {self._cfg.name!r}: {_brief(exc)}; "
                        "check [iceberg.catalog] in the config"
                    ) from exc
            return self._catalog

    def _load(self) -> Catalog:
        for attempt in range(3):
            try:
                return load_catalog(self._cfg.name, **dict(self._cfg.properties))
            except Exception as exc:
                # Processes starting on a fresh SQL catalog at once race to create its
                # tables; the loser sees "already exists" and succeeds on a second try.
                if "already exists" not in str(exc) or attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def load(self, target: str) -> IcebergTable | None:
        try:
            return IcebergTable(target, self.catalog.load_table(target))
        except NoSuchTableError:
            return None
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"{target}: cannot load Iceberg table: {_brief(exc)}") from exc

    def ensure(
        self,
        target: str,
        schema: pa.Schema,
        partition_by: Sequence[PartitionField],
        sort_by: Sequence[str] = (),
    ) -> IcebergTable:
        """Load the table, creating it or adding columns so it can take `schema`; set
        offloader's properties and the sort order `sort_by` (watermark, keys)."""
        try:
            table = self.load(target)
            if table is None:
                table = self._create(target, schema, partition_by)
            table.ensure_properties(self.properties)
            table.evolve(schema)
            table.ensure_sort_order(sort_by)
            return table
        except (SinkError, SourceSchemaError):
            raise
        except Exception as exc:
            raise SinkError(f"{target}: cannot prepare Iceberg table: {_brief(exc)}") from exc

    def _namespace_exists(self, namespace: str) -> bool:
        try:
            self.catalog.load_namespace_properties(namespace)
        except Exception:
            return False
        return True

    def _create(
        self, target: str, schema: pa.Schema, partition_by: Sequence[PartitionField]
    ) -> IcebergTable:
        namespace = target.rsplit(".", 1)[0]
        with self._lock:  # tables of one cycle create their shared namespace at once
            try:
                self.catalog.create_namespace(namespace)
            except NamespaceAlreadyExistsError:
                pass
            except Exception:
                # Another process won the race; some catalogs report it as a constraint
                # violation rather than NamespaceAlreadyExistsError.
                if not self._namespace_exists(namespace):
                    raise
        names = set(schema.names)
        for p in partition_by:
            if p.column not in names:
                raise SourceSchemaError(
                    f"{target}: partition_by {p} names column {p.column!r}, which the source "
                    "table does not have",
                    reason="config",
                )
        try:
            created = self.catalog.create_table(target, schema=schema, properties=self.properties)
        except TableAlreadyExistsError:  # another worker won the race
            return IcebergTable(target, self.catalog.load_table(target))
        if partition_by:
            with created.update_spec() as spec:
                for p in partition_by:
                    spec.add_field(p.column, _transform(p), f"{p.column}_{p.transform}")
        log.info(
            "created Iceberg table",
            extra={"table": target, "partition_by": [str(p) for p in partition_by]},
        )
        return IcebergTable(target, created)

    def probe(self, namespace: str) -> list[str]:
        """`validate`'s checks: the catalog answers, the namespace exists or can be
        created, and the warehouse takes a write and a delete. Returns what was checked;
        raises SinkError naming the failing step."""
        done = []
        try:
            self.catalog.list_namespaces()
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"catalog {self._cfg.name!r} does not answer: {_brief(exc)}") from exc
        done.append(f"catalog {self._cfg.name!r} reachable")
        try:
            self.catalog.create_namespace(namespace)
            done.append(f"namespace {namespace!r} created")
        except NamespaceAlreadyExistsError:
            done.append(f"namespace {namespace!r} exists")
        except Exception as exc:
            if not self._namespace_exists(namespace):
                raise SinkError(f"cannot create namespace {namespace!r}: {_brief(exc)}") from exc
            done.append(f"namespace {namespace!r} exists")
        warehouse = self._cfg.properties.get("warehouse")
        if warehouse:
            probe = f"{warehouse.rstrip('/')}/.offloader-probe-{uuid.uuid4().hex}"
            try:
                io = load_file_io(dict(self._cfg.properties), warehouse)
                with io.new_output(probe).create(overwrite=True) as out:
                    out.write(b"offloader write probe\n")
                io.delete(probe)
            except Exception as exc:
                raise SinkError(f"warehouse {warehouse} is not writable: {_brief(exc)}") from exc
            done.append(f"warehouse {warehouse} writable (probe written and deleted)")
        return done

    def read(self, target: str, row_filter: str | None = None) -> pa.Table:
        """Read a whole table (tests, verify on small tables)."""
        table = self.load(target)
        if table is None:
            raise SinkError(f"{target}: Iceberg table does not exist")
        return table.read(row_filter)


def _transform(p: PartitionField) -> Transform[Any, Any]:
    simple: dict[str, Transform[Any, Any]] = {
        "identity": IdentityTransform(),
        "year": YearTransform(),
        "month": MonthTransform(),
        "day": DayTransform(),
        "hour": HourTransform(),
        "void": VoidTransform(),
    }
    if p.transform in simple:
        return simple[p.transform]
    assert p.param is not None
    if p.transform == "bucket":
        return BucketTransform(p.param)
    return TruncateTransform(p.param)


_IDS = re.compile(r"(?<![\w-])-?\d+: ")


def _type_text(field_type: Any) -> str:
    return _IDS.sub("", str(field_type))


def _promotable(old: Any, new: Any) -> bool:
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    return (
        isinstance(old, DecimalType)
        and isinstance(new, DecimalType)
        and old.scale == new.scale
        and new.precision >= old.precision
    )


def day_runs(data: pa.Table, day_column: str | None) -> list[tuple[int, int]]:
    """[start, end) row ranges of `data` whose `day_column` values fall on one UTC day,
    for rows sorted by that column (or the whole table when it is None or not a time
    or date column)."""
    if not data.num_rows:
        return []
    if day_column is None:
        return [(0, data.num_rows)]
    column = data[day_column].combine_chunks()
    if not (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        return [(0, data.num_rows)]
    days = pc.cast(column, pa.date32())
    runs = pc.run_end_encode(days)
    out, start = [], 0
    for end in runs.run_ends.to_pylist():
        out.append((start, end))
        start = end
    return out


class IcebergTable:
    def __init__(self, target: str, table: Table) -> None:
        self.target = target
        self._table = table
        self._write_uuid = uuid.uuid4()
        self._file_counter = itertools.count(0)

    def __repr__(self) -> str:
        return f"<IcebergTable {self.target} snapshot={self.snapshot_id}>"

    @property
    def snapshot_id(self) -> int | None:
        snap = self._table.current_snapshot()
        return snap.snapshot_id if snap else None

    def snapshot_count(self) -> int:
        return len(self._table.metadata.snapshots)

    def initial_columns(self) -> set[str]:
        """Top-level column names of the table's first schema (before any evolution)."""
        schemas = self._table.schemas()
        return {f.name for f in schemas[min(schemas)].fields}

    def ensure_properties(self, wanted: dict[str, str]) -> None:
        current = self._table.metadata.properties
        missing = {k: v for k, v in wanted.items() if current.get(k) != v}
        if missing:
            with transaction(self._table) as tx:
                tx.set_properties(missing)

    def ensure_sort_order(self, columns: Sequence[str]) -> bool:
        """Declare the table sorted by `columns` (ascending) unless it already is.
        Returns whether the sort order was changed."""
        names = [f.name for f in self._table.schema().fields]
        columns = [c for c in columns if c in names]
        current = self._table.sort_order()
        schema = self._table.schema()
        have = [schema.find_column_name(f.source_id) for f in current.fields]
        if not columns or have == list(columns):
            return False
        with self._table.update_sort_order() as update:
            for column in columns:
                update.asc(column, IdentityTransform())
        return True

    @property
    def table(self) -> Table:
        """The pyiceberg table (for offloader.iceberg.maintenance only)."""
        return self._table

    def evolve(self, schema: pa.Schema) -> None:
        """Add new source columns; fail naming the column on an incompatible type change."""
        current = self._table.schema()
        existing = {f.name for f in current.fields}
        # Iceberg cannot add a required column (older rows have no value): new ones are optional.
        schema = pa.schema([f if f.name in existing else f.with_nullable(True) for f in schema])
        wanted: Schema = Catalog._convert_schema_if_needed(schema)
        changes = False
        for field in wanted.fields:
            try:
                old = current.find_field(field.name)
            except ValueError:
                changes = True
                continue
            if _type_text(old.field_type) == _type_text(field.field_type):
                if old.required and not field.required:
                    changes = True
                continue
            if _promotable(old.field_type, field.field_type):
                changes = True
                continue
            raise SourceSchemaError(
                f"{self.target}: column {field.name!r} changed type in ClickHouse from "
                f"{_type_text(old.field_type)} to {_type_text(field.field_type)}, which Iceberg "
                "cannot evolve to; offload into a new target table or cast it back in a view",
                reason="schema_change",
            )
        dropped = [f.name for f in current.fields if f.required and f.name not in schema.names]
        if not changes and not dropped:
            return
        with self._table.update_schema() as update:
            update.union_by_name(wanted)
            for name in dropped:
                update.make_column_optional(name)
        log.info(
            "evolved Iceberg schema",
            extra={"table": self.target, "schema": _type_text(self._table.schema())},
        )

    def _snapshots_newest_first(self) -> Iterator[Snapshot]:
        snap = self._table.current_snapshot()
        while snap is not None:
            yield snap
            parent = snap.parent_snapshot_id
            snap = self._table.snapshot_by_id(parent) if parent is not None else None

    def latest_mark(self) -> CommittedMark | None:
        """The newest offloader commit on the main branch, or None if there is none."""
        for snap in self._snapshots_newest_first():
            summary = snap.summary
            if summary is None or summary[PROP_SEQ] is None:
                continue
            return CommittedMark(
                seq=int(str(summary[PROP_SEQ])),
                position=cursor.loads(summary[PROP_WATERMARK] or "[]") or (),
                run_id=str(summary[PROP_RUN]),
                snapshot_id=snap.snapshot_id,
                committed_at=datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC),
                rows=int(summary[PROP_ROWS] or 0),
            )
        return None

    def refresh(self) -> None:
        try:
            self._table.refresh()
        except Exception as exc:
            raise SinkError(f"{self.target}: cannot refresh Iceberg table: {_brief(exc)}") from exc

    def write_files(
        self, batches: Sequence[pa.RecordBatch], day_column: str | None = None
    ) -> WrittenFiles:
        """Write `batches` as Parquet data files of this table, not yet committed.

        The two-stage write pyiceberg's own docs recommend for retryable commits: the
        files can be committed again after a conflict. Files of a run that dies
        before committing are orphans, removed by maintenance's orphan cleanup.
        With `day_column` (the watermark, rows in its order) no file spans two UTC
        days, so the late-rows audit can count each day from the manifests alone.
        """
        data = pa.Table.from_batches(list(batches))
        metadata = self._table.metadata
        files: list[DataFile] = []
        try:
            _check_pyarrow_schema_compatible(
                metadata.schema(),
                provided_schema=data.schema,
                downcast_ns_timestamp_to_us=False,
                format_version=metadata.format_version,
            )
            for start, end in day_runs(data, day_column):
                files += _dataframe_to_data_files(
                    table_metadata=metadata,
                    df=data.slice(start, end - start),
                    io=self._table.io,
                    write_uuid=self._write_uuid,
                    counter=self._file_counter,
                )
        except Exception as exc:
            raise SinkError(
                f"{self.target}: writing Iceberg data files failed: {_brief(exc)}"
            ) from exc
        return WrittenFiles(files, data.num_rows, data.nbytes)

    def commit_files(
        self,
        written: Sequence[WrittenFiles],
        *,
        expected_seq: int,
        position: Sequence[Any],
        run_id: str,
    ) -> CommittedMark:
        """Commit written files as one snapshot that records seq = expected_seq + 1.

        Compare-and-set: the snapshot asserts the parent it was built on, and the
        newest offloader seq is checked first, so a concurrent offloader commit makes
        ours fail and the retry gives up instead of duplicating. A retry after a lost
        response finds its own run id and stops.
        """
        seq = expected_seq + 1
        props = {
            PROP_WATERMARK: cursor.dumps(position),
            PROP_SEQ: str(seq),
            PROP_RUN: run_id,
            PROP_ROWS: str(sum(w.rows for w in written)),
        }
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            mark = self.latest_mark()
            current = mark.seq if mark else 0
            if mark is not None and mark.seq == seq and mark.run_id == run_id:
                return mark  # our previous attempt did commit
            if current != expected_seq:
                raise InconsistentState(
                    f"{self.target}: Iceberg holds offloader commit {current}, this run expected "
                    f"{expected_seq}; another worker committed meanwhile. This run's rows were not "
                    "committed; the next cycle continues from the new watermark."
                )
            try:
                with transaction(self._table) as tx:
                    snapshot = tx.update_snapshot(snapshot_properties=props)
                    # merge_append: merges manifests past commit.manifest.min-count-to-merge
                    with snapshot.merge_append() as append:
                        for w in written:
                            for data_file in w.files:
                                append.append_data_file(data_file)
            except CommitFailedException as exc:
                log.warning(
                    "Iceberg commit conflict, refreshing",
                    extra={"table": self.target, "attempt": attempt, "error": _brief(exc)},
                )
                self.refresh()
                continue
            except Exception as exc:
                raise SinkError(f"{self.target}: Iceberg commit failed: {_brief(exc)}") from exc
            new = self.latest_mark()
            assert new is not None and new.seq == seq
            return new
        raise SinkError(
            f"{self.target}: Iceberg commit still conflicting after {COMMIT_ATTEMPTS} attempts"
        )

    def read(self, row_filter: str | None = None) -> pa.Table:
        scan = self._table.scan(row_filter=row_filter) if row_filter else self._table.scan()
        return scan.to_arrow()

    def read_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the table's rows batch by batch (bounded memory)."""
        yield from self._table.scan().to_arrow_batch_reader()


_HINTS = (
    (
        "NO_SUCH_BUCKET",
        "the warehouse bucket does not exist: create it, or fix [iceberg.catalog] warehouse",
    ),
    (
        "ACCESS_DENIED",
        "access denied by the object store: check s3.access-key-id, "
        "s3.secret-access-key and the bucket policy",
    ),
    ("INVALID_ACCESS_KEY_ID", "the object store does not know this key: check s3.access-key-id"),
    ("SIGNATURE_DOES_NOT_MATCH", "wrong secret: check s3.secret-access-key"),
    ("No space left on device", "the warehouse disk is full"),
    ("Read-only file system", "the warehouse is read-only"),
    ("Permission denied", "no permission to write the warehouse"),
    ("Could not connect", "cannot reach the object store: check s3.endpoint"),
    ("Connection refused", "connection refused: is the catalog or object store running?"),
)


def _brief(exc: BaseException) -> str:
    """One line for a pyiceberg/pyarrow/SQLAlchemy error, with what to do where known."""
    full = str(exc)
    text = full.strip().splitlines()
    first = text[0] if text else ""
    hint = next((h for marker, h in _HINTS if marker.lower() in full.lower()), None)
    brief = f"{type(exc).__name__}: {first[:300]}"
    return f"{hint} ({brief})" if hint else brief


def describe(schema: pa.Schema, partition_by: Sequence[PartitionField]) -> str:
    """The Iceberg schema and partitioning a table will get, as text (for `validate`)."""
    iceberg_schema: Schema = Catalog._convert_schema_if_needed(schema)
    lines = [
        f"  {f.name}: {'required' if f.required else 'optional'} {_type_text(f.field_type)}"
        for f in iceberg_schema.fields
    ]
    parts = ", ".join(str(p) for p in partition_by) or "unpartitioned"
    return "\n".join([*lines, f"  partitioned by: {parts}"])
