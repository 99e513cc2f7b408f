"""Rewriting an Iceberg table's files: compaction (read, merge sorted, write, replace
in one snapshot) and the file replacement a repair commits, both carrying the
offloader commit marker forward. Part of the `offloader.iceberg` package, the only
importer of pyiceberg. The read side and housekeeping (live files, shape, expiry,
orphans) are in files.py.

Every call blocks; `offloader.ops.maintenance` runs them in worker threads and decides
what to do (`compaction.compaction_groups`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import (
    ArrowScan,
    parquet_file_to_data_file,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent, ManifestFile
from pyiceberg.schema import sanitize_column_names
from pyiceberg.table import FileScanTask, Transaction
from pyiceberg.table.snapshots import Operation

from offloader.days import DAYS, MICROS, day_numbers, per_day
from offloader.errors import SinkError
from offloader.iceberg import (
    PROP_OPERATION,
    Marker,
)
from offloader.iceberg.compaction import RewriteGroup
from offloader.iceberg.compat import (
    _ManifestMergeManager,
    _OverwriteFiles,
    _to_requested_schema,
)
from offloader.iceberg.files import LiveFiles
from offloader.iceberg.footer import with_field_ids
from offloader.iceberg.table import IcebergTable, day_runs

__all__ = [
    "give_field_ids",
    "replace_files",
    "rewrite_group",
    "rows_outside_days",
    "without_field_ids",
]

log = logging.getLogger(__name__)

PROP_MAINTENANCE_RUN = "offloader.maintenance_run"


class _RollingWriter:
    """Writes sorted Arrow tables into Parquet data files of at most `rows_per_file`
    rows each, in one partition's directory, and returns their Iceberg entries."""

    def __init__(
        self,
        ice: IcebergTable,
        template: DataFile,
        rows_per_file: int,
        day_column: str | None = None,
        kind: str = MICROS,
    ) -> None:
        table = ice.table
        self._day_column = day_column
        self._kind = kind
        self._day: Any = None
        self._table = table
        self._template = template
        self._rows_per_file = rows_per_file
        self._directory = template.file_path.rsplit("/", 1)[0]
        self._prefix = f"{uuid.uuid4()}-compact"
        self._counter = itertools.count()
        schema = table.schema()
        sanitized = sanitize_column_names(schema)
        self._file_schema = sanitized if sanitized != schema else schema
        self._name_mapping = schema.name_mapping
        self._format = FileFormatFactory.get(FileFormat.PARQUET)
        self._sort_order_id = table.sort_order().order_id
        self._writer: Any = None
        self._path = ""
        self._rows_in_file = 0
        self.done: list[DataFile] = []
        self.paths: list[str] = []

    def write(self, data: pa.Table) -> None:
        """Write sorted rows; with a day column, a file never spans two UTC days (so
        the audit can count a day from the manifests)."""
        if self._day_column is None:
            self._write_rows(data)
            return
        for start, end, day in day_runs(data, self._day_column, self._kind):
            if day != self._day:
                self._close()
                self._day = day
            self._write_rows(data.slice(start, end - start))

    def _write_rows(self, data: pa.Table) -> None:
        at = 0
        while at < data.num_rows:
            if self._writer is None:
                self._open()
            take = min(self._rows_per_file - self._rows_in_file, data.num_rows - at)
            self._write(data.slice(at, take))
            at += take
            self._rows_in_file += take
            if self._rows_in_file >= self._rows_per_file:
                self._close()

    def _open(self) -> None:
        self._path = f"{self._directory}/{self._prefix}-{next(self._counter):05d}.parquet"
        self.paths.append(self._path)
        self._output = self._table.io.new_output(self._path)
        self._writer = self._format.create_writer(
            self._output, self._file_schema, self._table.metadata.properties
        )
        self._rows_in_file = 0

    def _write(self, data: pa.Table) -> None:
        task_schema = pyarrow_to_schema(data.schema, name_mapping=self._name_mapping)
        batches = [
            _to_requested_schema(
                requested_schema=self._file_schema,
                file_schema=task_schema,
                batch=batch,
                include_field_ids=True,
                format_model=self._format,
            )
            for batch in data.to_batches()
        ]
        self._writer.write(pa.Table.from_batches(batches))

    def _close(self) -> None:
        if self._writer is None:
            return
        stats = self._writer.close()
        self._writer = None
        self.done.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=self._path,
                file_format=FileFormat.PARQUET,
                partition=self._template.partition,
                file_size_in_bytes=len(self._output),
                sort_order_id=self._sort_order_id,
                spec_id=self._template.spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )
        )

    def close(self) -> list[DataFile]:
        self._close()
        return self.done


def rewrite_group(
    ice: IcebergTable,
    live: LiveFiles,
    group: RewriteGroup,
    sort_by: Sequence[str],
    target_bytes: int,
) -> list[DataFile]:
    """Merge one group's files into new data files sorted by `sort_by`, not committed.

    Memory stays bounded by about one input file: inputs are read in the order of their
    watermark lower bounds, and after each, the buffered rows below the next input's
    lower bound can no longer be preceded by anything unread, so they are sorted and
    written. Files appended by offloader do not overlap, so the buffer rarely holds
    more than the file just read. The row count is checked against the manifests.
    """
    wm = sort_by[0]
    order = [(c, "ascending") for c in sort_by]
    scan = ArrowScan(ice.table.metadata, ice.table.io, ice.table.schema(), AlwaysTrue())
    inputs = [live.files[f.path] for f in group.files]
    day_column = wm if per_day(live.kind) is not None else None
    writer = _RollingWriter(
        ice, inputs[0], group.rows_per_file(target_bytes), day_column, live.kind
    )
    written_rows = 0
    try:
        buffer: pa.Table | None = None
        for i, data_file in enumerate(inputs):
            data = scan.to_table([FileScanTask(data_file)])
            buffer = data if buffer is None else pa.concat_tables([buffer, data])
            if i + 1 < len(inputs):
                bound = _scalar(group.files[i + 1].lower, live.kind, buffer.schema.field(wm).type)
                below = pc.fill_null(pc.less(buffer[wm], bound), False)
                ready, buffer = buffer.filter(below), buffer.filter(pc.invert(below))
            else:
                ready, buffer = buffer, None
            if ready.num_rows:
                writer.write(ready.sort_by(order))
                written_rows += ready.num_rows
        files = writer.close()
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            writer.close()
        _delete_quietly(ice, writer.paths)
        raise
    if written_rows != group.rows or sum(f.record_count for f in files) != group.rows:
        _delete_quietly(ice, writer.paths)
        raise SinkError(
            f"{ice.target}: compaction read {written_rows} rows from {len(inputs)} files whose "
            f"manifests say {group.rows}; nothing was committed"
        )
    return files


def _scalar(value: Any, kind: str, arrow_type: pa.DataType) -> pa.Scalar:
    """A watermark bound (Iceberg's own unit) as an Arrow scalar of the column's type."""
    if kind == MICROS:
        return pa.scalar(value, pa.int64()).cast(arrow_type)
    if kind == DAYS:
        return pa.scalar(value, pa.int32()).cast(arrow_type)
    return pa.scalar(value).cast(arrow_type)


def _delete_quietly(ice: IcebergTable, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            ice.table.io.delete(path)
        except Exception:
            log.warning("could not delete an uncommitted file", extra={"path": path})


# Manifests merged by a compaction are packed up to this size (Iceberg's default
# commit.manifest.target-size-bytes).
MANIFEST_TARGET_BYTES = 8 * 1024 * 1024


class _CompactFiles(_OverwriteFiles):
    """An overwrite that also merges the snapshot's data manifests, so a table leaves
    maintenance with one or two manifests however many appends came before."""

    def _process_manifests(self, manifests: list[ManifestFile]) -> list[ManifestFile]:
        data = [m for m in manifests if m.content == ManifestContent.DATA]
        other = [m for m in manifests if m.content != ManifestContent.DATA]
        merger = _ManifestMergeManager(
            target_size_bytes=MANIFEST_TARGET_BYTES,
            min_count_to_merge=2,
            merge_enabled=True,
            snapshot_producer=self,
        )
        return merger.merge_manifests(data) + other


def replace_files(
    ice: IcebergTable,
    deleted: Sequence[DataFile],
    added: Sequence[DataFile],
    run_id: str,
    marker: Marker | None = None,
) -> int:
    """Swap `deleted` for `added` in one snapshot, through the one compare-and-set
    commit (IcebergTable.commit_snapshot); returns its id. A retry re-checks that every
    replaced file is still live (pyiceberg refuses to delete a file that is not).

    A compaction (no `marker`) changes no row: its snapshot carries the newest offloader
    commit's marker forward. A repair changes rows: it is an offloader commit of its
    own (`marker`), refused if another commit came first, like an append. On giving up,
    the new files are deleted: nothing of a failed rewrite stays."""
    operation = "compact" if marker is None else "repair"

    def build(tx: Transaction, props: dict[str, str]) -> None:
        with _CompactFiles(Operation.OVERWRITE, tx, ice.table.io, snapshot_properties=props) as ow:
            # The predicate only selects which manifests are read; the files deleted are
            # exactly those named.
            ow.delete_by_predicate(AlwaysTrue())
            for data_file in deleted:
                ow.delete_data_file(data_file)
            for data_file in added:
                ow.append_data_file(data_file)

    return ice.commit_snapshot(
        build,
        marker,
        what=operation,
        extra={PROP_OPERATION: operation, PROP_MAINTENANCE_RUN: run_id},
        discard=lambda: _delete_quietly(ice, [f.file_path for f in added]),
    )


def rows_outside_days(
    ice: IcebergTable, live: LiveFiles, paths: Sequence[str], wm: str, days: set[int]
) -> Iterator[pa.Table]:
    """The rows of the files `paths` whose watermark day is not in `days`, file by file
    (what a repair keeps of a file it rewrites)."""
    scan = ArrowScan(ice.table.metadata, ice.table.io, ice.table.schema(), AlwaysTrue())
    for path in paths:
        data = scan.to_table([FileScanTask(live.files[path])])
        day = day_numbers(data[wm], live.kind)
        keep = pc.invert(pc.is_in(day, pa.array(sorted(days), day.type)))
        kept = data.filter(keep)
        if kept.num_rows:
            yield kept


def without_field_ids(ice: IcebergTable, live: LiveFiles) -> list[DataFile]:
    """The live data files whose Parquet footer lacks a field id on some column (the
    parquet transport's pages written before pages were given them): readers that map
    columns by id only (Daft) refuse them."""
    out = []
    for path, data_file in live.files.items():
        with ice.table.io.new_input(path).open() as stream:
            schema = pq.read_metadata(stream).schema.to_arrow_schema()
        if not _all_have_ids(schema):
            out.append(data_file)
    return out


def _all_have_ids(schema: pa.Schema) -> bool:
    def has(f: pa.Field) -> bool:
        if b"PARQUET:field_id" not in (f.metadata or {}):
            return False
        t = f.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return has(t.value_field)
        if pa.types.is_map(t):
            return has(t.key_field) and has(t.item_field)
        if pa.types.is_struct(t):
            return all(has(t.field(i)) for i in range(t.num_fields))
        return True

    return all(has(f) for f in schema)


def give_field_ids(ice: IcebergTable, files: Sequence[DataFile]) -> list[DataFile]:
    """Each file written again with field ids in its footer (footer.with_field_ids: the
    data pages byte for byte), not committed; one file in memory at a time."""
    mapping = list(ice.table.schema().name_mapping)
    locations = ice.table.location_provider()
    added = []
    for data_file in files:
        with ice.table.io.new_input(data_file.file_path).open() as stream:
            body = stream.read()
        keep, tail = with_field_ids(body, mapping, f"{ice.target}: {data_file.file_path}")
        path = locations.new_data_location(f"{uuid.uuid4()}-ids.parquet")
        with ice.table.io.new_output(path).create(overwrite=False) as out:
            out.write(memoryview(body)[:keep])  # type: ignore[arg-type]  # not copied
            out.write(tail)
        added.append(parquet_file_to_data_file(ice.table.io, ice.table.metadata, path))
    return added
