"""The grants offloader's users need for one config, and nothing wider: `offloader grants`.

ClickHouse: SELECT on each configured source (and, for a `Distributed` source, on the
local table it spreads over, on every node), the system tables the audit and retention
read, ALTER DELETE and INSERT on the tables hot retention parks and drops partitions of
(the source's own, or its retiring table), CREATE/DROP VIEW on each view over both tiers
and the table functions its cold side reads. PostgreSQL: the state database, in which
offloader creates its own schema. Pure: what a feature in use needs is decided from the
config alone; which sources are `Distributed` the caller says (`--local-table`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from offloader.config import Config, TableConfig
from offloader.errors import ConfigError
from offloader.sql import grants as sql
from offloader.sql.text import qualified, quote_ident


@dataclass(frozen=True, slots=True)
class Grant:
    """`GRANT privileges ON on`, for `feature` (the word a missing grant is known by)."""

    privileges: str
    on: str
    feature: str
    why: str

    def statement(self, user: str) -> str:
        return sql.grant_statement(self.privileges, self.on, user, f"{self.feature}: {self.why}")


def parse_local_tables(pairs: list[str], cfg: Config) -> dict[str, str]:
    """`--local-table DIST=DB.LOCAL` arguments: {configured source: its local table}."""
    out: dict[str, str] = {}
    sources = {_source_name(t, cfg): t for t in cfg.tables}
    for pair in pairs:
        dist, sep, local = pair.partition("=")
        if not sep or local.count(".") != 1 or not all(local.split(".")):
            raise ConfigError(
                f"--local-table {pair!r}: expected SOURCE=DATABASE.TABLE, e.g. "
                "market.trades=market.trades_local"
            )
        name = dist if "." in dist else f"{cfg.clickhouse.database}.{dist}"
        if name not in sources:
            known = ", ".join(sorted(sources)) or "none"
            raise ConfigError(
                f"--local-table {pair!r}: {name} is not a configured source (configured: {known})"
            )
        out[name] = local
    return out


def clickhouse_grants(cfg: Config, local_tables: Mapping[str, str]) -> list[Grant]:
    """Every grant offloader's ClickHouse user needs for `cfg`, in a stable order, each
    once. `local_tables`: {Distributed source: the local table under it on every node}."""
    grants: list[Grant] = []
    for table in cfg.tables:
        grants += _table_grants(table, cfg, local_tables.get(_source_name(table, cfg)))
    grants.append(
        Grant(sql.SELECT, "system.parts", "parts", "the audit's parts fingerprint, retention")
    )
    if any(t.hot_retention is not None for t in cfg.tables):
        why = "retention's detach-compare-drop"
        grants.append(Grant(sql.SELECT, "system.detached_parts", "detached", why))
    if any(t.hot_retention is not None and t.retiring_table for t in cfg.tables):
        why = "retention uses a Replicated replica only in sync (system.replicas)"
        grants.append(Grant(sql.SELECT, "system.replicas", "retention", why))
    if any(t.view is not None for t in cfg.tables):
        grants += _cold_side(cfg)
    if local_tables:
        why = "the shards and replicas, views on every node"
        grants.append(Grant(sql.SELECT, "system.clusters", "clusters", why))
        why = "clusterAllReplicas: the parts fingerprint, HTTP ports, views on every node"
        grants.append(Grant(sql.READ, "REMOTE", "remote", why))
        why = "a shard is read on a replica in sync (system.replicas: delay, fetches)"
        grants.append(Grant(sql.SELECT, "system.replicas", "replicas", why))
    seen: set[tuple[str, str]] = set()
    unique = []
    for grant in grants:
        if (grant.privileges, grant.on) not in seen:
            seen.add((grant.privileges, grant.on))
            unique.append(grant)
    return unique


def _table_grants(table: TableConfig, cfg: Config, local: str | None) -> list[Grant]:
    db, name = _source_name(table, cfg).split(".", 1)
    source = qualified(db, name)
    grants = [Grant(sql.SELECT, source, "source", f"the rows of {table.target}")]
    # Retention works on the table that holds the parts: the local one of a Distributed
    # source, on every node; the retiring table sits beside it.
    held_db, held = (db, name) if local is None else local.split(".", 1)
    if local is not None:
        why = f"{table.target}: the shards' rows, read on each node"
        grants.append(Grant(sql.SELECT, qualified(held_db, held), "source", why))
    if table.hot_retention is not None:
        why = f"{table.target}: hot retention (DETACH/DROP DETACHED, ATTACH back; MOVE PARTITION)"
        grants.append(Grant(sql.PARK_AND_DROP, qualified(held_db, held), "retention", why))
        if table.retiring_table is not None:
            why = f"{table.target}: retention's retiring table (MOVE in and back, DROP PARTITION)"
            on = qualified(held_db, table.retiring_table)
            grants.append(Grant(sql.RETIRING, on, "retention", why))
    if table.view is not None:
        vdb, vname = table.view.split(".", 1)
        why = f"{table.target}: the view over both tiers (CREATE OR REPLACE VIEW)"
        grants.append(Grant(sql.VIEWS, qualified(vdb, vname), "views", why))
    return grants


def _cold_side(cfg: Config) -> list[Grant]:
    """The table functions by which ClickHouse reads the views' cold side: icebergLocal
    for a local warehouse, icebergS3 through [views] s3_collection for S3."""
    warehouse = cfg.catalog.properties.get("warehouse", "")
    scheme = urlsplit(warehouse).scheme
    temporary = Grant(
        sql.TEMPORARY_TABLES, "*.*", "cold", "the table functions of the views' cold side"
    )
    if scheme in ("", "file"):
        return [Grant(sql.READ, "FILE", "cold", "icebergLocal, the views' cold side"), temporary]
    if scheme in ("s3", "s3a", "s3n"):
        grants = [Grant(sql.READ, "S3", "cold", "icebergS3, the views' cold side"), temporary]
        if cfg.views.s3_collection:
            why = "the S3 credentials of the views' cold side"
            on = quote_ident(cfg.views.s3_collection)
            grants.append(Grant(sql.NAMED_COLLECTION, on, "cold", why))
        return grants
    raise ConfigError(
        f"{cfg.path}: [iceberg.catalog] warehouse {warehouse!r}: ClickHouse reads only "
        "file:// and s3:// warehouses for the views; set view = false on every table"
    )


def postgres_statements(cfg: Config, default_role: str) -> list[str]:
    """What the state database's user needs: to connect and to create offloader's schema
    (created, and migrated, by offloader itself at start) in the database of the DSN.
    `default_role`: the role a DSN without a user connects as (PGUSER, the OS user)."""
    parts = urlsplit(cfg.postgres.dsn)
    database = unquote(parts.path.lstrip("/")) or "postgres"
    role = unquote(parts.username or "") or default_role
    why = f'offloader creates (and migrates) its schema "{cfg.postgres.schema}" in it'
    return [sql.postgres_grant(database, role, why)]


def _source_name(table: TableConfig, cfg: Config) -> str:
    return f"{table.source_database or cfg.clickhouse.database}.{table.source_table}"
