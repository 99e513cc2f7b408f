"""The configuration as frozen, typed objects, with their defaults (written once, here:
the file reader takes them from these dataclasses), and the small value parsers
(durations, sizes, partition transforms). configfile.py reads `config/tables.toml`
into these.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from offloader.days import SECONDS_PER_DAY
from offloader.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/tables.toml"

Transport = Literal[
    "native", "arrow", "parquet"
]  # how a table's pages are read (README [clickhouse])
# The default batch_rows of a table read with transport = "parquet": each page is one
# data file ClickHouse encodes, and bigger pages keep its encoder busy (1.74x the rows/s
# of 100k-row pages here; a 10M-row backfill as a whole process in 4.4 s with 2M-row
# pages against 5.8 s with 500k, benchmarks/RESULTS.md). A ceiling: the pager sizes
# pages to about 64 MiB of Parquet (source/parquet.py, page_rows).
PARQUET_BATCH_ROWS = 2_000_000

# Whose rights the view over both tiers reads with (ViewsConfig.security).
ViewSecurity = Literal["definer", "invoker"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": float(SECONDS_PER_DAY)}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PARTITION = re.compile(
    r"^\s*(?:(identity|year|month|day|hour|void)\(\s*([^,()]+?)\s*\)"
    r"|(bucket|truncate)\(\s*(\d+)\s*,\s*([^,()]+?)\s*\)"
    r"|([^,()]+?))\s*$"
)


def parse_duration(text: str) -> float:
    """'15m' -> 900.0, '1h30m' -> 5400.0, '500ms' -> 0.5. Raises ValueError."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. '30s', '5m', '1h30m')")
    return total


def parse_size(text: str) -> int:
    """'128MB' -> 128_000_000, '1GiB' -> 1_073_741_824, '4096' -> 4096. Raises ValueError."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. '128MB', '1GiB' or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class PartitionField:
    """One Iceberg partition transform, e.g. day(exchange_ts) or bucket(16, id)."""

    transform: str
    column: str
    param: int | None = None

    def __str__(self) -> str:
        if self.param is not None:
            return f"{self.transform}({self.param}, {self.column})"
        return f"{self.transform}({self.column})"


def parse_partition(text: str) -> PartitionField:
    match = _PARTITION.match(text)
    if not match or not text.strip():
        raise ValueError(
            f"not a partition transform: {text!r} (use identity(c), year(c), month(c), day(c), "
            "hour(c), bucket(N, c), truncate(N, c) or a bare column name)"
        )
    if match.group(1):
        return PartitionField(match.group(1), match.group(2))
    if match.group(3):
        param = int(match.group(4))
        if param <= 0:
            raise ValueError(f"{match.group(3)} width must be positive in {text!r}")
        return PartitionField(match.group(3), match.group(5), param)
    return PartitionField("identity", match.group(6))


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """`[offloader]`: the service's schedule, concurrency and monitoring."""

    interval: float = 900.0
    """Seconds between cycle starts, aligned to the top of the hour (over an hour: to
    midnight UTC)."""
    max_parallel_tables: int = 4
    """Tables offloaded at once (per worker process)."""
    table_timeout: float = 600.0
    """Seconds one table's run may take; commits made before it are kept."""
    shutdown_grace: float = 60.0
    """Seconds in-flight commits may take after SIGTERM before the cycle is cancelled."""
    metrics_port: int | None = None
    """Port of the Prometheus metrics listener (0: any free port); None: no listener."""
    metrics_host: str = "127.0.0.1"
    """Address of the metrics listener."""
    lag_alert: float = 3600.0
    """Seconds of lag above which `status --check` fails."""
    workers: int = 0
    """Worker processes of `run` and `once`, each offloading its share of the tables on
    its own core (service/workers.py); 0 ("auto"): one per core, at most one per
    max_parallel_tables enabled tables."""


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    """`[maintenance]`: keeps each Iceberg table's shape bounded (README "Maintenance")."""

    enabled: bool = True
    """Run a maintenance pass inside `offloader run`."""
    interval: float = 3600.0
    """Seconds between passes of the service."""
    budget: float = 600.0
    """Time budget of one pass, in seconds (never delays a cycle tick)."""
    settle: float = 3600.0
    """A partition is closed when its rows are older than now - lag - settle (seconds)."""
    target_file_size: int = 128 * 1000**2
    """Size of compacted data files, in Parquet bytes."""
    snapshot_retention: float = 7.0 * SECONDS_PER_DAY
    """Seconds after which snapshots are expired (never the newest)."""
    metadata_versions: int = 20
    """Metadata files kept (write.metadata.previous-versions-max)."""
    orphan_age: float = 3.0 * SECONDS_PER_DAY
    """Seconds: unreferenced files younger than this are never deleted."""


@dataclass(frozen=True, slots=True)
class ViewsConfig:
    """`[views]`: the ClickHouse view over both tiers that offloader keeps per table
    (README "One table over both tiers")."""

    enabled: bool = False
    """Keep a view for every table that does not say `view = false`."""
    suffix: str = "_all"
    """Default view name: the source's name plus this, in its database."""
    s3_collection: str = ""
    """The ClickHouse named collection holding access_key_id and secret_access_key, by
    which the server reads an S3 warehouse (icebergS3): secrets never appear in the
    view's DDL. Empty: none."""
    s3_endpoint: str = ""
    """The object store's URL as ClickHouse reaches it (the file reader's default: the
    catalog's s3.endpoint)."""
    security: ViewSecurity = "definer"
    """Whose rights a view reads both tiers with (a table's `view_security` overrides
    it): "definer", offloader's (an analyst needs SELECT on the view only, and the
    source's row policies and column grants do not apply), or "invoker", the analyst's
    own (SELECT on the source and on the cold tier's table function or named collection
    too)."""


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """`[retention]`: when the service runs its verified hot retention (tables opt in with
    `hot_retention`)."""

    enabled: bool = True
    """Run retention passes inside `offloader run`."""
    interval: float = 3600.0
    """Seconds between passes."""
    budget: float = 600.0
    """Time budget of a pass, in seconds (never runs into a cycle tick)."""


@dataclass(frozen=True, slots=True)
class ClickHouseConfig:
    """`[clickhouse]`: where and how the sources are read."""

    host: str = "127.0.0.1"
    """Host of the native TCP endpoint (and of the HTTP one)."""
    port: int = 9000
    """Native TCP port."""
    user: str = "default"
    """ClickHouse user offloader reads as."""
    password: str = field(default="", repr=False)
    """That user's password (a secret: never shown)."""
    database: str = "default"
    """Database of sources written without one."""
    secure: bool = False
    """TLS on the native port and HTTPS on the HTTP port, verifying the server's
    certificate."""
    connect_timeout: float = 10.0
    """Seconds per connection attempt."""
    query_timeout: float = 300.0
    """Seconds per page query."""
    transport: Transport = "native"
    """How pages are read: "native" (native TCP), "arrow" or "parquet" (HTTP)."""
    http_port: int = 8123
    """HTTP port, for the "arrow" and "parquet" transports."""
    http_compression: bool = False
    """Let ClickHouse compress HTTP replies (zstd)."""
    http_ports: tuple[tuple[str, int], ...] = ()
    """A Distributed source read shard by shard: the HTTP port of a node known by its
    "host:tcp_port" in system.clusters, where ClickHouse's own answer is not the one
    to use (a proxy, NAT). Others: getServerPort('http_port') on that node."""

    def __repr__(self) -> str:
        return (
            f"ClickHouseConfig(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"password={'***' if self.password else ''!r}, database={self.database!r})"
        )


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """`[postgres]`: where the watermarks, commits and runs are kept."""

    dsn: str = field(default="postgresql://postgres@127.0.0.1:5432/offloader", repr=False)
    """The database's DSN (required in the file; may hold a secret: shown redacted)."""
    schema: str = "offloader"
    """Schema of offloader's tables, created and migrated automatically."""

    def __repr__(self) -> str:
        return f"PostgresConfig(dsn={redact_dsn(self.dsn)!r}, schema={self.schema!r})"


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    """`[iceberg.catalog]`: the Iceberg catalog the targets live in."""

    name: str
    """The catalog's name (pyiceberg's load_catalog name)."""
    properties: Mapping[str, str] = field(repr=False)
    """Every other property, passed to pyiceberg's load_catalog as it is (secrets are
    shown as *** in a repr)."""

    def __repr__(self) -> str:
        shown = {k: ("***" if is_secret_key(k) else v) for k, v in self.properties.items()}
        return f"CatalogConfig(name={self.name!r}, properties={shown!r})"


@dataclass(frozen=True, slots=True)
class TableConfig:
    """`[[tables]]`: one ClickHouse source offloaded into one Iceberg target."""

    source: str
    """ClickHouse `database.table`, or `table` in [clickhouse] database."""
    target: str
    """Iceberg `namespace.table`, created if missing."""
    watermark: str
    """The ordered, non-Nullable column the rows are offloaded in the order of."""
    keys: tuple[str, ...]
    """Columns that with the watermark identify a row (the keyset order's tie-breaker)."""
    lag: float = 300.0
    """Seconds: rows newer than now - lag wait for the next cycle."""
    batch_rows: int = 100_000
    """Rows per page read from ClickHouse (PARQUET_BATCH_ROWS with transport "parquet")."""
    append_rows: int = 1_000_000
    """Rows per Iceberg append (one snapshot); pages accumulate up to it."""
    max_rows_per_cycle: int = 50_000_000
    """Rows a cycle offloads at most, so one big backlog never starves the others."""
    partition_by: tuple[PartitionField, ...] = ()
    """The target's Iceberg partition transforms."""
    enabled: bool = True
    """False keeps the table in the config but skips it."""
    uint64: Literal["error", "decimal"] = "error"
    """UInt64 as long, failing above 2^63-1 ("error"), or as decimal(20,0) ("decimal")."""
    strings: Literal["string", "binary"] = "string"
    """String as Iceberg string (valid UTF-8 only) or binary, byte for byte."""
    transport: Transport | None = None
    """This table's transport; None: [clickhouse] transport."""
    audit_days: int = 4
    """Days audited each run, ending at the watermark's day; 0: off."""
    late_rows: Literal["alert", "repair"] = "alert"
    """What a run does with drifted days: report them, or also repair them."""
    audit_checksums: bool = True
    """The audit also compares per-day row-hash sums."""
    final: bool = False
    """Read with FINAL (ReplacingMergeTree, CollapsingMergeTree, ...)."""
    distributed: Literal["shards", "through"] = "shards"
    """A Distributed source: "shards" reads each shard's local table on one replica of
    it (source/shards.py); "through" reads through the Distributed table."""
    view: str | None = None
    """The view over both tiers, `database.name` (resolved from `view` and [views]);
    None: none."""
    view_security: ViewSecurity = "definer"
    """Its SQL SECURITY (resolved from `view_security` and [views] security)."""
    hot_retention: float | None = None
    """Seconds: drop source partitions older than this once Iceberg verifiably holds
    them (retention.py); None: offloader never drops hot data."""
    retiring_table: str | None = None
    """A table of the source's structure and engine family, in the (local) source's
    database on every node, that retention moves a partition to before it drops it
    (needed for a Replicated* source; retention.py); None: detach, then drop."""

    @property
    def source_database(self) -> str | None:
        db, sep, _ = self.source.partition(".")
        return db if sep else None

    @property
    def source_table(self) -> str:
        _, sep, name = self.source.partition(".")
        return name if sep else self.source

    @property
    def target_namespace(self) -> str:
        return self.target.rsplit(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file, validated (configfile.py builds it)."""

    path: str
    """The file it was read from, named in every error."""
    service: ServiceConfig
    """`[offloader]`."""
    clickhouse: ClickHouseConfig
    """`[clickhouse]`."""
    postgres: PostgresConfig
    """`[postgres]`."""
    catalog: CatalogConfig
    """`[iceberg.catalog]`."""
    tables: tuple[TableConfig, ...]
    """`[[tables]]`, in the file's order."""
    maintenance: MaintenanceConfig = MaintenanceConfig()
    """`[maintenance]`."""
    views: ViewsConfig = ViewsConfig()
    """`[views]`."""
    retention: RetentionConfig = RetentionConfig()
    """`[retention]`."""

    @property
    def enabled_tables(self) -> tuple[TableConfig, ...]:
        return tuple(t for t in self.tables if t.enabled)

    def table(self, name: str) -> TableConfig:
        """Find a table by target or source name (CLI arguments accept either)."""
        for table in self.tables:
            if name in (table.target, table.source):
                return table
        known = ", ".join(t.target for t in self.tables) or "none"
        raise ConfigError(f"{self.path}: no table named {name!r} (configured: {known})")


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in ("password", "secret", "token", "credential", "key"))


# A DSN's secret parameters, in a URL's query (`?password=...&sslmode=...`) or a libpq
# key/value DSN (`host=h password='...'`): any key naming a password, secret or token.
_SECRET_PARAM = re.compile(
    r"(?P<key>(?:^|[?&;\s])[A-Za-z0-9_.-]*(?:pass(?:word|wd)?|pwd|secret|token|credential)"
    r"[A-Za-z0-9_.-]*\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^&\s#]*)",
    re.IGNORECASE,
)


# What precedes a URL's query when it has no user info: host, port, database.
_NO_USER_INFO = re.compile(r"[^:/@?]*(?::\d*)?(?:/[^?@]*)?")


def redact_dsn(dsn: str) -> str:
    """The DSN with every secret in it shown as ***: the password of `user:password@`
    (which may hold `@`, `:`, `/` and other reserved characters, raw or %-encoded) and
    the value of every secret parameter (`password=`, `passwd=`, `sslpassword=`,
    `secret=`, `token=`, ...), in a URL's query or a key/value DSN."""
    text = _SECRET_PARAM.sub(lambda m: m.group("key") + "***", dsn)
    span = _password_span(text)
    return text if span is None else text[: span[0]] + "***" + text[span[1] :]


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The secret values a DSN holds, as written and %-decoded, longest first: the text
    `redact_secrets` removes from messages a driver builds from it."""
    from urllib.parse import unquote

    found = {m.group("value").strip("'") for m in _SECRET_PARAM.finditer(dsn)}
    span = _password_span(dsn)
    if span is not None:
        found.add(dsn[span[0] : span[1]])
    found = {v for v in found if v} | {unquote(v) for v in found if v}
    return tuple(sorted(found, key=len, reverse=True))


def _password_span(dsn: str) -> tuple[int, int] | None:
    """Where the password of a URL's `user:password@` is. The user info ends at the last
    `@` (urllib's rule: a password may hold `@`, and any other character), unless that
    `@` is in the query of a URL that has no user info."""
    scheme_end = dsn.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    at = dsn.rfind("@", start)
    query = dsn.find("?", start)
    if 0 <= query < at and "=" in dsn[query:at] and _NO_USER_INFO.fullmatch(dsn, start, query):
        at = -1  # `host:port/db?key=a@b`: that `@` is in the query
    colon = dsn.find(":", start, at) if at >= 0 else -1
    return None if colon < 0 else (colon + 1, at)


def redact_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every one of `secrets` replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("OFFLOADER_CONFIG") or DEFAULT_CONFIG_PATH
