"""What an Iceberg table holds, read from its metadata and manifests only: the live
data files with their watermark bounds, per-day counts, the table's shape; and the
housekeeping that keeps it bounded: snapshot expiry and orphan files. Part of the
`offloader.iceberg` package (the only importer of pyiceberg); every call blocks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyarrow.fs import FileSelector, FileSystem, FileType
from pyiceberg.conversions import from_bytes
from pyiceberg.io.pyarrow import (
    PyArrowFileIO,
)
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, YearTransform
from pyiceberg.types import NestedField, PrimitiveType

from offloader import days, faults
from offloader.errors import SinkError
from offloader.iceberg import (
    brief,
    orphans,
)
from offloader.iceberg.compaction import FileStat
from offloader.iceberg.orphans import Orphan
from offloader.iceberg.table import IcebergTable

log = logging.getLogger(__name__)

_TIME_TRANSFORMS = (YearTransform, MonthTransform, DayTransform, HourTransform)


@dataclass(frozen=True, slots=True)
class Shape:
    """How big a table's current state is: what maintenance keeps bounded."""

    data_files: int
    data_bytes: int
    rows: int
    manifests: int
    snapshots: int
    metadata_files: int  # the current one and those in the metadata log


@dataclass(frozen=True, slots=True)
class LiveFiles:
    """The data files of the current snapshot with their watermark bounds."""

    stats: list[FileStat]
    files: dict[str, DataFile]
    kind: str  # the watermark's unit (days.kind_of): "micros", "ticks9", "days", "value"
    whole_partitions: bool  # partitioned by a time transform of the watermark column


def shape(ice: IcebergTable) -> Shape:
    table = ice.table
    snap = table.current_snapshot()
    summary = snap.summary if snap is not None and snap.summary is not None else None

    def total(key: str) -> int:
        value = summary.get(key) if summary is not None else None
        return int(value) if value else 0

    manifests = len(snap.manifests(table.io)) if snap is not None else 0
    return Shape(
        data_files=total("total-data-files"),
        data_bytes=total("total-files-size"),
        rows=total("total-records"),
        manifests=manifests,
        snapshots=len(table.metadata.snapshots),
        metadata_files=len(table.metadata.metadata_log) + 1,
    )


def live_files(ice: IcebergTable, watermark: str) -> LiveFiles:
    """Read the current snapshot's manifests: every live data file and its bounds."""
    table = ice.table
    snap = table.current_snapshot()
    return _live_files(ice, watermark, snap.manifests(table.io) if snap is not None else [])


def _live_files(ice: IcebergTable, watermark: str, manifests: Sequence[ManifestFile]) -> LiveFiles:
    """The live data files of `manifests` with their bounds of column `watermark`."""
    table = ice.table
    schema = table.schema()
    field = schema.find_field(watermark)
    wm_type = field.field_type
    assert isinstance(wm_type, PrimitiveType)  # watermark columns are never nested
    kind = days.kind_of_field(str(wm_type), field.doc)
    spec = table.spec()
    whole = bool(spec.fields) and any(
        f.source_id == field.field_id and isinstance(f.transform, _TIME_TRANSFORMS)
        for f in spec.fields
    )
    stats: list[FileStat] = []
    files: dict[str, DataFile] = {}
    for manifest in manifests:
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            df = entry.data_file
            if df.content != DataFileContent.DATA:
                continue
            lower = (df.lower_bounds or {}).get(field.field_id)
            upper = (df.upper_bounds or {}).get(field.field_id)
            files[df.file_path] = df
            stats.append(
                FileStat(
                    path=df.file_path,
                    bytes=df.file_size_in_bytes,
                    rows=df.record_count,
                    partition=(df.spec_id, *_values(df.partition)),
                    lower=from_bytes(wm_type, lower) if lower is not None else None,
                    upper=from_bytes(wm_type, upper) if upper is not None else None,
                )
            )
    return LiveFiles(stats, files, kind, whole)


def day_figures(
    ice: IcebergTable, watermark: str, first_day: int, last_day: int
) -> tuple[dict[int, int], set[int]]:
    """day_counts of the current snapshot for [first_day, last_day], reading only the
    manifests the manifest list cannot answer for.

    Where the table is partitioned by day or hour of `watermark`, the manifest list's
    partition summary tells the days each manifest's files cover: a manifest wholly
    outside the window is not read, and one whose files all lie on one day counts its
    live rows (added + existing, as the manifest list records them) for that day
    without being read. The others are read as live_files reads them. So the audit's
    cost follows the manifests of the days it audits, not every file of the history."""
    table = ice.table
    snap = table.current_snapshot()
    counts: dict[int, int] = {}
    unread: list[ManifestFile] = []
    field = table.schema().find_field(watermark)
    specs = table.specs()
    for manifest in snap.manifests(table.io) if snap is not None else []:
        if manifest.content != ManifestContent.DATA:
            continue  # delete files hold no rows of their own (live_files skips them too)
        span = _manifest_days(manifest, specs.get(manifest.partition_spec_id), field)
        if span is not None and (span[1] < first_day or span[0] > last_day):
            continue
        rows = _live_rows(manifest)
        if span is not None and span[0] == span[1] and rows is not None:
            counts[span[0]] = counts.get(span[0], 0) + rows
        else:
            unread.append(manifest)
    more, unknown = day_counts(_live_files(ice, watermark, unread), first_day, last_day)
    for day, rows in more.items():
        counts[day] = counts.get(day, 0) + rows
    return counts, unknown


def _manifest_days(
    manifest: ManifestFile, spec: PartitionSpec | None, field: NestedField
) -> tuple[int, int] | None:
    """The first and last UTC day (days since 1970) of the rows of a data manifest, from
    its partition summary of a day or hour transform of `field`; None if it cannot say."""
    summaries = manifest.partitions or []
    for position, part in enumerate(spec.fields if spec is not None else ()):
        if part.source_id != field.field_id:
            continue
        if not isinstance(part.transform, DayTransform | HourTransform):
            continue
        if position >= len(summaries):
            return None
        summary = summaries[position]
        if summary.contains_null or summary.lower_bound is None or summary.upper_bound is None:
            return None
        kind = part.transform.result_type(field.field_type)
        assert isinstance(kind, PrimitiveType)  # a date (day) or an int (hour)
        lower, upper = from_bytes(kind, summary.lower_bound), from_bytes(kind, summary.upper_bound)
        per = 24 if isinstance(part.transform, HourTransform) else 1
        return int(lower) // per, int(upper) // per
    return None


def _live_rows(manifest: ManifestFile) -> int | None:
    """Rows of a manifest's live files (added and existing), None if it does not say."""
    added, existing = manifest.added_rows_count, manifest.existing_rows_count
    return added + existing if added is not None and existing is not None else None


day_of = days.day_of  # the UTC day of a watermark bound, None for integer watermarks


def day_counts(live: LiveFiles, first_day: int, last_day: int) -> tuple[dict[int, int], set[int]]:
    """Rows per UTC day in [first_day, last_day] from the manifests alone (no data is
    read): every file whose rows all fall on one day counts for that day. Days touched
    by a file spanning several days cannot be counted this way; they are returned as
    unknown. (Offloader's files rarely span days: day-partitioned tables never, and
    compaction cuts its files at midnight.)"""
    counts: dict[int, int] = {}
    unknown: set[int] = set()
    for f in live.stats:
        lo, hi = day_of(f.lower, live.kind), day_of(f.upper, live.kind)
        if lo is None or hi is None or hi < first_day or lo > last_day:
            continue
        if lo == hi:
            counts[lo] = counts.get(lo, 0) + f.rows
        else:
            unknown |= set(range(max(lo, first_day), min(hi, last_day) + 1))
    return counts, unknown


def _values(record: Any) -> tuple[Any, ...]:
    return tuple(record[i] for i in range(len(record))) if record is not None else ()


def expirable_snapshots(ice: IcebergTable, older_than: datetime) -> list[int]:
    """Snapshots older than `older_than`, except the current one, the newest offloader
    commit and the heads of branches and tags."""
    keep = {ice.snapshot_id}
    mark = ice.latest_mark()
    if mark is not None:
        keep.add(mark.snapshot_id)
    keep |= {ref.snapshot_id for ref in ice.table.metadata.refs.values()}
    cutoff = older_than.timestamp() * 1000
    return [
        s.snapshot_id
        for s in ice.table.metadata.snapshots
        if s.timestamp_ms < cutoff and s.snapshot_id not in keep
    ]


def expire(ice: IcebergTable, snapshot_ids: Sequence[int]) -> None:
    if snapshot_ids:
        ice.table.maintenance.expire_snapshots().by_ids(list(snapshot_ids)).commit()


def referenced_files(ice: IcebergTable) -> set[str]:
    """Every file a retained snapshot or metadata file refers to, as FileIO locations
    without scheme: manifest lists, manifests, data and delete files (of every entry,
    deleted ones too: a conservative superset), statistics and metadata files."""
    table = ice.table
    metadata = table.metadata
    seen_manifests: set[str] = set()
    out = {table.metadata_location, *(m.metadata_file for m in metadata.metadata_log)}
    for stats in [*metadata.statistics, *metadata.partition_statistics]:
        out.add(stats.statistics_path)
    for snap in metadata.snapshots:
        out.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            out.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                out.add(entry.data_file.file_path)
    return {_strip(p) for p in out}


def _strip(location: str) -> str:
    return PyArrowFileIO.parse_location(location)[2]


def survey(ice: IcebergTable) -> orphans.Survey:
    """List the table's data/ and metadata/ directories (data first) and read the
    table-uuid of every metadata file the table's metadata log does not list (those it
    lists are the table's own). A metadata file that declares none is reported and
    never deleted."""
    table = ice.table
    location = table.location().rstrip("/")
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise SinkError(f"{ice.target}: orphan cleanup needs pyiceberg's PyArrowFileIO")
    scheme, netloc, base = PyArrowFileIO.parse_location(location, io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    listed = []
    now = time.time()
    for sub in ("data", "metadata"):
        try:
            infos = fs.get_file_info(FileSelector(f"{base}/{sub}", recursive=True))
        except FileNotFoundError:
            continue
        for info in infos:
            if info.type != FileType.File:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else now
            listed.append(orphans.Listed(info.path, info.size or 0, now - mtime))
    own = str(table.metadata.table_uuid)
    logged = {_strip(table.metadata_location)}
    logged |= {_strip(m.metadata_file) for m in table.metadata.metadata_log}
    uuids: dict[str, str | None] = {}
    for f in listed:
        if orphans.is_metadata(f.path):
            uuids[f.path] = own if f.path in logged else _declared_uuid(fs, f.path)
            if uuids[f.path] is None:
                log.warning(
                    "metadata file declares no table-uuid: never deleted as an orphan; "
                    "delete it by hand if it is a torn leftover",
                    extra={"table": ice.target, "file": f"{scheme}://{f.path}"},
                )
    return orphans.Survey(ice.target, location, scheme, own, listed, uuids)


def _declared_uuid(fs: FileSystem, path: str) -> str | None:
    gzipped = orphans.is_gzipped(path)
    try:
        with fs.open_input_stream(path) as stream:
            head = stream.read(orphans.HEAD_BYTES)
            found = orphans.declared_uuid(head, gzipped)
            if found is None and len(head) == orphans.HEAD_BYTES:
                found = orphans.declared_uuid(head + stream.read(), gzipped)
    except FileNotFoundError:  # deleted since the listing: nothing to decide
        return None
    return found


def orphan_files(
    ice: IcebergTable,
    min_age: float,
    keep: Set[str] = frozenset(),
    surveyed: orphans.Survey | None = None,
) -> list[Orphan]:
    """Iceberg files under the table's data/ and metadata/ directories that nothing
    retained refers to and that are provably the table's (orphans.plan), never those
    in `keep` (the metadata file a view pins). Raises SinkError when another table's
    metadata shares the location. `surveyed`: the location's listing, taken before the
    references are read (so a file committed between the two is seen as referenced);
    listed now when not given."""
    listing = surveyed if surveyed is not None else survey(ice)
    referenced = referenced_files(ice) | {_strip(k) for k in keep}
    current = orphans.metadata_version(ice.table.metadata_location)
    return orphans.plan(listing, referenced, current, min_age)


def delete_orphans(ice: IcebergTable, orphans: Sequence[Orphan]) -> int:
    deleted = 0
    for orphan in orphans:
        try:
            ice.table.io.delete(orphan.path)
        except FileNotFoundError:
            continue
        except Exception as exc:
            raise SinkError(
                f"{ice.target}: cannot delete orphan file {orphan.path}: {brief(exc)}"
            ) from exc
        deleted += 1
        faults.point("orphan_delete")
    return deleted
