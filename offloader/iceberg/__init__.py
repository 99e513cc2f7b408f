"""The sink: Apache Iceberg through pyiceberg. Only this package imports pyiceberg, and
only its submodules do: importing `offloader.iceberg` itself loads no pyiceberg, so a
process that never writes (an idle cycle, `status` of PostgreSQL) does not pay for it.

    catalog.py      IcebergCatalog: open, create or evolve tables; describe a schema
    table.py        IcebergTable: write data files, commit them with the offloader
                    marker (compare-and-set), read the newest marker
    files.py        what a table holds (live files, per-day counts, shape), snapshot
                    expiry and orphan files
    rewrite.py      compaction's and repair's file replacement, carrying the marker
    compaction.py   which files compaction rewrites (pure)
    footer.py       the Parquet footer's field ids (the parquet transport's pages)
    compat.py       the pyiceberg private names offloader relies on, checked

Every call blocks (catalog SQL, Parquet writes), so the pipeline runs them in worker
threads. Each offloader commit carries the watermark, a commit sequence number and the
run id in its snapshot summary: the Iceberg commit and the watermark it reaches are one
atomic fact, which is what lets PostgreSQL be repaired from Iceberg after a crash.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offloader import cursor
from offloader.config import MaintenanceConfig
from offloader.errors import OffloaderError, SinkError
from offloader.state import CommittedMark

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

    from offloader.iceberg.catalog import IcebergCatalog, describe
    from offloader.iceberg.table import IcebergTable

__all__ = [
    "CommittedMark",
    "IcebergCatalog",
    "IcebergTable",
    "Marker",
    "WrittenFiles",
    "describe",
    "sink_errors",
    "table_properties",
]

PROP_WATERMARK = "offloader.watermark"
PROP_SEQ = "offloader.seq"
PROP_RUN = "offloader.run_id"
PROP_ROWS = "offloader.rows"
PROP_DAYS = "offloader.days"  # the commit's per-day rows and row-hash sums
PROP_OPERATION = "offloader.operation"  # absent on appends; "compact" or "repair"
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Marker:
    """What an offloader commit records in its snapshot's summary: its seq, the position
    it reaches, its run, its rows and per-day sums. The marker and the files are one
    atomic fact, which is what lets PostgreSQL be repaired from Iceberg after a crash."""

    seq: int
    position: Sequence[Any]
    run_id: str
    rows: int
    days: str | None = None  # state.encode_days of the commit's per-day sums

    @classmethod
    def carried(cls, mark: CommittedMark) -> Marker:
        """The newest commit's marker, carried onto a snapshot that changes no row (a
        compaction), so reconciliation finds it whatever is expired later."""
        return cls(mark.seq, mark.position, mark.run_id, mark.rows, mark.days)

    def properties(self) -> dict[str, str]:
        props = {
            PROP_WATERMARK: cursor.dumps(self.position),
            PROP_SEQ: str(self.seq),
            PROP_RUN: self.run_id,
            PROP_ROWS: str(self.rows),
        }
        if self.days:
            props[PROP_DAYS] = self.days
        return props


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
        # The metadata log keeps this many older metadata files. They are not deleted on
        # commit: the view over both tiers may pin one older than that (its replacement
        # failing while commits go on), so maintenance deletes the superseded ones,
        # never the pinned one (files.orphan_files).
        "write.metadata.delete-after-commit.enabled": "false",
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


def brief(exc: BaseException) -> str:
    """One line for a pyiceberg/pyarrow/SQLAlchemy error, with what to do where known."""
    full = str(exc)
    text = full.strip().splitlines()
    first = text[0] if text else ""
    hint = next((h for marker, h in _HINTS if marker.lower() in full.lower()), None)
    brief = f"{type(exc).__name__}: {first[:300]}"
    return f"{hint} ({brief})" if hint else brief


@contextmanager
def sink_errors(what: str) -> Iterator[None]:
    """pyiceberg's, the FileIO's and the catalog database's exceptions -> SinkError
    starting with `what` (Exception only; offloader's own errors pass through)."""
    try:
        yield
    except OffloaderError:
        raise
    except Exception as exc:
        raise SinkError(f"{what}: {brief(exc)}") from exc


def __getattr__(name: str) -> Any:
    # The classes that need pyiceberg load it on first use.
    if name in ("IcebergCatalog", "describe"):
        from offloader.iceberg import catalog

        return getattr(catalog, name)
    if name == "IcebergTable":
        from offloader.iceberg import table

        return table.IcebergTable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
