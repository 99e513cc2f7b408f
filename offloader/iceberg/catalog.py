"""The Iceberg catalog: open it (lazily, once per process), create, load and evolve
offloader's tables, check it for `validate`, describe a table's schema."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io import load_file_io
from pyiceberg.schema import Schema
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

from offloader.config import CatalogConfig, MaintenanceConfig, PartitionField
from offloader.errors import SinkError, SourceSchemaError
from offloader.iceberg import brief, sink_errors, table_properties
from offloader.iceberg.compat import iceberg_schema, lighten
from offloader.iceberg.table import NAME_MAPPING, IcebergTable, type_text

log = logging.getLogger(__name__)


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
                        f"cannot open Iceberg catalog {self._cfg.name!r}: {brief(exc)}; "
                        "check [iceberg.catalog] in the config"
                    ) from exc
            return self._catalog

    def _load(self) -> Catalog:
        _make_sqlite_directory(self._cfg.properties.get("uri", ""))
        for attempt in range(3):
            try:
                return lighten(load_catalog(self._cfg.name, **dict(self._cfg.properties)))
            except Exception as exc:
                # Processes starting on a fresh SQL catalog at once race to create its
                # tables; the loser sees "already exists" and succeeds on a second try.
                if "already exists" not in str(exc) or attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def load(self, target: str) -> IcebergTable | None:
        with sink_errors(f"{target}: cannot load Iceberg table"):
            try:
                return IcebergTable(target, self.catalog.load_table(target))
            except NoSuchTableError:
                return None

    def ensure(
        self,
        target: str,
        schema: pa.Schema,
        partition_by: Sequence[PartitionField],
        sort_by: Sequence[str] = (),
    ) -> IcebergTable:
        """Load the table, creating it or adding columns so it can take `schema`; set
        offloader's properties and the sort order `sort_by` (watermark, keys)."""
        with sink_errors(f"{target}: cannot prepare Iceberg table"):
            table = self.load(target)
            if table is None:
                table = self._create(target, schema, partition_by, sort_by)
            table.ensure_properties(self.properties)
            table.ensure_name_mapping()
            table.evolve(schema)
            table.ensure_sort_order(sort_by)
            return table

    def _namespace_exists(self, namespace: str) -> bool:
        try:
            self.catalog.load_namespace_properties(namespace)
        except Exception:
            return False
        return True

    def _create_namespace(self, namespace: str) -> None:
        """Create `namespace` unless it exists (another process may create it at once)."""
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

    def _create(
        self,
        target: str,
        schema: pa.Schema,
        partition_by: Sequence[PartitionField],
        sort_by: Sequence[str] = (),
    ) -> IcebergTable:
        """Create the table with its properties, name mapping, partition spec and sort
        order in one commit (one metadata file)."""
        self._create_namespace(target.rsplit(".", 1)[0])
        _check_partitioning(target, schema, partition_by)
        names = set(schema.names)
        tx = self.catalog.create_table_transaction(
            target, schema=schema, properties=self.properties
        )
        if partition_by:
            with tx.update_spec() as spec:
                for p in partition_by:
                    spec.add_field(p.column, _transform(p), f"{p.column}_{p.transform}")
        mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
        tx.set_properties({NAME_MAPPING: mapping})
        sorted_by = [c for c in sort_by if c in names]
        if sorted_by:
            with tx.update_sort_order() as order:
                for column in sorted_by:
                    order.asc(column, IdentityTransform())
        try:
            created = tx.commit_transaction()
        except (TableAlreadyExistsError, CommitFailedException):  # another worker won the race
            return IcebergTable(target, self.catalog.load_table(target))
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
        with sink_errors(f"catalog {self._cfg.name!r} does not answer"):
            self.catalog.list_namespaces()
        done.append(f"catalog {self._cfg.name!r} reachable")
        try:
            self.catalog.create_namespace(namespace)
            done.append(f"namespace {namespace!r} created")
        except NamespaceAlreadyExistsError:
            done.append(f"namespace {namespace!r} exists")
        except Exception as exc:
            if not self._namespace_exists(namespace):
                raise SinkError(f"cannot create namespace {namespace!r}: {brief(exc)}") from exc
            done.append(f"namespace {namespace!r} exists")
        warehouse = self._cfg.properties.get("warehouse")
        if self._cfg.properties.get("type") == "rest":
            # The catalog places each table (its warehouse may be a name, not a URL): the
            # first table created is the write probe.
            done.append("tables are written where the REST catalog places them")
        elif warehouse:
            probe = f"{warehouse.rstrip('/')}/.offloader-probe-{uuid.uuid4().hex}"
            with sink_errors(f"warehouse {warehouse} is not writable"):
                io = load_file_io(dict(self._cfg.properties), warehouse)
                with io.new_output(probe).create(overwrite=True) as out:
                    out.write(b"offloader write probe\n")
                io.delete(probe)
            done.append(f"warehouse {warehouse} writable (probe written and deleted)")
        return done

    def read(self, target: str, row_filter: str | None = None) -> pa.Table:
        """Read a whole table (tests, verify on small tables)."""
        table = self.load(target)
        if table is None:
            raise SinkError(f"{target}: Iceberg table does not exist")
        return table.read(row_filter)


def _make_sqlite_directory(uri: str) -> None:
    """A SQLite catalog in a directory that does not exist yet: create the directory
    (SQLite creates the file, not its directory, and says only "unable to open
    database file")."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(
            f"the SQLite catalog's directory {path.parent} does not exist and cannot be "
            f"created ({exc.strerror}): create it, or fix [iceberg.catalog] uri"
        ) from exc


def _check_partitioning(
    target: str, schema: pa.Schema, partition_by: Sequence[PartitionField]
) -> None:
    """SourceSchemaError (a config error) unless every `partition_by` column is in
    `schema` and each time transform reads a column stored as a time or date."""
    names = set(schema.names)
    for p in partition_by:
        if p.column not in names:
            raise SourceSchemaError(
                f"{target}: partition_by {p} names column {p.column!r}, which the source "
                "table does not have",
                reason="config",
            )
        field = schema.field(p.column)
        if p.transform in ("year", "month", "day", "hour") and pa.types.is_integer(field.type):
            doc = (field.metadata or {}).get(b"doc", b"").decode()
            raise SourceSchemaError(
                f"{target}: partition_by {p}: column {p.column!r} is stored as a long"
                + (f" ({doc})" if doc else "")
                + f", which Iceberg's {p.transform} transform cannot read (nor can "
                "truncate's 32-bit width hold a day of ticks); partition by another "
                "column or not at all",
                reason="config",
            )


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


def describe(
    schema: pa.Schema,
    partition_by: Sequence[PartitionField],
    sources: Mapping[str, str] | None = None,
) -> str:
    """The Iceberg schema and partitioning a table will get, as text (for `validate`),
    each column with the ClickHouse type it comes from when `sources` names them."""
    converted: Schema = iceberg_schema(schema)
    sources = sources or {}
    lines = [
        f"  {f.name}: "
        + (f"{sources[f.name]} -> " if f.name in sources else "")
        + f"{'required' if f.required else 'optional'} {type_text(f.field_type)}"
        for f in converted.fields
    ]
    parts = ", ".join(str(p) for p in partition_by) or "unpartitioned"
    return "\n".join([*lines, f"  partitioned by: {parts}"])
