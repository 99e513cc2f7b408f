"""`offloader add`: put a ClickHouse table under offloader in one command.

ClickHouse already knows most of what a `[[tables]]` block says: the sorting key holds
the watermark (its first time column) and the keys (the rest), the partition key gives
the Iceberg partitioning, a TTL gives the hot retention, the engine says whether the
rows are read with FINAL, whether the source is Distributed and whether retention needs
a retiring table. `propose` turns that metadata into a block (pure, unit-tested without
servers); `inspect` reads it (system.tables, system.columns) and checks, live, what the
metadata cannot promise: that (watermark, keys) identifies a row, whether a UInt64
column exceeds Int64, whether a String column holds bytes that are not UTF-8. `write`
appends the blocks to the config file with tomlkit, keeping its comments and layout.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from offloader.config import Config
from offloader.configfile import parse_config
from offloader.errors import ConfigError, TableError
from offloader.source import Source, open_source, open_table, table_columns, ttl_clause
from offloader.sql.profile import misfits_query, ties_query
from offloader.sql.retention import remove_ttl, retiring_ddl
from offloader.sql.system import readable_tables_query, table_query
from offloader.sql.text import qualified, quote_ident, read_from

__all__ = ["Proposal", "SourceInfo", "add", "inspect", "propose", "render", "write"]

TIME_TYPES = ("DateTime64", "DateTime", "Date32", "Date")
FINAL_ENGINES = ("ReplacingMergeTree", "CollapsingMergeTree", "VersionedCollapsingMergeTree")
# A partition key function of the watermark and the Iceberg transform that partitions alike.
PARTITION_TRANSFORMS = {
    "toYYYYMMDD": "day",
    "toDate": "day",
    "toStartOfDay": "day",
    "toYYYYMM": "month",
    "toStartOfMonth": "month",
    "toYear": "year",
    "toStartOfYear": "year",
}
TTL_UNITS = {"Second": "s", "Minute": "m", "Hour": "h", "Day": "d"}
_IDENT = re.compile(r"^`?([A-Za-z_][A-Za-z0-9_]*)`?$")


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What ClickHouse says of a table (for a Distributed one: of its local table, with
    the Distributed table's own name and engine)."""

    database: str
    name: str
    engine: str  # the source's engine: MergeTree, ReplicatedReplacingMergeTree, Distributed...
    engine_full: str  # the (local) table's full engine clause, for a retiring table's DDL
    sorting_key: str
    partition_key: str
    ttl: str | None
    columns: tuple[tuple[str, str], ...]
    local_engine: str | None = None  # a Distributed source's local table engine
    local_table: tuple[str, str] | None = None  # (database, table) of a Distributed's local

    @property
    def source(self) -> str:
        return f"{self.database}.{self.name}"

    @property
    def family(self) -> str:
        """The MergeTree engine that stores the rows (the local one for Distributed)."""
        return self.local_engine or self.engine


@dataclass(slots=True)
class Proposal:
    """A `[[tables]]` block (ordered keys), the comments that explain it, and the
    statements the user must run before retention can work (a retiring table)."""

    source: str
    block: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


def split_expressions(text: str) -> list[str]:
    """ClickHouse's comma-separated expression list, split at top-level commas."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current.strip())
    inner = parts[0] if len(parts) == 1 else None
    if inner is not None and inner.startswith("tuple(") and inner.endswith(")"):
        return split_expressions(inner[len("tuple(") : -1])
    return parts


def bare_column(expression: str) -> str | None:
    match = _IDENT.match(expression.strip())
    return match.group(1) if match else None


def _base_type(ch_type: str) -> str:
    """The type without LowCardinality/Nullable wrappers and without arguments."""
    t = ch_type.strip()
    for wrapper in ("LowCardinality(", "Nullable("):
        while t.startswith(wrapper):
            t = t[len(wrapper) : -1]
    return t.split("(", 1)[0]


def propose(info: SourceInfo, namespace: str) -> Proposal:
    """The block for `info`, or ConfigError saying why no block fits and what to do."""
    types = dict(info.columns)
    sorting = split_expressions(info.sorting_key)
    bare = [bare_column(e) for e in sorting]
    watermark = next(
        (c for c in bare if c is not None and _base_type(types.get(c, "")) in TIME_TYPES), None
    )
    if watermark is None:
        raise ConfigError(
            f"{info.source}: no usable watermark: its sorting key ({info.sorting_key or 'none'}) "
            "has no bare DateTime, DateTime64, Date or Date32 column. Choose a column whose "
            "values only grow as rows arrive (an insert time, or an increasing integer id) and "
            "that starts the sorting key, then write the [[tables]] block by hand "
            "(watermark, keys) and check it with `offloader validate`"
        )
    if types.get(watermark, "").startswith("Nullable("):
        raise ConfigError(
            f"{info.source}: watermark column {watermark} is Nullable: rows with NULL would "
            "never be offloaded; make it non-Nullable or choose another column"
        )
    keys = [c for c in bare if c is not None and c != watermark]
    if not keys or len(keys) != len(bare) - 1:
        raise ConfigError(
            f"{info.source}: the sorting key ({info.sorting_key}) gives no key columns beside "
            f"the watermark {watermark} (or holds expressions): choose columns that with "
            f"{watermark} identify a row and write keys = [...] by hand"
        )
    block: dict[str, Any] = {
        "source": info.source,
        "target": f"{namespace}.{info.name}",
        "watermark": watermark,
        "keys": keys,
    }
    proposal = Proposal(info.source, block)
    proposal.notes.append(
        f"watermark and keys from the sorting key ({info.sorting_key}); "
        "(watermark, keys) must identify a row"
    )
    partition = partition_transform(info.partition_key, watermark)
    block["partition_by"] = [partition or f"day({watermark})"]
    if partition is None:
        proposal.notes.append(
            f"partition_by: day({watermark}) (the partition key "
            f"{info.partition_key or 'tuple()'} has no Iceberg transform of the watermark)"
        )
    if info.family.removeprefix("Replicated") in FINAL_ENGINES:
        block["final"] = True
        proposal.notes.append(f"final = true: {info.family} collapses rows at merges")
    if info.engine == "Distributed":
        block["distributed"] = "shards"
        proposal.notes.append(
            'distributed = "shards": each shard\'s local table is read on one replica'
        )
    _retention(info, watermark, proposal)
    return proposal


def partition_transform(partition_key: str, watermark: str) -> str | None:
    """The Iceberg transform of the watermark that partitions as `partition_key` does."""
    match = re.fullmatch(r"\s*(\w+)\(\s*`?(\w+)`?\s*\)\s*", partition_key or "")
    if not match or match.group(2) != watermark:
        return None
    transform = PARTITION_TRANSFORMS.get(match.group(1))
    return f"{transform}({watermark})" if transform else None


def ttl_duration(ttl: str | None, watermark: str) -> str | None:
    """A TTL `wm + toIntervalDay(7)` (also over toDate/toDateTime of the watermark) as
    the duration "7d"; None for any other TTL (months, other columns, several rules)."""
    if not ttl:
        return None
    match = re.fullmatch(
        r"\s*(?:to\w+\(\s*)?`?(\w+)`?\s*\)?\s*\+\s*toInterval(\w+?)\((\d+)\)\s*(?:DELETE)?\s*",
        ttl,
    )
    if not match or match.group(1) != watermark:
        return None
    unit, count = match.group(2), int(match.group(3))
    if unit == "Week":
        return f"{7 * count}d"
    return f"{count}{TTL_UNITS[unit]}" if unit in TTL_UNITS else None


def _retention(info: SourceInfo, watermark: str, proposal: Proposal) -> None:
    retention = ttl_duration(info.ttl, watermark)
    if retention is None:
        if info.ttl:
            proposal.notes.append(
                f"TTL {info.ttl} kept as it is (no hot_retention proposed: only a TTL of "
                "the watermark plus seconds to weeks translates)"
            )
        return
    proposal.block["hot_retention"] = retention
    db, table = info.local_table or (info.database, info.name)
    proposal.notes.append(
        f"hot_retention = {retention!r} from the TTL ({info.ttl}): once `offloader retain` "
        f"has verified and dropped partitions, remove the TTL ({remove_ttl(db, table)}) "
        "so that only verified partitions are dropped"
    )
    if info.family.startswith("Replicated"):
        retiring = f"{table}_retiring"
        proposal.block["retiring_table"] = retiring
        proposal.statements.append(retiring_ddl(db, table, retiring, info.engine_full))
        proposal.notes.append(
            f"retiring_table = {retiring!r}: retention of a Replicated table moves a "
            "partition there before dropping it; create it on every node first"
        )


async def inspect(source: Source, database: str, table: str) -> SourceInfo:
    """Read what `propose` needs of `database.table` (and its local table if Distributed)."""
    row = await _table_row(source, database, table)
    engine, engine_full = str(row[0]), str(row[1])
    local: tuple[str, str] | None = None
    meta_row = row
    if engine == "Distributed":
        args = split_expressions(engine_full[engine_full.index("(") + 1 : engine_full.rindex(")")])
        local_db = args[1].strip("'`\"") if len(args) > 1 else database
        local = (local_db or database, args[2].strip("'`\""))
        meta_row = await _table_row(source, *local)
    columns = await table_columns(source, database, table)
    return SourceInfo(
        database=database,
        name=table,
        engine=engine,
        engine_full=str(meta_row[1]),
        sorting_key=str(meta_row[2]),
        partition_key=str(meta_row[3]),
        ttl=ttl_clause(str(meta_row[4])),
        columns=tuple(columns),
        local_engine=str(meta_row[0]) if local else None,
        local_table=local,
    )


async def _table_row(source: Source, database: str, table: str) -> tuple[Any, ...]:
    rows = await source.rows(table_query(database, table))
    if not rows:
        raise ConfigError(f"{database}.{table}: no such table in ClickHouse")
    return rows[0]


async def tables_of(source: Source, database: str) -> list[str]:
    """The tables of `database` offloader can read (MergeTree family or Distributed)."""
    rows = await source.rows(readable_tables_query(database))
    return [str(r[0]) for r in rows]


async def check_live(source: Source, info: SourceInfo, proposal: Proposal) -> None:
    """What the metadata cannot promise, asked of the rows: whether (watermark, keys)
    identifies a row over the newest day (a note when not: ties are read whole, but a
    group of ties is one page); UInt64 values fit Int64 (else uint64 = "decimal"); String
    columns hold UTF-8 (else strings = "binary")."""
    block = proposal.block
    wm, keys = block["watermark"], block["keys"]
    relation = read_from(info.database, info.name, bool(block.get("final")))
    position = ", ".join(quote_ident(c) for c in (wm, *keys))
    largest = await source.scalar(ties_query(relation, wm, (wm, *keys)))
    if int(largest or 0) > 1:
        proposal.notes.append(
            f"({position}) does not identify a row: up to {int(largest)} rows of the newest "
            "day share a position. That is safe (a page always ends on a whole group of "
            "equal positions) but each group is read in one page: add the columns that "
            "tell such rows apart to keys if groups can grow large"
        )
    checks = []
    for name, ch_type in info.columns:
        base = _base_type(ch_type)
        if base == "UInt64":
            checks.append((name, "uint64"))
        elif base == "String":
            checks.append((name, "strings"))
    if not checks:
        return
    found = await source.rows(misfits_query(qualified(info.database, info.name), checks))
    for (name, key), hit in zip(checks, found[0] if found else (), strict=False):
        if not int(hit or 0) or key in block:
            continue
        block[key] = "decimal" if key == "uint64" else "binary"
        proposal.notes.append(
            f"{key} = {block[key]!r}: column {name} holds "
            + ("values above 2^63-1" if key == "uint64" else "bytes that are not UTF-8")
        )


def render(proposal: Proposal) -> str:
    """The block as the config file will hold it, with its notes as comments."""
    doc = tomlkit.document()
    doc.add("tables", _aot([proposal]))
    notes = "".join(f"# {n}\n" for n in proposal.notes)
    ddl = "".join(f"# run first, on every node: {s};\n" for s in proposal.statements)
    return notes + ddl + tomlkit.dumps(doc).strip() + "\n"


def _aot(proposals: Sequence[Proposal]) -> AoT:
    aot = tomlkit.aot()
    for p in proposals:
        table: Table = tomlkit.table()
        for key, value in p.block.items():
            table.add(key, value)
        aot.append(table)
    return aot


def configured_sources(document: Mapping[str, Any]) -> set[str]:
    return {str(t.get("source")) for t in document.get("tables", []) if isinstance(t, Mapping)}


def write(path: Path, proposals: Sequence[Proposal]) -> None:
    """Append the blocks to the config file, keeping its comments and layout; refuse a
    source the file already configures (nothing written then)."""
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    taken = configured_sources(document) & {p.source for p in proposals}
    if taken:
        raise ConfigError(
            f"{path}: {', '.join(sorted(taken))} already configured; edit its block instead"
        )
    tables = document.get("tables")
    if tables is None:
        document.add("tables", _aot(proposals))
    else:
        for table in _aot(proposals):
            tables.append(table)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")


async def add(
    cfg: Config, sources: Sequence[str], database: str | None, namespace: str | None, dry_run: bool
) -> int:
    """`offloader add`: propose, check live and (unless `dry_run`) write a block for each
    source, or for every readable table of `database` not yet configured. Named sources
    are all or nothing; with `database`, the tables that fit are written and the others
    named with why. Returns the exit code (0: every source proposed)."""
    path = Path(cfg.path)
    document = tomlkit.parse(path.read_text(encoding="utf-8"))  # noqa: ASYNC240 (small, local)
    configured = configured_sources(document)
    namespace = namespace or _usual_namespace(cfg)
    proposals: list[Proposal] = []
    problems: list[str] = []
    async with open_source(cfg.clickhouse, "add", "native") as session:
        names = list(sources)
        if database:
            names += [n for n in await _candidates(session, database) if n not in configured]
        for name in dict.fromkeys(names):
            try:
                if name in configured:
                    raise ConfigError(f"{name}: already configured in {path}; edit its block")
                db, _, table = name.rpartition(".")
                info = await inspect(session, db or cfg.clickhouse.database, table)
                proposal = propose(info, namespace)
                await check_live(session, info, proposal)
                await _validate(cfg, document, proposal)
                proposals.append(proposal)
            except (ConfigError, TableError) as exc:
                problems.append(str(exc))
    for proposal in proposals:
        print(render(proposal))
    for problem in problems:
        print(f"not added: {problem}", file=sys.stderr)
    if problems and not database:
        print(f"{path}: nothing written", file=sys.stderr)
        return 1
    if dry_run or not proposals:
        print(f"{path}: nothing written" + (" (--dry-run)" if dry_run else ""), file=sys.stderr)
    else:
        write(path, proposals)
        print(f"{path}: added {', '.join(p.source for p in proposals)}", file=sys.stderr)
    return 1 if problems else 0


async def _candidates(session: Source, database: str) -> list[str]:
    """`database`'s readable tables, without the local tables its Distributed tables read."""
    names = await tables_of(session, database)
    locals_ = set()
    for name in names:
        info = await inspect(session, database, name)
        if info.local_table and info.local_table[0] == database:
            locals_.add(info.local_table[1])
    return [f"{database}.{n}" for n in names if n not in locals_]


async def _validate(cfg: Config, document: Any, proposal: Proposal) -> None:
    """The block as the config parser and a table run see it: parsed with the rest of
    the file (names, keys, partitions, conflicts with other tables), then opened live
    (types the transport cannot store are refused here, before anything is written)."""
    candidate = tomlkit.parse(tomlkit.dumps(document))
    if candidate.get("tables") is None:
        candidate.add("tables", tomlkit.aot())
    candidate["tables"].append(_aot([proposal])[0])
    parsed = parse_config(tomllib.loads(tomlkit.dumps(candidate)), cfg.path, os.environ)
    table = next(t for t in parsed.tables if t.source == proposal.source)
    async with open_table(parsed.clickhouse, table) as src:
        src.source.pager(table, src.plan)


def _usual_namespace(cfg: Config) -> str:
    """The Iceberg namespace most configured tables use ("cold" when there are none)."""
    counts = Counter(t.target_namespace for t in cfg.tables)
    return counts.most_common(1)[0][0] if counts else "cold"
