"""An offloader Iceberg table: write data files, commit them with the offloader marker
(compare-and-set on the commit sequence), read the newest marker, evolve the schema."""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import (
    CommitFailedException,
    ValidationException,
)
from pyiceberg.io.pyarrow import (
    parquet_file_to_data_file,
)
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import (
    IdentityTransform,
)
from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

from offloader import cursor, days
from offloader.errors import InconsistentState, SinkError, SourceSchemaError
from offloader.iceberg import (
    COMMIT_ATTEMPTS,
    PROP_DAYS,
    PROP_ROWS,
    PROP_RUN,
    PROP_SEQ,
    PROP_WATERMARK,
    CommittedMark,
    Marker,
    WrittenFiles,
    brief,
    sink_errors,
)
from offloader.iceberg.compat import (
    _check_pyarrow_schema_compatible,
    _dataframe_to_data_files,
    iceberg_schema,
    transaction,
)
from offloader.iceberg.footer import with_field_ids

log = logging.getLogger(__name__)

NAME_MAPPING = "schema.name-mapping.default"


_IDS = re.compile(r"(?<![\w-])-?\d+: ")


def type_text(field_type: Any) -> str:
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


def day_runs(
    data: pa.Table, day_column: str | None, kind: str = days.MICROS
) -> list[tuple[int, int, int | None]]:
    """[start, end) row ranges of `data` whose `day_column` values (of days.kind_of
    `kind`) fall on one UTC day, with that day (days since 1970), for rows sorted by
    that column; the whole table as one range (day None) when it is None or has no days."""
    if not data.num_rows:
        return []
    column = data[day_column].combine_chunks() if day_column is not None else None
    if column is None or (days.per_day(kind) is None and not pa.types.is_temporal(column.type)):
        return [(0, data.num_rows, None)]
    runs = pc.run_end_encode(days.day_numbers(column, kind))
    out, start = [], 0
    for day, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        out.append((start, end, day))
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

    @property
    def location(self) -> str:
        """The table's base location (file://… or s3://…)."""
        return str(self._table.location())

    @property
    def metadata_location(self) -> str:
        """The metadata file of the table's current state (what the view pins)."""
        return str(self._table.metadata_location)

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
        """The pyiceberg table (for offloader.iceberg.rewrite only)."""
        return self._table

    def evolve(self, schema: pa.Schema) -> None:
        """Add new source columns; fail naming the column on an incompatible type change."""
        current = self._table.schema()
        existing = {f.name for f in current.fields}
        # Iceberg cannot add a required column (older rows have no value): new ones are optional.
        schema = pa.schema([f if f.name in existing else f.with_nullable(True) for f in schema])
        wanted: Schema = iceberg_schema(schema)
        changes = False
        for field in wanted.fields:
            try:
                old = current.find_field(field.name)
            except ValueError:
                changes = True
                continue
            if type_text(old.field_type) == type_text(field.field_type):
                if old.required and not field.required:
                    changes = True
                continue
            if _promotable(old.field_type, field.field_type):
                changes = True
                continue
            raise SourceSchemaError(
                f"{self.target}: column {field.name!r} changed type in ClickHouse from "
                f"{type_text(old.field_type)} to {type_text(field.field_type)}, which Iceberg "
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
            extra={"table": self.target, "schema": type_text(self._table.schema())},
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
                days=summary[PROP_DAYS],
            )
        return None

    def refresh(self) -> None:
        with sink_errors(f"{self.target}: cannot refresh Iceberg table"):
            self._table.refresh()

    def watermark_kind(self, name: str) -> str:
        """The unit of watermark column `name` (days.kind_of_field)."""
        field = self._table.schema().find_field(name)
        return days.kind_of_field(str(field.field_type), field.doc)

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
        with sink_errors(f"{self.target}: writing Iceberg data files failed"):
            _check_pyarrow_schema_compatible(
                metadata.schema(),
                provided_schema=data.schema,
                downcast_ns_timestamp_to_us=False,
                format_version=metadata.format_version,
            )
            kind = self.watermark_kind(day_column) if day_column is not None else days.VALUE
            for start, end, _ in day_runs(data, day_column, kind):
                files += _dataframe_to_data_files(
                    table_metadata=metadata,
                    df=data.slice(start, end - start),
                    io=self._table.io,
                    write_uuid=self._write_uuid,
                    counter=self._file_counter,
                )
        return WrittenFiles(files, data.num_rows, data.nbytes)

    def add_encoded(self, bodies: Sequence[bytes]) -> WrittenFiles:
        """Store Parquet files that ClickHouse encoded in this table's schema (the
        parquet transport) as data files, not yet committed: their data pages byte for
        byte, their footer given each column's Iceberg field id (footer.with_field_ids),
        so readers that map columns by id read them as they read pyiceberg's own; each
        file's entry (rows, sizes, column bounds, partition) comes from its footer.
        Files of a run that dies before committing are orphans, as with write_files."""
        files: list[DataFile] = []
        nbytes = 0
        mapping = list(self._table.schema().name_mapping)
        with sink_errors(f"{self.target}: adding Parquet data files failed"):
            locations = self._table.location_provider()
            for page in bodies:
                keep, tail = with_field_ids(page, mapping, f"{self.target}: a Parquet page")
                name = f"{next(self._file_counter):05d}-ch-{self._write_uuid}.parquet"
                path = locations.new_data_location(name)
                with self._table.io.new_output(path).create(overwrite=False) as out:
                    # A buffer, not a slice of bytes: the page is not copied (pyarrow's
                    # stream takes any buffer; pyiceberg types it as bytes).
                    out.write(memoryview(page)[:keep])  # type: ignore[arg-type]
                    out.write(tail)
                files.append(parquet_file_to_data_file(self._table.io, self._table.metadata, path))
                nbytes += keep + len(tail)
        return WrittenFiles(files, sum(f.record_count for f in files), nbytes)

    def ensure_name_mapping(self) -> None:
        """Give the table a default name mapping (schema.name-mapping.default) unless it
        has one, so readers can read data files without field ids (the parquet
        transport's); pyiceberg keeps it current as the schema evolves."""
        if NAME_MAPPING not in self._table.metadata.properties:
            mapping = self._table.schema().name_mapping.model_dump_json()
            with transaction(self._table) as tx:
                tx.set_properties({NAME_MAPPING: mapping})

    def commit_files(self, written: Sequence[WrittenFiles], marker: Marker) -> CommittedMark:
        """Append the written files as one snapshot recording `marker` (seq = the
        committed seq + 1), compare-and-set (commit_snapshot)."""

        def build(tx: Transaction, props: dict[str, str]) -> None:
            snapshot = tx.update_snapshot(snapshot_properties=props)
            # merge_append: merges manifests past commit.manifest.min-count-to-merge
            with snapshot.merge_append() as append:
                for w in written:
                    for data_file in w.files:
                        append.append_data_file(data_file)

        self.commit_snapshot(build, marker, what="run")
        mark = self.latest_mark()
        assert mark is not None and mark.seq == marker.seq
        return mark

    def commit_snapshot(
        self,
        build: Callable[[Transaction, dict[str, str]], None],
        marker: Marker | None,
        *,
        what: str,
        extra: dict[str, str] | None = None,
        discard: Callable[[], None] = lambda: None,
    ) -> int:
        """The one exactly-once commit behind appends, repairs and compactions: build a
        snapshot in a transaction (`build(tx, summary properties)`) and commit it; returns
        its id.

        Compare-and-set: the snapshot asserts the parent it was built on, and the newest
        offloader marker is checked before each attempt. A `marker` is a new offloader
        commit (seq = the committed seq + 1): if another commit came first it is refused
        (InconsistentState), and a retry after a lost response finds its own run id and
        stops. Without one (a compaction, which changes no row) the newest marker is
        carried forward. A conflict refreshes the table and tries again, backing off
        with jitter so that two writers do not keep colliding in step. `discard` removes
        what the attempt wrote when it gives up (nothing of a failed rewrite stays).
        """
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            mark = self.latest_mark()
            if (
                marker is not None
                and mark is not None
                and (mark.seq, mark.run_id) == (marker.seq, marker.run_id)
            ):
                return mark.snapshot_id  # our previous attempt did commit
            props = self._summary(mark, marker, what, discard)
            props |= extra or {}
            try:
                with transaction(self._table) as tx:
                    build(tx, props)
            except CommitFailedException as exc:
                self._back_off(what, attempt, exc)
                continue
            except ValidationException as exc:  # a file to replace is gone
                discard()
                raise InconsistentState(
                    f"{self.target}: files to rewrite were changed by another writer meanwhile "
                    f"({brief(exc)}); nothing was committed, run it again"
                ) from exc
            except Exception as exc:
                raise SinkError(
                    f"{self.target}: Iceberg {what} commit failed: {brief(exc)}"
                ) from exc
            snap = self._table.current_snapshot()
            assert snap is not None
            return snap.snapshot_id
        discard()
        raise SinkError(
            f"{self.target}: Iceberg {what} commit still conflicting after {COMMIT_ATTEMPTS} "
            f"attempts: another writer commits to this table all the time; nothing of this "
            f"{what} was committed (the next cycle retries)",
            reason="iceberg",
        )

    def _summary(
        self,
        mark: CommittedMark | None,
        marker: Marker | None,
        what: str,
        discard: Callable[[], None],
    ) -> dict[str, str]:
        """The summary properties of an attempt at commit_snapshot on top of the newest
        marker `mark`: `marker`'s if it is the commit after it (else InconsistentState,
        having called `discard`), or without one the newest marker carried forward."""
        if marker is None:
            carried = Marker.carried(mark) if mark is not None else None
            return carried.properties() if carried is not None else {}
        current = mark.seq if mark else 0
        if current != marker.seq - 1:
            discard()
            then = "the next cycle continues from" if what == "run" else "run it again at"
            raise InconsistentState(
                f"{self.target}: Iceberg holds offloader commit {current}, this {what} "
                f"expected {marker.seq - 1}; another worker committed meanwhile. "
                f"Nothing of this {what} was committed; {then} the new watermark."
            )
        return marker.properties()

    def _back_off(self, what: str, attempt: int, exc: Exception) -> None:
        """After a conflicting commit attempt: wait, with jitter so that two writers do
        not keep colliding in step, and refresh the table."""
        log.warning(
            f"Iceberg commit conflict ({what}), refreshing",
            extra={"table": self.target, "attempt": attempt, "error": brief(exc)},
        )
        time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
        self.refresh()

    def read(self, row_filter: str | None = None) -> pa.Table:
        scan = self._table.scan(row_filter=row_filter) if row_filter else self._table.scan()
        return scan.to_arrow()

    def read_batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the table's rows batch by batch (bounded memory)."""
        yield from self._table.scan().to_arrow_batch_reader()
