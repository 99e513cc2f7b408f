"""Which files compaction rewrites (pure, unit-tested without servers): the closed
range of a table's watermark and the groups of small files in each closed partition.
`offloader.ops.maintenance` decides with it; `rewrite.rewrite_group` does it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from offloader.days import DAYS, SECONDS_PER_DAY, per_second

# A data file under this share of the target size is "small": compaction merges small
# files and leaves files near the target alone, so a pass never rewrites what the
# previous pass produced unless new small files joined it.
SMALL_FILE_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class FileStat:
    """What compaction planning needs of one live data file (from the manifests)."""

    path: str
    bytes: int
    rows: int
    partition: tuple[Any, ...]  # (spec id, partition values...)
    lower: Any  # watermark column bounds, None when the file has no statistics
    upper: Any


@dataclass(frozen=True, slots=True)
class RewriteGroup:
    """Files of one partition to be merged into files of about the target size."""

    partition: tuple[Any, ...]
    files: tuple[FileStat, ...]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def rows_per_file(self, target_bytes: int) -> int:
        """Rows per output file so that files come out near `target_bytes` on disk,
        estimated from the inputs' own bytes per row."""
        per_row = max(self.bytes, 1) / max(self.rows, 1)
        return max(1, int(target_bytes / per_row))


def compaction_cutoff(uppers: Sequence[Any], kind: str, now: float, margin: float) -> Any:
    """The watermark below which rows are settled, in Iceberg's unit of the column. Pure.

    Never above the newest offloaded row (appends only add rows at or after it); for
    time and date watermarks also not above `now - margin` (the table's lag plus the
    settle time), so a partition still filling in real time stays open.
    """
    if not uppers:
        return None
    newest = max(uppers)
    second = per_second(kind)
    if second is not None:  # micros, ticks
        return min(newest, int((now - margin) * second))
    if kind == DAYS:
        return min(newest, int((now - margin) // SECONDS_PER_DAY))
    return newest


def compaction_groups(
    files: Sequence[FileStat],
    cutoff: Any,
    target_bytes: int,
    *,
    whole_partitions: bool,
) -> list[RewriteGroup]:
    """Pick the files a compaction pass rewrites. Pure.

    A file is closed when all its rows are older than `cutoff` (its watermark upper
    bound is below it): no append can add rows next to them any more. With
    `whole_partitions` (the table is partitioned by a time transform of the watermark
    column, so partitions do close) a partition is compacted only once all its files
    are closed, so an open day is not rewritten every pass; otherwise (unpartitioned,
    or partitioned by other columns) the closed files of each partition are.
    Within those, the small files (under SMALL_FILE_SHARE of the target) are merged
    when there are at least two of them. Groups come oldest partition first.
    """
    by_partition: dict[tuple[Any, ...], list[FileStat]] = {}
    for f in files:
        by_partition.setdefault(f.partition, []).append(f)
    groups = []
    for partition, members in by_partition.items():
        if cutoff is None:
            break
        closed = [f for f in members if f.upper is not None and f.upper < cutoff]
        if whole_partitions and len(closed) != len(members):
            continue
        small = [f for f in closed if f.bytes < SMALL_FILE_SHARE * target_bytes]
        if len(small) >= 2:
            small.sort(key=lambda f: (f.lower, f.upper, f.path))
            groups.append(RewriteGroup(partition, tuple(small)))
    groups.sort(key=lambda g: (min(f.lower for f in g.files), g.partition))
    return groups
