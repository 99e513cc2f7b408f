"""Read and validate `config/tables.toml` into the objects of config.py.

Every mistake becomes one `ConfigError` line naming the file, the place
(`tables[2] (market.trades).batch_rows`) and what was expected, so the CLI can
print it and exit 2 without a traceback. Defaults come from the config dataclasses.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from offloader.config import (
    PARQUET_BATCH_ROWS,
    CatalogConfig,
    ClickHouseConfig,
    Config,
    MaintenanceConfig,
    PartitionField,
    PostgresConfig,
    RetentionConfig,
    ServiceConfig,
    TableConfig,
    Transport,
    ViewsConfig,
    ViewSecurity,
    format_duration,
    is_secret_key,
    parse_duration,
    parse_partition,
    parse_size,
)
from offloader.days import SECONDS_PER_DAY
from offloader.errors import ConfigError

# `${VAR}`, `${VAR:-default}` and `${credential:NAME}` (the file NAME in
# $CREDENTIALS_DIRECTORY: systemd's LoadCredential=), expanded in one pass.
_ENV_REF = re.compile(r"\$\{(?:credential:([^}]*)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IDENT = re.compile(r"^[^\x00-\x1f]+$")
_Choice = TypeVar("_Choice", bound=str)
# What a table's choices mean, in the error that refuses another value.
_LATE_ROWS = "must be 'alert' (report drifted days) or 'repair' (also repair them)"
_DISTRIBUTED = (
    "must be 'shards' (read each shard's local table) or 'through' (read "
    "through the Distributed table)"
)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError with one clear line."""
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{shown}: file not found (pass --config PATH or set OFFLOADER_CONFIG)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: TOML syntax error: {exc}") from None
    return parse_config(data, shown, os.environ if env is None else env)


def parse_config(data: Mapping[str, Any], path: str, env: Mapping[str, str]) -> Config:
    """Validate a config file's TOML `data` into a Config, section by section (a
    section's mistakes are reported before a later one's)."""
    reader = _Reader(path, env)
    reader.reject_unknown(
        data,
        "",
        {
            *("offloader", "clickhouse", "postgres", "iceberg", "tables", "maintenance"),
            *("views", "retention"),
        },
    )
    service = reader.service(reader.section(data, "offloader", required=False))
    clickhouse = reader.clickhouse(reader.section(data, "clickhouse", required=True))
    postgres = reader.postgres(reader.section(data, "postgres", required=True))
    catalog = reader.catalog(reader.section(data, "iceberg", required=True))
    views = reader.views(reader.section(data, "views", required=False), catalog)
    tables = reader.tables(data.get("tables", []), clickhouse, views, catalog)
    maintenance = reader.maintenance(reader.section(data, "maintenance", required=False))
    retention = reader.retention(reader.section(data, "retention", required=False))
    return Config(
        path, service, clickhouse, postgres, catalog, tables, maintenance, views, retention
    )


class _Reader:
    """Typed access to raw TOML values with errors that say where and what."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env

    def fail(self, where: str, expected: str, got: object) -> NoReturn:
        suffix = ""
        if got is not None and _holds_secret(where):
            # A secret's value is never printed: its key and type are enough to fix it.
            suffix = f", got a {type(got).__name__} (not shown: {where} is a secret)"
        elif got is not None:
            suffix = f", got {_show(got)}"
        raise ConfigError(f"{self.path}: {where} {expected}{suffix}")

    def reject_unknown(self, data: Mapping[str, Any], where: str, known: set[str]) -> None:
        for key in data:
            if key not in known:
                hint = _closest(key, known)
                place = f"{where}.{key}" if where else key
                extra = f" (did you mean {hint!r}?)" if hint else ""
                raise ConfigError(
                    f"{self.path}: {place} is not a known key{extra}; known: "
                    + ", ".join(sorted(known))
                )

    def section(
        self, data: Mapping[str, Any], key: str, *, required: bool, where: str | None = None
    ) -> dict[str, Any]:
        where = where or key
        if key not in data:
            if required:
                raise ConfigError(f"{self.path}: missing section [{where}]")
            return {}
        value = data[key]
        if not isinstance(value, dict):
            self.fail(where, "must be a section (a [table] in TOML)", value)
        return value

    def expand(self, value: str, where: str) -> str:
        def sub(match: re.Match[str]) -> str:
            credential, name, default = match.group(1, 2, 3)
            if credential is not None:
                return self.credential(credential, where)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{self.path}: {where} refers to ${{{name}}}, which is not set in the environment "
                f"(set it, or write ${{{name}:-default}})"
            )

        return _ENV_REF.sub(sub, value)

    def credential(self, name: str, where: str) -> str:
        """The contents of credential `name` (one trailing newline dropped)."""
        if not _CREDENTIAL_NAME.fullmatch(name):
            raise ConfigError(
                f"{self.path}: {where} refers to ${{credential:{name}}}: a credential's name "
                "is letters, digits, '_', '.' and '-' (as in LoadCredential=NAME:PATH)"
            )
        directory = self.env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"{self.path}: {where} refers to ${{credential:{name}}}, but "
                "CREDENTIALS_DIRECTORY is not set (run under systemd with "
                f"LoadCredential={name}:PATH, or set it to a directory holding a file {name})"
            )
        path = Path(directory) / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{self.path}: {where} refers to ${{credential:{name}}}: cannot read {path}: "
                f"{reason} (check LoadCredential={name}:PATH in the unit)"
            ) from None
        return text.removesuffix("\n").removesuffix("\r")

    def string(
        self,
        data: Mapping[str, Any],
        where: str,
        key: str,
        default: str | None,
        *,
        allow_empty: bool = False,
    ) -> str:
        if key not in data:
            if default is None:
                raise ConfigError(f"{self.path}: {where}.{key} is required")
            return default
        value = data[key]
        if not isinstance(value, str):
            self.fail(f"{where}.{key}", "must be a string", value)
        value = self.expand(value, f"{where}.{key}")
        if not allow_empty and not value.strip():
            self.fail(f"{where}.{key}", "must not be empty", value)
        return value

    def integer(
        self, data: Mapping[str, Any], where: str, key: str, default: int, low: int, high: int
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            rng = {0: "a non-negative integer", 1: "a positive integer"}.get(
                low, f"an integer {low}..{high}"
            )
            self.fail(f"{where}.{key}", f"must be {rng}", value)
        if value > high:
            self.fail(f"{where}.{key}", f"must be at most {high}", value)
        return int(value)

    def optional_integer(
        self, data: Mapping[str, Any], where: str, key: str, low: int, high: int
    ) -> int | None:
        if key not in data:
            return None
        return self.integer(data, where, key, 0, low, high)

    def boolean(self, data: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.fail(f"{where}.{key}", "must be true or false", value)
        return bool(value)

    def duration(
        self,
        data: Mapping[str, Any],
        where: str,
        key: str,
        default: float,
        *,
        minimum: float,
    ) -> float:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str):
            self.fail(f"{where}.{key}", "must be a duration string like '30s', '5m' or '1h'", value)
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.fail(f"{where}.{key}", "must be a duration like '30s', '5m' or '1h30m'", value)
        if seconds < minimum or seconds > 366 * SECONDS_PER_DAY:
            self.fail(
                f"{where}.{key}",
                f"must be between {format_duration(minimum)} and 366d",
                value,
            )
        return seconds

    def size(
        self, data: Mapping[str, Any], where: str, key: str, default: int, minimum: int
    ) -> int:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(f"{where}.{key}", "must be a size like '128MB' or a number of bytes", value)
        try:
            size = value if isinstance(value, int) else parse_size(value)
        except ValueError:
            self.fail(f"{where}.{key}", "must be a size like '128MB', '1GiB' or bytes", value)
        if size < minimum:
            self.fail(f"{where}.{key}", f"must be at least {minimum} bytes", value)
        return size

    def service(self, svc: Mapping[str, Any]) -> ServiceConfig:
        """`[offloader]`; the defaults are the dataclass's own, written once."""
        d = ServiceConfig()
        service = ServiceConfig(
            interval=self.duration(svc, "offloader", "interval", d.interval, minimum=1.0),
            max_parallel_tables=self.integer(
                svc, "offloader", "max_parallel_tables", d.max_parallel_tables, 1, 256
            ),
            table_timeout=self.duration(
                svc, "offloader", "table_timeout", d.table_timeout, minimum=1.0
            ),
            shutdown_grace=self.duration(
                svc, "offloader", "shutdown_grace", d.shutdown_grace, minimum=0.0
            ),
            metrics_port=self.optional_integer(svc, "offloader", "metrics_port", 0, 65535),
            metrics_host=self.string(svc, "offloader", "metrics_host", d.metrics_host),
            lag_alert=self.duration(svc, "offloader", "lag_alert", d.lag_alert, minimum=1.0),
            workers=0
            if svc.get("workers", "auto") == "auto"
            else self.integer(svc, "offloader", "workers", d.workers, 1, 64),
        )
        self.reject_unknown(svc, "offloader", set(ServiceConfig.__slots__))
        return service

    def clickhouse(self, ch: Mapping[str, Any]) -> ClickHouseConfig:
        """`[clickhouse]`."""
        c = ClickHouseConfig()
        clickhouse = ClickHouseConfig(
            host=self.string(ch, "clickhouse", "host", c.host),
            port=self.integer(ch, "clickhouse", "port", c.port, 1, 65535),
            user=self.string(ch, "clickhouse", "user", c.user),
            password=self.string(ch, "clickhouse", "password", c.password, allow_empty=True),
            database=self.string(ch, "clickhouse", "database", c.database),
            secure=self.boolean(ch, "clickhouse", "secure", c.secure),
            connect_timeout=self.duration(
                ch, "clickhouse", "connect_timeout", c.connect_timeout, minimum=0.1
            ),
            query_timeout=self.duration(
                ch, "clickhouse", "query_timeout", c.query_timeout, minimum=1.0
            ),
            transport=self.transport(ch, "clickhouse", c.transport),
            http_port=self.integer(ch, "clickhouse", "http_port", c.http_port, 1, 65535),
            http_compression=self.boolean(ch, "clickhouse", "http_compression", c.http_compression),
            http_ports=self.http_ports(ch),
        )
        self.reject_unknown(ch, "clickhouse", set(ClickHouseConfig.__slots__))
        return clickhouse

    def postgres(self, pg: Mapping[str, Any]) -> PostgresConfig:
        """`[postgres]`: `dsn` is required (the dataclass's default is for library use)."""
        postgres = PostgresConfig(
            dsn=self.string(pg, "postgres", "dsn", None),
            schema=self.string(pg, "postgres", "schema", PostgresConfig().schema),
        )
        self.reject_unknown(pg, "postgres", set(PostgresConfig.__slots__))
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", postgres.schema):
            self.fail("postgres.schema", "must be a lower-case SQL identifier", postgres.schema)
        return postgres

    def catalog(self, ice: Mapping[str, Any]) -> CatalogConfig:
        """`[iceberg.catalog]`: `name` and pyiceberg's properties, passed as they are."""
        self.reject_unknown(ice, "iceberg", {"catalog"})
        cat = self.section(ice, "catalog", required=True, where="iceberg.catalog")
        props: dict[str, str] = {}
        for key, value in _flatten(cat).items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                self.fail(f"iceberg.catalog.{key}", "must be a string or number", value)
            props[key] = self.expand(str(value), f"iceberg.catalog.{key}")
        name = props.pop("name", None)
        if not name:
            self.fail("iceberg.catalog.name", "is required (the catalog's name, e.g. 'cold')", None)
        return CatalogConfig(name=str(name), properties=props)

    def tables(
        self,
        raw_tables: object,
        clickhouse: ClickHouseConfig,
        views: ViewsConfig,
        catalog: CatalogConfig,
    ) -> tuple[TableConfig, ...]:
        """`[[tables]]`, each validated, then together: one source per target, targets'
        locations that do not nest, one table per view."""
        if not isinstance(raw_tables, list) or not all(isinstance(t, dict) for t in raw_tables):
            self.fail("tables", "must be an array of tables ([[tables]] blocks)", raw_tables)
        tables = tuple(self.table(i, t, clickhouse, views) for i, t in enumerate(raw_tables))
        seen: dict[str, int] = {}
        for i, table in enumerate(tables):
            if table.target in seen:
                self.fail(
                    f"tables[{i}] ({table.source}).target",
                    f"duplicates tables[{seen[table.target]}].target; each target needs one source",
                    table.target,
                )
            seen[table.target] = i
        _refuse_nested_locations(self, tables, catalog)
        views_seen: dict[str, int] = {}
        for i, table in enumerate(tables):
            if table.view is None:
                continue
            if table.view in views_seen:
                self.fail(
                    f"tables[{i}] ({table.source}).view",
                    f"is also the view of tables[{views_seen[table.view]}]; "
                    "each table needs its own",
                    table.view,
                )
            views_seen[table.view] = i
        return tables

    def maintenance(self, data: Mapping[str, Any]) -> MaintenanceConfig:
        w = "maintenance"
        d = MaintenanceConfig()
        self.reject_unknown(data, w, set(MaintenanceConfig.__slots__))
        return MaintenanceConfig(
            enabled=self.boolean(data, w, "enabled", d.enabled),
            interval=self.duration(data, w, "interval", d.interval, minimum=60.0),
            budget=self.duration(data, w, "budget", d.budget, minimum=1.0),
            settle=self.duration(data, w, "settle", d.settle, minimum=0.0),
            target_file_size=self.size(data, w, "target_file_size", d.target_file_size, 1 << 20),
            snapshot_retention=self.duration(
                data, w, "snapshot_retention", d.snapshot_retention, minimum=0.0
            ),
            metadata_versions=self.integer(
                data, w, "metadata_versions", d.metadata_versions, 1, 1000
            ),
            # Below an hour a slow in-flight write (files written, commit not yet done)
            # could be taken for an orphan.
            orphan_age=self.duration(data, w, "orphan_age", d.orphan_age, minimum=3600.0),
        )

    def retention(self, data: Mapping[str, Any]) -> RetentionConfig:
        w = "retention"
        d = RetentionConfig()
        self.reject_unknown(data, w, set(RetentionConfig.__slots__))
        return RetentionConfig(
            enabled=self.boolean(data, w, "enabled", d.enabled),
            interval=self.duration(data, w, "interval", d.interval, minimum=60.0),
            budget=self.duration(data, w, "budget", d.budget, minimum=1.0),
        )

    def views(self, data: Mapping[str, Any], catalog: CatalogConfig) -> ViewsConfig:
        w = "views"
        d = ViewsConfig()
        self.reject_unknown(data, w, set(ViewsConfig.__slots__))
        suffix = self.string(data, w, "suffix", d.suffix)
        if not suffix or not _IDENT.match(suffix) or "." in suffix:
            self.fail(f"{w}.suffix", "must be a non-empty name part without dots", suffix)
        collection = self.string(data, w, "s3_collection", d.s3_collection)
        if collection and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", collection):
            self.fail(f"{w}.s3_collection", "must be a named collection's name", collection)
        endpoint = self.string(data, w, "s3_endpoint", catalog.properties.get("s3.endpoint", ""))
        if endpoint and not re.match(r"^https?://[^/]+", endpoint):
            self.fail(f"{w}.s3_endpoint", "must be an http:// or https:// URL", endpoint)
        return ViewsConfig(
            enabled=self.boolean(data, w, "enabled", d.enabled),
            suffix=suffix,
            s3_collection=collection,
            s3_endpoint=endpoint.rstrip("/"),
            security=self.view_security(data, w, "security", d.security),
        )

    def view_security(
        self, data: Mapping[str, Any], where: str, key: str, default: ViewSecurity
    ) -> ViewSecurity:
        value = data.get(key, default)
        if value == "definer":
            return "definer"
        if value == "invoker":
            return "invoker"
        self.fail(
            f"{where}.{key}",
            "must be 'definer' (the view reads with offloader's rights: analysts need SELECT "
            "on the view only, the source's row policies and column grants do not apply) or "
            "'invoker' (with the analyst's own: SELECT on the source and the cold tier too)",
            value,
        )

    def view(
        self, data: Mapping[str, Any], label: str, source: str, database: str, views: ViewsConfig
    ) -> str | None:
        """A table's view name, `database.name`: `view = "db.name"` (or `"name"`, in the
        source's database), `view = true` (the default name), `false` (none); absent:
        the default name when [views] enabled."""
        value = data.get("view", views.enabled)
        db, _, name = source.rpartition(".")
        db = db or database
        if value is True:
            return f"{db}.{name}{views.suffix}"
        if value is False:
            return None
        if not isinstance(value, str) or not value.strip() or value.count(".") > 1:
            self.fail(
                f"{label}.view",
                "must be true, false, 'database.view' or 'view' (in the source's database)",
                value,
            )
        if any(not part or not _IDENT.match(part) for part in value.split(".")):
            self.fail(f"{label}.view", "must be a name without control characters", value)
        if "." not in value:
            value = f"{db}.{value}"
        if value == (source if "." in source else f"{db}.{source}"):
            self.fail(f"{label}.view", "must not be the source table itself", value)
        return value

    def http_ports(self, data: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
        """[clickhouse.http_ports]: "host:tcp_port" = http_port, for shards' nodes."""
        raw = data.get("http_ports", {})
        if not isinstance(raw, dict):
            self.fail("clickhouse.http_ports", 'must be a table of "host:tcp_port" = port', raw)
        out = []
        for node, port in raw.items():
            host, _, tcp = str(node).rpartition(":")
            if not host or not tcp.isdigit():
                self.fail("clickhouse.http_ports", 'keys must be "host:tcp_port"', node)
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                self.fail(f"clickhouse.http_ports.{node}", "must be a port number", port)
            out.append((str(node), int(port)))
        return tuple(sorted(out))

    def transport(
        self, data: Mapping[str, Any], where: str, default: Transport | None
    ) -> Transport:
        value = data.get("transport", default)
        if value == "native":
            return "native"
        if value == "arrow":
            return "arrow"
        if value == "parquet":
            return "parquet"
        self.fail(
            f"{where}.transport",
            "must be 'native' (asynch, native TCP), 'arrow' (HTTP, FORMAT ArrowStream) or "
            "'parquet' (HTTP, FORMAT Parquet: ClickHouse encodes the data files)",
            value,
        )

    def table(
        self,
        index: int,
        data: Mapping[str, Any],
        clickhouse: ClickHouseConfig,
        views: ViewsConfig,
    ) -> TableConfig:
        """`tables[index]`: the defaults are TableConfig's own, and those of [clickhouse]
        and [views] where a table's key overrides them."""
        label = f"tables[{index}]"
        if isinstance(data.get("source"), str) and data["source"].strip():
            label = f"tables[{index}] ({data['source']})"
        self.reject_unknown(data, label, set(TableConfig.__slots__))
        source, target, watermark, keys = self.table_names(data, label)
        partitions = self.partition_by(data, label)
        d = _TABLE_DEFAULTS
        uint64 = self.choice(data, label, "uint64", d["uint64"], ("error", "decimal"))
        strings = self.choice(data, label, "strings", d["strings"], ("string", "binary"))
        own = self.transport(data, label, None) if "transport" in data else None
        batch_rows, append_rows, max_rows = self.page_rows(data, label, own or clickhouse.transport)
        late_rows = self.choice(
            data, label, "late_rows", d["late_rows"], ("alert", "repair"), _LATE_ROWS
        )
        distributed = self.choice(
            data, label, "distributed", d["distributed"], ("shards", "through"), _DISTRIBUTED
        )
        return TableConfig(
            source=source,
            target=target,
            watermark=watermark,
            keys=keys,
            lag=self.duration(data, label, "lag", d["lag"], minimum=0.0),
            batch_rows=batch_rows,
            append_rows=max(append_rows, batch_rows),
            max_rows_per_cycle=max_rows,
            partition_by=partitions,
            enabled=self.boolean(data, label, "enabled", d["enabled"]),
            uint64=uint64,
            strings=strings,
            transport=own,
            audit_days=self.integer(data, label, "audit_days", d["audit_days"], 0, 366),
            late_rows=late_rows,
            audit_checksums=self.boolean(data, label, "audit_checksums", d["audit_checksums"]),
            final=self.boolean(data, label, "final", d["final"]),
            distributed=distributed,
            view=self.view(data, label, source, clickhouse.database, views),
            view_security=self.view_security(data, label, "view_security", views.security),
            hot_retention=(
                self.duration(data, label, "hot_retention", 0.0, minimum=3600.0)
                if "hot_retention" in data
                else None
            ),
            retiring_table=self.retiring(data, label),
        )

    def table_names(
        self, data: Mapping[str, Any], label: str
    ) -> tuple[str, str, str, tuple[str, ...]]:
        """A table's source, target, watermark and keys: required, well-formed names."""
        source = self.string(data, label, "source", None)
        target = self.string(data, label, "target", None)
        if target.count(".") < 1 or any(not part for part in target.split(".")):
            self.fail(f"{label}.target", "must be 'namespace.table'", target)
        if source.count(".") > 1 or any(not part for part in source.split(".")):
            self.fail(f"{label}.source", "must be 'database.table' or 'table'", source)
        watermark = self.string(data, label, "watermark", None)
        keys_raw = data.get("keys")
        if keys_raw is None:
            raise ConfigError(
                f"{self.path}: {label}.keys is required: the columns that, with the watermark, "
                'identify a row (e.g. keys = ["trade_id"])'
            )
        if (
            not isinstance(keys_raw, list)
            or not keys_raw
            or not all(isinstance(k, str) and k.strip() for k in keys_raw)
        ):
            self.fail(f"{label}.keys", "must be a non-empty list of column names", keys_raw)
        keys = tuple(str(k) for k in keys_raw)
        if len(set(keys)) != len(keys) or watermark in keys:
            self.fail(f"{label}.keys", "must not repeat a column or the watermark column", keys_raw)
        for name in (source, target, watermark, *keys):
            if not _IDENT.match(name):
                self.fail(label, "names must not contain control characters", name)
        return source, target, watermark, keys

    def partition_by(self, data: Mapping[str, Any], label: str) -> tuple[PartitionField, ...]:
        partitions_raw = data.get("partition_by", [])
        if not isinstance(partitions_raw, list) or not all(
            isinstance(p, str) for p in partitions_raw
        ):
            self.fail(f"{label}.partition_by", "must be a list of strings", partitions_raw)
        partitions = []
        for p in partitions_raw:
            try:
                partitions.append(parse_partition(p))
            except ValueError as exc:
                raise ConfigError(f"{self.path}: {label}.partition_by: {exc}") from None
        return tuple(partitions)

    def page_rows(
        self, data: Mapping[str, Any], label: str, transport: Transport
    ) -> tuple[int, int, int]:
        """A table's batch_rows, append_rows (as written) and max_rows_per_cycle."""
        d = _TABLE_DEFAULTS
        # A parquet page is one data file ClickHouse encodes: bigger pages by default.
        pages = PARQUET_BATCH_ROWS if transport == "parquet" else d["batch_rows"]
        batch_rows = self.integer(data, label, "batch_rows", pages, 1, 10_000_000)
        append_rows = self.integer(data, label, "append_rows", d["append_rows"], 1, 100_000_000)
        max_rows = self.integer(
            data, label, "max_rows_per_cycle", d["max_rows_per_cycle"], 1, 2**62
        )
        return batch_rows, append_rows, max_rows

    def choice(
        self,
        data: Mapping[str, Any],
        where: str,
        key: str,
        default: _Choice,
        allowed: tuple[_Choice, ...],
        expected: str = "",
    ) -> _Choice:
        """`key`'s value, one of `allowed`; else fails with `expected` (by default:
        "must be 'a' or 'b'")."""
        value = data.get(key, default)
        for option in allowed:
            if value == option:
                return option
        expected = expected or "must be " + " or ".join(repr(option) for option in allowed)
        self.fail(f"{where}.{key}", expected, value)

    def retiring(self, data: Mapping[str, Any], label: str) -> str | None:
        if "retiring_table" not in data:
            return None
        name = self.string(data, label, "retiring_table", None)
        if "hot_retention" not in data:
            self.fail(f"{label}.retiring_table", "is used by hot_retention, which is not set", name)
        if "." in name or not _IDENT.match(name):
            self.fail(
                f"{label}.retiring_table",
                "must be a table name (no database: it is the source's own, on every node)",
                name,
            )
        return name


_TABLE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TableConfig) if f.default is not MISSING
}


def table_location(catalog: CatalogConfig, target: str) -> str:
    """Where the catalog places `target` by default, below its warehouse: Hive, Glue and
    DynamoDB catalogs at `<namespace>.db/<table>`, pyiceberg's others (SQL) and the
    usual REST catalogs at `<namespace>/<table>`."""
    namespace, _, name = target.rpartition(".")
    kind = catalog.properties.get("type", "")
    if kind in ("hive", "glue", "dynamodb") or (
        not kind and catalog.properties.get("uri", "").startswith("thrift")
    ):
        return f"{namespace}.db/{name}"
    return f"{namespace}/{name}"


def _refuse_nested_locations(
    reader: _Reader, tables: Sequence[TableConfig], catalog: CatalogConfig
) -> None:
    """Two targets whose locations nest (one a directory above the other) would each
    see the other's files as its own orphans: refused, naming both."""
    located = sorted((table_location(catalog, t.target) + "/", i) for i, t in enumerate(tables))
    for (outer, i), (inner, j) in itertools.pairwise(located):
        if inner.startswith(outer):
            reader.fail(
                f"tables[{j}] ({tables[j].source}).target",
                f"is placed at {inner.rstrip('/')}, inside the location of tables[{i}] "
                f"({tables[i].target}) at {outer.rstrip('/')}, below the warehouse; each "
                "table needs a location of its own: rename one target",
                tables[j].target,
            )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`s3.endpoint = "..."` written without quotes is a nested table in TOML; pyiceberg
    wants the dotted key, so both spellings work."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _holds_secret(where: str) -> bool:
    """Whether the key at `where` (`clickhouse.password`, `postgres.dsn`,
    `iceberg.catalog.s3.secret-access-key`, `iceberg.catalog.token.value`) holds a secret,
    whose value is never shown. No table setting is one."""
    if where.startswith("tables["):  # `tables[0] (market.x).keys`: table settings
        return False
    keys = where.split(".")[1:]
    return "dsn" in keys or any(is_secret_key(key) for key in keys)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
