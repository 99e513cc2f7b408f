"""Which files orphan removal may delete (pure, unit-tested without servers): from one
listing of a table's location, the table-uuid each metadata file there declares, and
what the table's retained metadata refers to. `files.survey` and `files.orphan_files`
do the I/O.

A file is deleted only when it is provably the table's own: a metadata file that
declares the table's uuid, or a data file or manifest under a location whose every
metadata file is the table's. Two deployments (each its own catalog and state) may give
two tables one location (one warehouse, the same target name); each table's metadata
is then an orphan to the other, so such a location is refused, never cleaned.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from offloader.errors import SinkError

# Only files of these kinds are ever deleted as orphans: what Iceberg writers leave
# (data, manifests and lists, metadata, statistics), never e.g. a catalog's
# version-hint.text or a file someone put there by hand.
ICEBERG_SUFFIXES = (
    ".parquet",
    ".orc",
    ".avro",
    ".metadata.json",
    ".metadata.json.gz",
    ".gz.metadata.json",
    ".stats",
    ".puffin",
)
METADATA_SUFFIXES = (".metadata.json", ".metadata.json.gz")
HEAD_BYTES = 8192  # writers put table-uuid among a metadata file's first fields

_METADATA_NAME = re.compile(r"/(\d+)-[^/]*\.metadata\.json(?:\.gz)?$")
_TABLE_UUID = re.compile(rb'"table-uuid"\s*:\s*"([^"]+)"')


@dataclass(frozen=True, slots=True)
class Listed:
    path: str  # without scheme, as the location's filesystem lists it
    bytes: int
    age_seconds: float


@dataclass(frozen=True, slots=True)
class Orphan:
    path: str  # a full location, as the table's FileIO takes it
    bytes: int
    age_seconds: float


@dataclass(frozen=True, slots=True)
class Survey:
    """One listing of a table's location (data files listed before metadata files, so
    a data file of another table is listed only after its metadata is)."""

    target: str
    location: str  # the table's location, as its metadata records it
    scheme: str
    own_uuid: str
    files: Sequence[Listed]
    # Every listed metadata file -> the table-uuid it declares (None: none readable).
    uuids: Mapping[str, str | None]

    def foreign(self) -> dict[str, str]:
        """The metadata files of other tables: path -> their table-uuid."""
        return {p: u for p, u in self.uuids.items() if u is not None and u != self.own_uuid}

    def check(self) -> None:
        """Refuse a location that also holds another table's metadata: nothing under
        it can be proven this table's alone."""
        foreign = self.foreign()
        if not foreign:
            return
        others = sorted(set(foreign.values()))
        example = min(foreign, key=lambda p: (foreign[p], p))
        raise SinkError(
            f"{self.target}: the table's location {self.location} also holds the metadata of "
            f"another Iceberg table (table-uuid {', '.join(others)}; e.g. "
            f"{self.scheme}://{example}); this table's uuid is {self.own_uuid}. Two catalogs "
            "place a table there (two deployments sharing one warehouse and target name?), "
            "so maintenance deletes nothing in it: give each deployment its own warehouse "
            "([iceberg.catalog] warehouse) or target name; if the other table was dropped, "
            "delete its files there",
            reason="config",
        )


def is_metadata(path: str) -> bool:
    return path.endswith(METADATA_SUFFIXES)


def metadata_version(path: str) -> int | None:
    """The version of a metadata file named as Iceberg writers name them
    (`00012-<uuid>.metadata.json`), or None."""
    match = _METADATA_NAME.search(path)
    return int(match.group(1)) if match else None


def declared_uuid(raw: bytes, gzipped: bool) -> str | None:
    """The table-uuid a metadata file declares, from its first bytes (or all of them),
    gzipped or not; None when they hold none (an empty or torn file)."""
    if gzipped:
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw)
        except zlib.error:
            return None
    match = _TABLE_UUID.search(raw)
    return match.group(1).decode(errors="replace") if match else None


def is_gzipped(path: str) -> bool:
    return path.endswith((".gz.metadata.json", ".metadata.json.gz"))


def plan(
    survey: Survey, referenced: Set[str], current_version: int | None, min_age: float
) -> list[Orphan]:
    """The files of `survey` nothing retained refers to (`referenced`: paths without
    scheme, with the pinned metadata file) and that are provably the table's: raises
    (Survey.check) when another table's metadata shares the location.

    Why the age (`min_age` seconds): a run writes its data files, manifests and
    metadata before the commit that refers to them; only files older than any run could
    take are crash leftovers. A metadata file of the table's uuid and a lower version
    than the current one was superseded by a commit (not one in flight), and is deleted
    at any age once the metadata log no longer lists it. A metadata file whose uuid
    cannot be read is never deleted.
    """
    survey.check()

    def deletable(f: Listed) -> bool:
        if f.path in referenced:
            return False
        if is_metadata(f.path):
            if survey.uuids.get(f.path) != survey.own_uuid:
                return False
            version = metadata_version(f.path)
            if current_version is not None and version is not None and version < current_version:
                return True
        return f.age_seconds >= min_age

    return [
        Orphan(f"{survey.scheme}://{f.path}", f.bytes, f.age_seconds)
        for f in survey.files
        if f.path.endswith(ICEBERG_SUFFIXES) and deletable(f)
    ]
