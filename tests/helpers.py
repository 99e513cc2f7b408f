"""Helpers shared by the integration tests: talk to the real services, compare tiers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pyarrow as pa

from offloader import source
from offloader.config import ClickHouseConfig, Config, TableConfig
from offloader.configfile import load_config
from offloader.dev.demo import trades_ddl
from offloader.iceberg import IcebergCatalog
from offloader.offload.supervisor import CycleReport, run_once
from offloader.plan import plan_source
from offloader.source import native
from offloader.source.native_convert import to_record_batch
from offloader.sql.text import qualified, quote_ident

ROOT = Path(__file__).resolve().parent.parent


def wait_for_log(proc: subprocess.Popen[str], msg: str) -> list[str]:
    """Read a `--log-format json` process's stderr up to its first event `msg`.

    Tests that kill a server "mid-cycle" wait for a real event instead of sleeping, so
    a slow or fast machine cannot move the kill before the cycle or after its end.
    """
    assert proc.stderr is not None
    seen: list[str] = []
    needle = f'"msg":"{msg}"'
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"process ended before logging {msg!r}: {''.join(seen[-20:])}")


def pg_admin(dsn: str, *, create: bool) -> None:
    name = dsn.rsplit("/", 1)[1]
    admin = dsn.rsplit("/", 1)[0] + "/postgres"

    async def go() -> None:
        conn = await asyncpg.connect(admin)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if create and not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    anyio.run(go)


def trades_rows(
    db: str, name: str, count: int, first_id: int, start: str, step_us: int, ties: int = 3
) -> str:
    """INSERT of `count` trades from `start`, `ties` rows per microsecond timestamp."""
    return f"""
INSERT INTO {db}.{name} (exchange_ts, received_ts, trade_id, symbol, price, quantity, side,
                         is_maker, venue_seq, tags)
SELECT toDateTime64('{start}', 6, 'UTC')
         + toIntervalMicrosecond(intDiv(number, {ties}) * {step_us}) AS ts,
       ts + toIntervalMicrosecond(number % 500),
       {first_id} + number,
       ['BTC', 'ETH', 'SOL'][number % 3 + 1],
       toDecimal128(60000 + (number % 1000) / 7, 10),
       toDecimal128((number % 97 + 1) / 1000, 10),
       if(number % 2 = 0, 'buy', 'sell'),
       number % 3 = 0,
       if(number % 7 = 0, NULL, toInt64(number)),
       arrayMap(i -> ['spot', 'block', 'odd'][i], range(1, number % 3 + 1))
FROM numbers({count})
"""


@dataclass
class Env:
    tmp: Path
    ch_port: int
    ch_http_port: int
    ch_database: str
    pg_dsn: str
    pg_schema: str
    catalog_name: str
    catalog_uri: str | None = None
    transport: str = "native"
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.tmp / "tables.toml"

    @property
    def ch_config(self) -> ClickHouseConfig:
        return ClickHouseConfig(port=self.ch_port)

    def ch(self, sql: str) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            async with native.session(self.ch_config, "test") as s:
                result = await s.execute(sql)
                return list(result) if isinstance(result, list) else []

        return anyio.run(go)

    def create_trades(self, name: str) -> None:
        self.ch(trades_ddl(self.ch_database, name))

    def insert_trades(
        self, name: str, count: int, first_id: int, start: str, step_us: int = 1000, ties: int = 3
    ) -> None:
        self.ch(trades_rows(self.ch_database, name, count, first_id, start, step_us, ties))

    def write_config(
        self,
        tables: list[dict[str, Any]],
        *,
        service: dict[str, Any] | None = None,
        clickhouse_port: int | None = None,
        clickhouse_http_port: int | None = None,
        clickhouse_extra: dict[str, Any] | None = None,
        pg_dsn: str | None = None,
        catalog: dict[str, str] | None = None,
        views: dict[str, Any] | None = None,
        maintenance: dict[str, Any] | None = None,
    ) -> Path:
        svc = {"interval": "1m", "max_parallel_tables": 4, "table_timeout": "5m"}
        svc.update(service or {})
        cat = catalog or {
            "type": "sql",
            "uri": self.catalog_uri or f"sqlite:///{self.tmp}/catalog.db",
            "warehouse": f"file://{self.tmp}/warehouse",
        }
        lines = ["[offloader]"]
        lines += [f"{k} = {_toml(v)}" for k, v in svc.items()]
        lines += [
            "",
            "[clickhouse]",
            'host = "127.0.0.1"',
            f"port = {clickhouse_port or self.ch_port}",
            f"http_port = {clickhouse_http_port or self.ch_http_port}",
            f'transport = "{self.transport}"',
            f'database = "{self.ch_database}"',
            'connect_timeout = "3s"',
            *(f"{k} = {_toml(v)}" for k, v in (clickhouse_extra or {}).items()),
            "",
            "[postgres]",
            f'dsn = "{pg_dsn or self.pg_dsn}"',
            f'schema = "{self.pg_schema}"',
            "",
            "[iceberg.catalog]",
            f'name = "{self.catalog_name}"',
        ]
        lines += [f"{_toml(k)} = {_toml(v)}" for k, v in cat.items()]
        if views:
            lines += ["", "[views]", *(f"{k} = {_toml(v)}" for k, v in views.items())]
        if maintenance:
            lines += ["", "[maintenance]", *(f"{k} = {_toml(v)}" for k, v in maintenance.items())]
        for t in tables:
            lines += ["", "[[tables]]"]
            lines += [f"{k} = {_toml(v)}" for k, v in t.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def table(self, name: str, **extra: Any) -> dict[str, Any]:
        t: dict[str, Any] = {
            "source": f"{self.ch_database}.{name}",
            "target": f"cold.{name}",
            "watermark": "exchange_ts",
            "keys": ["trade_id"],
            "lag": "0s",
            "batch_rows": 20000,
        }
        t.update(extra)
        return t

    def config(self) -> Config:
        return load_config(self.config_path)

    def once(self) -> CycleReport:
        """One cycle in this process; every enabled table has its report (a table whose
        task ended without one would leave `ok` true)."""
        cfg = self.config()
        report = anyio.run(run_once, cfg)
        reported = [t.target for t in report.tables]
        assert reported == [t.target for t in cfg.enabled_tables], report.summary()
        return report

    def cli(
        self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(extra_env or {})
        return subprocess.run(
            [sys.executable, "-m", "offloader", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.update(extra_env or {})
        return subprocess.Popen(
            [sys.executable, "-m", "offloader", "--config", str(self.config_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    # --- comparing the tiers ---------------------------------------------------

    def source_arrow(self, t: TableConfig) -> pa.Table:
        async def go() -> pa.Table:
            db = t.source_database or self.ch_database
            async with native.session(self.ch_config, "test") as s:
                src = plan_source(t, await source.table_columns(s, db, t.source_table))
                order = ", ".join(quote_ident(c) for c, _ in src.order)
                page = await s.columns(
                    f"SELECT {', '.join(src.select)} FROM {qualified(db, t.source_table)} "
                    f"ORDER BY {order}",
                    len(src.select),
                )
                return pa.Table.from_batches(
                    [to_record_batch(t.target, src.columns, page.columns)], schema=src.schema
                )

        return anyio.run(go)

    def iceberg_arrow(self, t: TableConfig) -> pa.Table:
        cat = IcebergCatalog(self.config().catalog)
        data = cat.read(t.target)
        order = [(c, "ascending") for c in (t.watermark, *t.keys)]
        return data.sort_by(order)

    def assert_tiers_equal(self, target: str, ignore: tuple[str, ...] = ()) -> int:
        t = self.config().table(target)
        src = self.source_arrow(t)
        src = src.select([n for n in src.schema.names if n not in ignore])
        ice = self.iceberg_arrow(t).select(src.schema.names)
        assert ice.num_rows == src.num_rows, (
            f"{target}: Iceberg {ice.num_rows} rows, ClickHouse {src.num_rows}"
        )
        ice = ice.cast(src.schema)
        for name in src.schema.names:
            a, b = src.column(name).combine_chunks(), ice.column(name).combine_chunks()
            if pa.types.is_floating(a.type):  # compare bits, so NaN equals NaN
                width = pa.int64() if a.type == pa.float64() else pa.int32()
                a, b = a.view(width), b.view(width)
            if not a.equals(b) and not _same(a.to_pylist(), b.to_pylist()):
                raise AssertionError(f"{target}: column {name} differs")
        return src.num_rows

    def drop_for_parquet(self, table: str, *columns: str) -> None:
        """On the parquet transport, which cannot store FixedString (ClickHouse's
        Parquet has no binary column beside its text ones): check that a cycle refuses
        the table naming the column and pointing to the arrow transport, then drop the
        columns from the source so the test goes on with the rest."""
        if self.transport != "parquet":
            return
        report = self.once()
        failed = next(t for t in report.tables if t.target == f"cold.{table}")
        assert failed.status == "failed", report.summary()
        assert f"column {columns[0]!r}" in (failed.error or ""), failed.error
        assert 'transport = "arrow"' in (failed.error or ""), failed.error
        for column in columns:
            self.ch(f"ALTER TABLE {self.ch_database}.{table} DROP COLUMN {column}")

    def snapshots(self, target: str) -> int:
        table = IcebergCatalog(self.config().catalog).load(target)
        assert table is not None
        return table.snapshot_count()

    def drop_pg_schema(self) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.pg_dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.pg_schema}" CASCADE')
            finally:
                await conn.close()

        anyio.run(go)


def _same(a: Any, b: Any) -> bool:
    """Python values equal, floats by their bits (NaN equals NaN, -0.0 is not 0.0), at
    any depth: what Arrow's equals cannot say of NaN inside lists and structs."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def independent_reads(target_location: str, metadata_location: str, query: str) -> list[str]:
    """`query` (with FROM {t}) answered by two Iceberg readers nobody here wrote:
    ClickHouse's icebergLocal (in-process chDB) and DuckDB's iceberg extension. Returns
    each reader's first row as text, for comparison with ClickHouse's own answer."""
    import chdb
    import duckdb

    table_dir = target_location.removeprefix("file://")
    cwd = os.getcwd()
    os.chdir("/")  # chDB resolves icebergLocal from the working directory
    try:
        ch = str(chdb.query(query.format(t=f"icebergLocal('{table_dir}')"), "CSV")).strip()
    finally:
        os.chdir(cwd)
    ext = Path(duckdb.__file__).parent.parent / "duckdb_ext/extensions/v1.4.4/linux_amd64"
    con = duckdb.connect()
    try:
        for name in ("avro", "iceberg"):
            con.execute(f"LOAD '{ext / f'{name}.duckdb_extension'}'")
        meta = metadata_location.removeprefix("file://")
        row = con.execute(query.format(t=f"iceberg_scan('{meta}')")).fetchone()
    finally:
        con.close()
    assert row is not None
    return [ch, ",".join(str(v) for v in row)]


READERS_PYTHON = ROOT / ".venv-readers" / "bin" / "python"


def read_with(env: Env, reader: str, target: str) -> pa.Table:
    """The Iceberg table `target` as Polars or Daft reads it (tests/iceberg_readers.py,
    in the readers' own virtualenv), in watermark and key order."""
    assert READERS_PYTHON.exists(), "the readers' virtualenv is missing: run scripts/test.sh"
    cat = env.config().catalog
    props = dict(cat.properties)
    out = env.tmp / f"{reader}-{target}.arrow"
    done = subprocess.run(
        [
            str(READERS_PYTHON),
            str(ROOT / "tests" / "iceberg_readers.py"),
            reader,
            cat.name,
            props["uri"],
            props["warehouse"],
            target,
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{reader} could not read {target}:\n{done.stderr[-3000:]}"
    with pa.memory_map(str(out)) as source_file:
        data = pa.ipc.open_file(source_file).read_all()
    t = env.config().table(target)
    return data.sort_by([(c, "ascending") for c in (t.watermark, *t.keys)])


def assert_read_equal(env: Env, reader: str, target: str) -> int:
    """What `reader` reads of `target` equals pyiceberg's read of it (itself checked equal
    to ClickHouse), column by column, value by value."""
    theirs = read_with(env, reader, target)
    ours = env.iceberg_arrow(env.config().table(target))
    assert theirs.num_rows == ours.num_rows, (reader, theirs.num_rows, ours.num_rows)
    assert theirs.schema.names == ours.schema.names, (reader, theirs.schema.names)
    wrong = [
        name
        for name in ours.schema.names
        if not _same(_plain(theirs.column(name).to_pylist()), _plain(ours.column(name).to_pylist()))
    ]
    assert not wrong, f"{reader} reads these columns of {target} differently: {wrong}"
    return ours.num_rows


def _plain(v: Any) -> Any:
    """A value as every reader can give it: a UUID as its 16 bytes (Polars and Daft
    read Iceberg's uuid as binary, pyiceberg as uuid.UUID)."""
    if isinstance(v, uuid.UUID):
        return v.bytes
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def assert_field_ids_everywhere(env: Env, target: str) -> int:
    """Every live data file of `target` carries an Iceberg field id on every column,
    nested fields too (pyarrow reads them back from the Parquet footer), equal to the
    table schema's. Returns how many files were checked."""
    import pyarrow.parquet as pq

    ice = IcebergCatalog(env.config().catalog).load(target)
    assert ice is not None
    schema = ice.table.schema()
    paths = [task.file.file_path for task in ice.table.scan().plan_files()]
    assert paths, f"{target} has no data files"
    for path in paths:
        arrow_schema = pq.read_metadata(path.removeprefix("file://")).schema.to_arrow_schema()
        missing = [
            name
            for name, field_id in _field_ids(arrow_schema)
            if field_id is None or schema.find_field(field_id) is None
        ]
        assert not missing, f"{path}: columns without a field id of the table: {missing}"
    return len(paths)


def _field_ids(schema: pa.Schema) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []

    def walk(f: pa.Field, path: str) -> None:
        raw = (f.metadata or {}).get(b"PARQUET:field_id")
        out.append((path, int(raw) if raw is not None else None))
        t = f.type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            walk(t.value_field, path + ".element")
        elif pa.types.is_map(t):
            walk(t.key_field, path + ".key")
            walk(t.item_field, path + ".value")
        elif pa.types.is_struct(t):
            for i in range(t.num_fields):
                walk(t.field(i), f"{path}.{t.field(i).name}")

    for field_ in schema:
        walk(field_, field_.name)
    return out
