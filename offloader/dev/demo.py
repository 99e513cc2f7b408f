"""Sample data for the quick start and the benchmarks: realistic trades tables.

python -m offloader.dev.demo --port 9000 --rows 200000 [--config-out var/quickstart.toml]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import anyio

from offloader.config import ClickHouseConfig
from offloader.dev import devstore
from offloader.source import native

_TRADES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.{name} (
    exchange_ts   DateTime64(6, 'UTC'),
    received_ts   DateTime64(6, 'UTC'),
    trade_id      UInt64,
    symbol        LowCardinality(String),
    price         Decimal(28, 10),
    quantity      Decimal(28, 10),
    side          Enum8('buy' = 1, 'sell' = 2),
    is_maker      Bool,
    venue_seq     Nullable(Int64),
    tags          Array(LowCardinality(String))
) ENGINE = MergeTree
ORDER BY (exchange_ts, trade_id)
"""


def trades_ddl(db: str, name: str, *, partitioned: bool = False) -> str:
    """The one trades table of the quick start, the tests and the benchmarks: the
    shapes market-data tables have (microsecond exchange and receive times, a UInt64
    id, LowCardinality symbols, Decimal prices, an Enum side, a Nullable column and an
    Array). `partitioned`: by the UTC day of exchange_ts, as hot_retention needs (the
    quick start's tables: offloader, not a TTL, drops their old days)."""
    ddl = _TRADES_DDL.format(db=db, name=name)
    if partitioned:
        ddl = ddl.replace("ORDER BY", "PARTITION BY toYYYYMMDD(exchange_ts)\nORDER BY")
    return ddl


# `count` trades spread evenly after `start_us` over `span_us` microseconds (UTC), three
# trades per timestamp so ties at page boundaries are exercised.
TRADES_INSERT = """
INSERT INTO {db}.{name}
SELECT
    fromUnixTimestamp64Micro(toInt64({start_us}
        + intDiv((intDiv(number, 3) * 3 + 1) * {span_us}, {count})), 'UTC') AS exchange_ts,
    exchange_ts + toIntervalMillisecond(number % 50) AS received_ts,
    {first_id} + number AS trade_id,
    ['BTC-USDT', 'ETH-USDT', 'SOL-USDT', 'XRP-USDT'][number % 4 + 1] AS symbol,
    toDecimal128(60000 + (number % 1000) / 7, 10) AS price,
    toDecimal128((number % 97 + 1) / 1000, 10) AS quantity,
    if(number % 2 = 0, 'buy', 'sell') AS side,
    number % 3 = 0 AS is_maker,
    if(number % 10 = 0, NULL, toInt64(number)) AS venue_seq,
    if(number % 5 = 0, ['block'], []) AS tags
FROM numbers({count})
"""

TABLES = ("bronze_trades_binance", "bronze_trades_kraken")
CLUSTER = "offloader_cluster"  # the cluster devserver.start_cluster forms


async def make_sharded(
    nodes: list[ClickHouseConfig], db: str, cluster: str, tables: tuple[str, ...] = TABLES
) -> None:
    """On every node of the cluster: `<name>_local` (the shard's rows) and `<name>`, a
    Distributed table over them sharded by trade_id, for each table."""
    for node in nodes:
        async with native.session(node, "demo") as ch:
            await ch.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
            for name in tables:
                await ch.execute(trades_ddl(db, f"{name}_local", partitioned=True))
                await ch.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.{name} AS {db}.{name}_local ENGINE = "
                    f"Distributed({cluster}, {db}, {name}_local, trade_id)"
                )


async def load(cfg: ClickHouseConfig, db: str, rows: int, tables: tuple[str, ...] = TABLES) -> None:
    """Create the tables if needed and add `rows` trades to each.

    A new table gets three days of trades ending 30 minutes ago (so hot_retention = "1d"
    has old days to show: `offloader retain --dry-run`). A table that has rows gets
    new trades after its newest one, ending 6 minutes ago, so they are past the 5-minute
    lag and land after the watermark (never "late" rows offloader would not see).
    """
    async with native.session(cfg, "demo") as ch:
        await ch.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        for name in tables:
            await ch.execute(trades_ddl(db, name, partitioned=True))
            newest, last_id, now, count = (
                await ch.rows(
                    "SELECT toUnixTimestamp64Micro(max(exchange_ts)), max(trade_id), "
                    f"toUnixTimestamp64Micro(now64(6, 'UTC')), count() FROM {db}.{name}"
                )
            )[0]
            if count:
                start, end = int(newest), int(now) - 360_000_000
                if end <= start:
                    print(f"{name}: newest row is recent; no rows added this time")
                    continue
                first_id = int(last_id) + 1
            else:
                end = int(now) - 1_800_000_000
                start, first_id = end - 3 * 86_400_000_000, 1
            await ch.execute(
                TRADES_INSERT.format(
                    db=db,
                    name=name,
                    count=rows,
                    start_us=start,
                    span_us=end - start,
                    first_id=first_id,
                )
                # A Distributed table (the --cluster quick start): on the shards before
                # it returns.
                + " SETTINGS distributed_foreground_insert = 1"
            )


RETENTION = """# offloader, not a ClickHouse TTL, drops the hot days older than this, each only once
# Iceberg verifiably holds it (`offloader retain --dry-run` shows what it would drop).
hot_retention = "1d"
"""
SHARDED = """# A Distributed table over the cluster's shards (README "ClickHouse clusters"); the
# view over both tiers is kept on every node.
"""


def write_config(
    path: Path,
    *,
    port: int,
    db: str,
    state_dir: Path,
    pg_dsn: str,
    store: devstore.Store | None = None,
    sharded: bool = False,
) -> None:
    """The quick start's config: a local SQLite catalog and warehouse under `state_dir`,
    or with `store` (python -m offloader.dev.devstore) its Iceberg REST catalog and S3, as
    config/examples/rest.toml has them."""
    state_dir = state_dir.resolve()
    tables = "".join(
        f"""
[[tables]]
source = "{db}.{name}"
target = "cold.{name}"
watermark = "exchange_ts"
keys = ["trade_id"]
lag = "5m"
batch_rows = 100000
partition_by = ["day(exchange_ts)"]
{RETENTION if not sharded else SHARDED}"""
        for name in TABLES
    )
    path.write_text(
        f"""# Written by the quick start (python -m offloader.dev.demo); edit freely.
[offloader]
interval = "15m"
max_parallel_tables = 4
table_timeout = "10m"

[clickhouse]
host = "127.0.0.1"
port = {port}
user = "default"
password = "${{CLICKHOUSE_PASSWORD:-}}"
database = "{db}"

[postgres]
dsn = "{pg_dsn}"
# State schema of this quick start's own warehouse (a new one per fresh var/ directory).
schema = "quickstart_{uuid.uuid4().hex[:8]}"

{_catalog(state_dir, store)}
# Per table, a ClickHouse view over both tiers ({db}.<table>_all): the hot rows after the
# committed position and the Iceberg rows up to it, each row once.
[views]
enabled = true
{f's3_collection = "{S3_COLLECTION}"' if store else ""}
{tables}"""
    )


# The ClickHouse named collection by which the quick start's views read S3 (--s3).
S3_COLLECTION = "offloader_s3"


def _catalog(state_dir: Path, store: devstore.Store | None) -> str:
    if store is None:
        return f"""[iceberg.catalog]
name = "cold"
type = "sql"
uri = "sqlite:///{state_dir}/catalog.db"
warehouse = "file://{state_dir}/warehouse"
"""
    props = "\n".join(f'"{k}" = "{v}"' for k, v in store.rest_catalog().items())
    return f"""# SeaweedFS's Iceberg REST catalog and S3 (python -m offloader.dev.devstore), as
# config/examples/rest.toml has them.
[iceberg.catalog]
name = "cold"
{props}
"""


async def named_collection(cfg: ClickHouseConfig, store: devstore.Store) -> None:
    """The named collection holding the store's keys, by which ClickHouse reads S3."""
    async with native.session(cfg, "demo") as ch:
        await ch.execute(f"DROP NAMED COLLECTION IF EXISTS {S3_COLLECTION}")
        await ch.execute(
            f"CREATE NAMED COLLECTION {S3_COLLECTION} AS access_key_id = "
            f"'{store.access_key}' NOT OVERRIDABLE, secret_access_key = '{store.secret_key}' "
            "NOT OVERRIDABLE"
        )


async def show_views(cfg: ClickHouseConfig, db: str, tables: tuple[str, ...] = TABLES) -> None:
    """Print one query over both tiers per table: rows per day through its view beside
    the hot table's (equal while the hot table still holds every row; after hot
    retention drops a day, the view still has it, from Iceberg)."""
    async with native.session(cfg, "demo") as ch:
        for name in tables:
            view = f"{db}.{name}_all"
            comment = await ch.scalar(
                f"SELECT comment FROM system.tables WHERE database = '{db}' AND name = '{name}_all'"
            )
            if comment is None:
                print(f"{view}: no such view yet (see `offloader status`)")
                continue
            print(f"{view} ({comment}):")
            query = (
                f"SELECT day, v.rows, h.rows FROM (SELECT toDate(exchange_ts) AS day, count() AS "
                f"rows FROM {view} GROUP BY day) AS v FULL JOIN (SELECT toDate(exchange_ts) AS "
                f"day, count() AS rows FROM {db}.{name} GROUP BY day) AS h USING day ORDER BY day"
            )
            print(f"  SELECT toDate(exchange_ts) AS day, count() FROM {view} GROUP BY day")
            print(f"  {'day':<12} {'view (both tiers)':>18} {'hot table':>10}")
            for day, in_view, in_hot in await ch.rows(query):
                print(f"  {day!s:<12} {in_view:>18} {in_hot:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offloader.dev.demo")
    parser.add_argument("--port", type=int, required=True, help="ClickHouse native port")
    parser.add_argument("--database", default="market")
    parser.add_argument("--rows", type=int, default=200_000, help="rows per table")
    parser.add_argument("--config-out", type=Path, help="write a config for these tables here")
    parser.add_argument("--state-dir", type=Path, default=Path("var/offloader"))
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/offloader")
    parser.add_argument(
        "--show-views", action="store_true", help="only print a query over each table's view"
    )
    parser.add_argument(
        "--cluster-ports",
        default="",
        help="the native ports of a cluster's nodes (comma-separated, the first --port): "
        "each table is a Distributed table over `<name>_local` on every node",
    )
    parser.add_argument(
        "--s3-store",
        type=Path,
        help="the directory of a running `python -m offloader.dev.devstore`: use its REST "
        "catalog and S3 (and give ClickHouse a named collection with its keys)",
    )
    args = parser.parse_args(argv)
    cfg = ClickHouseConfig(port=args.port)
    store = devstore.running(args.s3_store) if args.s3_store else None
    if args.s3_store and store is None:
        parser.error(f"--s3-store: no store runs in {args.s3_store}")
    if store is not None:
        anyio.run(named_collection, cfg, store)
    if args.show_views:
        anyio.run(show_views, cfg, args.database)
        return 0
    nodes = [ClickHouseConfig(port=int(p)) for p in args.cluster_ports.split(",") if p]
    if nodes:
        anyio.run(make_sharded, nodes, args.database, CLUSTER)
    anyio.run(load, cfg, args.database, args.rows)
    print(f"loaded {args.rows} rows into each of {', '.join(TABLES)} in {args.database}")
    if args.config_out:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        write_config(
            args.config_out,
            port=args.port,
            db=args.database,
            state_dir=args.state_dir,
            pg_dsn=args.postgres,
            store=store,
            sharded=bool(nodes),
        )
        print(f"wrote {args.config_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
