"""offloader benchmarks: cycle time, throughput against the driver's ceiling, parallelism,
memory and per-stage time, on the same real services as the tests.

    python -m benchmarks.cycle                       # every scenario, default sizes
    python -m benchmarks.cycle --scenario idle --json out.json
    python -m benchmarks.cycle --scenario throughput --rows 3000000

Each scenario's docstring states its hypothesis. Figures are medians over --repeats.
Speed is never asserted by the tests; this is where it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow as pa

from benchmarks import peers
from offloader import source
from offloader.config import ClickHouseConfig, Config
from offloader.configfile import load_config
from offloader.cursor import encode_value
from offloader.dev import devserver
from offloader.dev.demo import trades_ddl
from offloader.iceberg import IcebergCatalog, Marker
from offloader.offload.supervisor import CycleReport, run_cycle
from offloader.plan import plan_source
from offloader.source import arrow, native
from offloader.sql.scan import Scan
from offloader.sql.text import qualified, quote_ident
from offloader.tiers.services import open_services
from offloader.tiers.writing import FILE_ROWS

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("OFFLOADER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/offloader_bench")

INSERT = """
INSERT INTO {db}.{name} (exchange_ts, received_ts, trade_id, symbol, price, quantity, side,
                         is_maker, venue_seq, tags)
SELECT toDateTime64('2026-01-01 00:00:00', 6, 'UTC')
           + toIntervalMicrosecond(intDiv(number, 2) * 1537),
       toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number * 1537 + 300),
       number + 1,
       ['BTC-USDT', 'ETH-USDT', 'SOL-USDT', 'XRP-USDT', 'DOGE-USDT'][number % 5 + 1],
       toDecimal128(60000 + (number % 100000) / 7, 10),
       toDecimal128((number % 997 + 1) / 1000, 10),
       if(number % 2 = 0, 'buy', 'sell'),
       number % 3 = 0,
       if(number % 10 = 0, NULL, toInt64(number)),
       arrayMap(i -> ['binance', 'kraken'][i], range(1, number % 2 + 2))
FROM numbers({rows})
"""


@dataclass
class Bench:
    """The services of one benchmark run and a fresh config per measurement."""

    work: Path
    port: int
    http_port: int
    server_pid: int | None = None
    db: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}")

    @property
    def ch(self) -> ClickHouseConfig:
        return ClickHouseConfig(port=self.port)

    def sql(self, query: str) -> None:
        async def go() -> None:
            async with native.session(self.ch, "bench") as s:
                await s.execute(query)

        anyio.run(go)

    def make_tables(self, names: list[str], rows: int) -> None:
        self.sql(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        for name in names:
            self.sql(f"DROP TABLE IF EXISTS {self.db}.{name}")
            self.sql(trades_ddl(self.db, name))
            if rows:
                self.sql(INSERT.format(db=self.db, name=name, rows=rows))

    def config(
        self,
        names: list[str],
        *,
        parallel: int = 4,
        batch_rows: int | None = None,  # None: the transport's default
        append_rows: int = 1_000_000,
        transport: str = "native",
        audit_days: int = 4,
        view: bool = False,
        extra: str = "",
        watermark: str = "exchange_ts",
        key: str = "trade_id",
    ) -> Path:
        tag = uuid.uuid4().hex[:8]
        pages = f"batch_rows = {batch_rows}\n" if batch_rows else ""
        state = self.work / f"state_{tag}"
        state.mkdir()
        tables = "".join(
            f"""
[[tables]]
source = "{self.db}.{n}"
target = "cold.{n}"
watermark = "{watermark}"
keys = ["{key}"]
lag = "0s"
{pages}append_rows = {append_rows}
partition_by = ["day({watermark})"]
audit_days = {audit_days}
view = {"true" if view else "false"}
{extra}"""
            for n in names
        )
        path = state / "tables.toml"
        path.write_text(
            f"""[offloader]
max_parallel_tables = {parallel}
table_timeout = "30m"
[clickhouse]
port = {self.port}
http_port = {self.http_port}
transport = "{transport}"
[postgres]
dsn = "{PG}"
schema = "b_{tag}"
[iceberg.catalog]
name = "cold"
type = "sql"
uri = "sqlite:///{state}/catalog.db"
warehouse = "file://{state}/warehouse"
{tables}"""
        )
        return path


def cycle(path: Path) -> CycleReport:
    cfg = load_config(path)

    async def go() -> CycleReport:
        async with open_services(cfg) as services:
            return await run_cycle(cfg, services)

    report = anyio.run(go)
    if not report.ok:
        raise SystemExit(f"benchmark cycle failed:\n{report.summary()}")
    return report


def whole_process(path: Path, report: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `offloader once` process; with `report`,
    its `--json` report is written there (the stages of its tables)."""
    command = [sys.executable, "-m", "offloader", "--config", str(path)]
    once = ["once", "--json"] if report is not None else ["once"]
    return timed_process([*command, "--log-level", "WARNING", *once], report)


def timed_process(command: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process.

    The peak is the child's own VmHWM, polled from /proc while it runs: getrusage's
    ru_maxrss would include the RSS of this (large) parent copied at fork time.
    """
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
    status_file = Path(f"/proc/{proc.pid}/status")
    peak_kb = 0
    while proc.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if stdout is not None:
        out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"offloader once failed: {err}")
    return seconds, peak_kb / 1024


TRANSPORTS = ("native", "arrow", "parquet")


def median(values: list[float]) -> float:
    return statistics.median(values)


def scenario_idle(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: a cycle of 2 tables with no new rows costs a few queries per table, far
    under the old script's 12.4 s: under 0.5 s in-process, under 2 s as a whole process
    (interpreter start and imports included).

    python -m benchmarks.cycle --scenario idle
    """
    names = ["idle_a", "idle_b"]
    b.make_tables(names, args.idle_rows)
    path = b.config(names)
    cycle(path)  # first cycle offloads the rows; the measured ones find nothing new
    in_process = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = cycle(path)
        in_process.append(time.perf_counter() - started)
        assert report.rows == 0
    whole = [whole_process(path)[0] for _ in range(args.repeats)]
    # The late-rows audit (one grouped ClickHouse query and a manifest read per table)
    # against the same tables with it switched off, alternating, in the same run.
    no_audit = b.config(names, audit_days=0)
    cycle(no_audit)
    audited: list[float] = []
    unaudited: list[float] = []
    for _ in range(max(5, args.repeats)):
        for target, paths in ((audited, path), (unaudited, no_audit)):
            started = time.perf_counter()
            cycle(paths)
            target.append(time.perf_counter() - started)
    # The same, as whole `offloader once` processes (what a cron job or a user runs).
    whole_audited: list[float] = []
    whole_unaudited: list[float] = []
    for _ in range(max(5, args.repeats)):
        whole_audited.append(whole_process(path)[0])
        whole_unaudited.append(whole_process(no_audit)[0])
    return {
        "whole_process_with_audit_seconds": round(median(whole_audited), 3),
        "whole_process_without_audit_seconds": round(median(whole_unaudited), 3),
        "audit_share_of_whole_process_idle": round(
            median(whole_audited) / median(whole_unaudited) - 1, 3
        ),
        "in_process_seconds": round(median(in_process), 3),
        "in_process_with_audit_seconds": round(median(audited), 4),
        "in_process_without_audit_seconds": round(median(unaudited), 4),
        "audit_share_of_idle_cycle": round(median(audited) / median(unaudited) - 1, 3),
        "whole_process_seconds": round(median(whole), 3),
        "old_script_seconds": 12.4,
        "speedup_vs_old_script": round(12.4 / median(whole), 1),
    }


async def _ceiling(b: Bench, cfg: Config, rows: int, plain: bool) -> tuple[float, int]:
    """Read the same keyset pages with the driver alone: no conversion, no Iceberg.

    plain=False: offloader's own pages through the source interface (integer wire forms,
    see wire.wire_plan), not converted.
    plain=True: the naive `SELECT *` of the same pages, decoded into datetime/Decimal.
    """
    table = cfg.tables[0]
    scan = Scan(qualified(b.db, table.source_table), upto="2100-01-01 00:00:00.000000")
    async with native.session(b.ch, "ceiling") as s:
        src = plan_source(table, await source.table_columns(s, b.db, table.source_table))
        total = 0
        started = time.perf_counter()
        if not plain:
            async for page in source.keyset_pages(
                s.pager(table, src), scan, None, table.batch_rows
            ):
                total += page.rows
            return time.perf_counter() - started, total
        select = [quote_ident(c.name) for c in src.columns]
        after = None
        while True:
            data = await s.columns(scan.query(src, select, after, table.batch_rows), len(select))
            total += data.rows
            if data.rows < table.batch_rows:
                break
            last = data.rows - 1
            after = [encode_value(data.columns[i][last]) for i in src.order_index]
        return time.perf_counter() - started, total


async def _arrow_ceiling(b: Bench, cfg: Config) -> tuple[float, int, list[pa.RecordBatch]]:
    """Read the same keyset pages as ArrowStream over HTTP alone; keep the converted
    batches for the write ceiling."""
    table = cfg.tables[0]
    cfg_http = ClickHouseConfig(port=b.port, http_port=b.http_port)
    scan = Scan(qualified(b.db, table.source_table), upto="2100-01-01 00:00:00.000000")
    batches: list[pa.RecordBatch] = []
    async with arrow.session(cfg_http, "ceiling") as http:
        src = plan_source(table, await source.table_columns(http, b.db, table.source_table))
        pages = source.keyset_pages(http.pager(table, src), scan, None, table.batch_rows)
        total = 0
        read = 0.0
        while True:
            t0 = time.perf_counter()
            page = await anext(pages, None)
            read += time.perf_counter() - t0
            if page is None:
                break
            total += page.rows
            batches.append(page.to_batch())
    return read, total, batches


def _write_ceiling(b: Bench, batches: list[pa.RecordBatch]) -> float:
    """Write the same Arrow batches to a fresh Iceberg table the way offloader does
    (Parquet files every 250k rows, a snapshot per 1M rows), with nothing else running."""
    cfg = load_config(b.config(["tp"]))
    catalog = IcebergCatalog(cfg.catalog)
    ice = catalog.ensure("cold.write_ceiling", batches[0].schema, cfg.tables[0].partition_by)
    started = time.perf_counter()
    written, rows, seq = [], 0, 0
    chunk: list[pa.RecordBatch] = []
    for batch in batches:
        chunk.append(batch)
        if sum(c.num_rows for c in chunk) >= FILE_ROWS or batch is batches[-1]:
            written.append(ice.write_files(chunk))
            rows += sum(c.num_rows for c in chunk)
            chunk = []
            if rows >= 1_000_000 or batch is batches[-1]:
                ice.commit_files(written, Marker(seq + 1, [seq], "ceiling", rows))
                seq, written, rows = seq + 1, [], 0
    return time.perf_counter() - started


def scenario_throughput(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: fetching page n+1 while page n converts and earlier pages are written
    keeps each transport within reach of its ceilings, measured side by side on the same
    data: native >= 0.6 of the asynch-only read; arrow >= 0.7 of the slower of the
    ArrowStream-only read and the Iceberg-write-only of the same batches, and >= 8x dlt's
    120k rows/s on this table shape.

    python -m benchmarks.cycle --scenario throughput --rows 2000000
    """
    b.make_tables(["tp"], args.rows)
    keys = (*TRANSPORTS, "asynch_read", "asynch_plain_read", "arrow_read", "iceberg_write")
    rates: dict[str, list[float]] = {k: [] for k in keys}
    mbs: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    cpu: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    stages: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
    for _ in range(args.repeats):
        path = b.config(["tp"])
        secs, total = anyio.run(_ceiling, b, load_config(path), args.rows, False)
        assert total == args.rows
        rates["asynch_read"].append(args.rows / secs)
        secs, total = anyio.run(_ceiling, b, load_config(path), args.rows, True)
        rates["asynch_plain_read"].append(args.rows / secs)
        secs, total, batches = anyio.run(_arrow_ceiling, b, load_config(path))
        assert total == args.rows
        rates["arrow_read"].append(args.rows / secs)
        rates["iceberg_write"].append(args.rows / _write_ceiling(b, batches))
        del batches
        for transport in TRANSPORTS:
            path = b.config(
                ["tp"],
                transport=transport,
                audit_days=args.audit_days,
                batch_rows=args.batch_rows,
            )
            cpu0, started = _cpu_seconds(), time.perf_counter()
            report = cycle(path)
            secs = time.perf_counter() - started
            assert report.rows == args.rows
            rates[transport].append(args.rows / secs)
            cpu[transport].append((_cpu_seconds() - cpu0) / args.rows * 1e6)
            mbs[transport].append(report.tables[0].bytes / secs / 1e6)
            stages[transport].append(report.tables[0].stages)
    r = {k: median(v) for k, v in rates.items()}
    native_ceiling = r["asynch_read"]
    arrow_ceiling = min(r["arrow_read"], r["iceberg_write"])
    out: dict[str, Any] = {"rows": args.rows}
    out.update({f"{k}_rows_per_s": round(v) for k, v in r.items()})
    out["native_ratio_to_asynch_read"] = round(r["native"] / native_ceiling, 2)
    out["native_ratio_to_plain_asynch_read"] = round(r["native"] / r["asynch_plain_read"], 2)
    out["native_ratio_to_slower_ceiling"] = round(
        r["native"] / min(native_ceiling, r["iceberg_write"]), 2
    )
    out["arrow_ratio_to_slower_ceiling"] = round(r["arrow"] / arrow_ceiling, 2)
    out["parquet_vs_arrow"] = round(r["parquet"] / r["arrow"], 2)
    for transport in TRANSPORTS:
        # Python's CPU seconds (this process, all threads) per million rows moved.
        out[f"{transport}_python_cpu_seconds_per_million_rows"] = round(median(cpu[transport]), 2)
        out[f"{transport}_mb_per_s"] = round(median(mbs[transport]), 1)
        runs = stages[transport]
        out[f"{transport}_stages_seconds"] = {
            k: round(median([s.get(k, 0.0) for s in runs]), 2) for k in runs[0]
        }
    return out


def scenario_peers(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: whole process against whole process on the same table, in the same
    run, offloader moves rows faster than dlt's fastest path (query_arrow pages into
    Iceberg) with less memory, and its idle cycle is shorter than dlt's idle run; next
    to both, ClickHouse alone encoding the same rows as Parquet (the ceiling a
    ClickHouse-encoded transport would approach). Like for like: both whole fresh
    processes; "in process" is cold on both sides too (offloader's table run inside its
    fresh process, from `once --json`; dlt's `pipeline.run` inside its fresh process).

    pip install -e ".[bench]"; python -m benchmarks.cycle --scenario peers --rows 1000000
    """
    b.make_tables(["peer"], args.rows)
    runs: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    report = b.work / "peer_report.json"
    for _ in range(args.repeats):
        for transport in TRANSPORTS:
            path = b.config(["peer"], transport=transport)
            secs, peak = whole_process(path, report)
            note(f"offloader_{transport}_rows_per_s", args.rows / secs)
            note(f"offloader_{transport}_peak_mb", peak)
            # In-process, cold like dlt's: the table's run inside that fresh process
            # (pyiceberg's import and the table's creation included), from `once --json`.
            [table] = json.loads(report.read_text())["tables"]
            assert table["rows"] == args.rows, table
            note(f"offloader_{transport}_in_process_rows_per_s", args.rows / table["seconds"])
            note(f"offloader_{transport}_idle_seconds", whole_process(path)[0])
        if peers.dlt_available():
            where = b.work / f"dlt_{uuid.uuid4().hex[:8]}"
            where.mkdir()
            command = [
                *(sys.executable, "-m", "benchmarks.peers", "dlt"),
                *("--http-port", str(b.http_port), "--database", b.db, "--table", "peer"),
                *("--dir", str(where), "--report", str(where / "run.json")),
            ]
            secs, peak = timed_process(command)
            note("dlt_rows_per_s", args.rows / secs)
            note("dlt_peak_mb", peak)
            ran = json.loads((where / "run.json").read_text())
            note("dlt_in_process_rows_per_s", ran["rows"] / ran["seconds"])
            note("dlt_idle_seconds", timed_process(command)[0])
        target = f"peer_{uuid.uuid4().hex[:8]}.parquet"
        started = time.perf_counter()
        b.sql(f"INSERT INTO FUNCTION file('{target}', Parquet) SELECT * FROM {b.db}.peer")
        note("clickhouse_parquet_export_rows_per_s", args.rows / (time.perf_counter() - started))
    out: dict[str, Any] = {"rows": args.rows}
    out.update({k: round(median(v), 3 if "seconds" in k else 0) for k, v in runs.items()})
    export = median(runs["clickhouse_parquet_export_rows_per_s"])
    for transport in TRANSPORTS:
        rate = median(runs[f"offloader_{transport}_rows_per_s"])
        inside = median(runs[f"offloader_{transport}_in_process_rows_per_s"])
        out[f"{transport}_share_of_clickhouse_export"] = round(rate / export, 2)
        out[f"{transport}_in_process_share_of_clickhouse_export"] = round(inside / export, 2)
        if "dlt_rows_per_s" in runs:
            out[f"{transport}_vs_dlt"] = round(rate / median(runs["dlt_rows_per_s"]), 2)
            out[f"{transport}_in_process_vs_dlt_in_process"] = round(
                inside / median(runs["dlt_in_process_rows_per_s"]), 2
            )
            out[f"{transport}_memory_vs_dlt"] = round(
                median(runs[f"offloader_{transport}_peak_mb"]) / median(runs["dlt_peak_mb"]), 2
            )
            out[f"{transport}_idle_vs_dlt_idle"] = round(
                median(runs[f"offloader_{transport}_idle_seconds"])
                / median(runs["dlt_idle_seconds"]),
                2,
            )
    if "dlt_rows_per_s" not in runs:
        out["dlt"] = 'not installed: pip install -e ".[bench]"'
    return out


def scenario_parallel(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: tables overlap their ClickHouse waits, conversion threads and Iceberg
    writes, so 8 tables finish at least 1.5x faster with max_parallel_tables = 4 than 1.

    python -m benchmarks.cycle --scenario parallel --parallel-rows 200000
    """
    names = [f"par_{i}" for i in range(8)]
    b.make_tables(names, args.parallel_rows)
    out: dict[str, Any] = {"tables": 8, "rows_per_table": args.parallel_rows}
    # ClickHouse alone: the same 8 tables encoded as Parquet files, 4 at a time.
    exports = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda n: b.sql(
                        f"INSERT INTO FUNCTION file('par_{uuid.uuid4().hex[:8]}.parquet', Parquet) "
                        f"SELECT * FROM {b.db}.{n}"
                    ),
                    names,
                )
            )
        exports.append(time.perf_counter() - started)
    out["clickhouse_export_seconds_4_way"] = round(median(exports), 2)
    for transport in TRANSPORTS:
        results, cores, server = {}, {}, {}
        for parallel in (1, 4):
            times, used, used_server = [], [], []
            for _ in range(args.repeats):
                path = b.config(names, parallel=parallel, transport=transport)
                cpu0, srv0, started = _cpu_seconds(), _pid_cpu(b.server_pid), time.perf_counter()
                cycle(path)
                wall = time.perf_counter() - started
                times.append(wall)
                used.append((_cpu_seconds() - cpu0) / wall)
                used_server.append((_pid_cpu(b.server_pid) - srv0) / wall)
            results[parallel] = median(times)
            cores[parallel] = median(used)
            server[parallel] = median(used_server)
        out[f"{transport}_seconds_1_way"] = round(results[1], 2)
        out[f"{transport}_seconds_4_way"] = round(results[4], 2)
        out[f"{transport}_speedup"] = round(results[1] / results[4], 2)
        # CPU seconds of offloader (this process) per wall second: how many of the
        # machine's cores a cycle already keeps busy.
        out[f"{transport}_cores_busy_1_way"] = round(cores[1], 2)
        out[f"{transport}_cores_busy_4_way"] = round(cores[4], 2)
        out[f"{transport}_clickhouse_cores_busy_4_way"] = round(server[4], 2)
        out[f"{transport}_4_way_vs_clickhouse_export"] = round(
            out["clickhouse_export_seconds_4_way"] / results[4], 2
        )
    return out


def _pid_cpu(pid: int | None) -> float:
    """CPU seconds used so far by a process (the embedded ClickHouse server)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scenario_stages(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: after the integer wire forms, no single stage dominates a table's
    run; the shares show where the next optimisation is (stage seconds overlap, so
    they add up to more than the wall time).

    python -m benchmarks.cycle --scenario stages --rows 2000000
    """
    b.make_tables(["st"], args.rows)
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = cycle(b.config(["st"]))
        runs.append((time.perf_counter() - started, report.tables[0].stages))
    wall = median([w for w, _ in runs])
    names = list(runs[0][1])
    stages = {k: round(median([s.get(k, 0.0) for _, s in runs]), 2) for k in names}
    return {
        "rows": args.rows,
        "wall_seconds": round(wall, 2),
        "stage_seconds": stages,
        "stage_share_of_wall": {k: round(v / wall, 2) for k, v in stages.items()},
    }


def scenario_memory(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: memory is bounded by page and append size, not by the backlog: a 5x
    backlog peaks within 1.2x of the 1x backlog, and under 500 MB, with either transport.

    python -m benchmarks.cycle --scenario memory --memory-rows 1000000
    """
    out: dict[str, Any] = {"append_rows": args.append_rows}
    for factor in (1, 5):
        b.make_tables([f"mem_{factor}x"], args.memory_rows * factor)
        out[f"rows_{factor}x"] = args.memory_rows * factor
    for transport in ("native", "arrow"):
        for factor in (1, 5):
            peaks, secs = [], []
            for _ in range(args.repeats):
                path = b.config(
                    [f"mem_{factor}x"], append_rows=args.append_rows, transport=transport
                )
                s, peak = whole_process(path)
                peaks.append(peak)
                secs.append(s)
            out[f"{transport}_peak_rss_mb_{factor}x"] = round(median(peaks), 1)
            out[f"{transport}_seconds_{factor}x"] = round(median(secs), 2)
        out[f"{transport}_ratio_5x_to_1x"] = round(
            out[f"{transport}_peak_rss_mb_5x"] / out[f"{transport}_peak_rss_mb_1x"], 2
        )
    return out


def scenario_bulk(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: a first offload of a large table (trades over three UTC days, one Iceberg
    partition a day) as a whole `offloader once` process on the parquet transport, with
    its default audit (counts and row-hash sums), reaches >= 0.8 of ClickHouse's own
    Parquet export of the same rows (`INSERT INTO FUNCTION file(..., Parquet) SELECT *`),
    the ceiling of a transport whose files ClickHouse encodes. Beside it, the same with
    the audit off. Cold against cold: each offloader run is a fresh process into a new
    Iceberg table and a new state schema; the export writes a new file. The three
    alternate within each repetition.

    python -m benchmarks.cycle --scenario bulk --bulk-rows 10000000 --repeats 4
    """
    from offloader.dev.demo import TRADES_INSERT

    rows = args.bulk_rows
    b.make_tables(["bulk"], 0)
    b.sql(
        TRADES_INSERT.format(
            db=b.db,
            name="bulk",
            count=rows,
            start_us=1767225600_000000,  # 2026-01-01 00:00 UTC
            span_us=3 * 86400_000000,
            first_id=1,
        )
    )
    runs: dict[str, list[float]] = {"export": [], "audit_on": [], "audit_off": []}
    peaks: dict[str, list[float]] = {"audit_on": [], "audit_off": []}
    stages: dict[str, list[dict[str, float]]] = {"audit_on": [], "audit_off": []}
    report = b.work / "bulk_report.json"
    for _ in range(args.repeats):
        target = b.work / f"export_{uuid.uuid4().hex[:8]}.parquet"
        started = time.perf_counter()
        b.sql(f"INSERT INTO FUNCTION file('{target}', Parquet) SELECT * FROM {b.db}.bulk")
        runs["export"].append(time.perf_counter() - started)
        target.unlink(missing_ok=True)
        for label, days in (("audit_on", 4), ("audit_off", 0)):
            path = b.config(["bulk"], transport="parquet", audit_days=days)
            secs, peak = whole_process(path, report)
            runs[label].append(secs)
            peaks[label].append(peak)
            [table] = json.loads(report.read_text())["tables"]
            stages[label].append(table["stages"])
    out: dict[str, Any] = {"rows": rows, "repeats": args.repeats}
    for label, values in runs.items():
        out[f"{label}_seconds_median"] = round(median(values), 2)
        out[f"{label}_seconds_min_max"] = [round(min(values), 2), round(max(values), 2)]
    for label in peaks:
        out[f"{label}_peak_mb"] = round(median(peaks[label]))
        out[f"{label}_share_of_export"] = round(median(runs["export"]) / median(runs[label]), 2)
        names = sorted({name for run in stages[label] for name in run})
        out[f"{label}_stages_median"] = {
            name: round(median([run.get(name, 0.0) for run in stages[label]]), 2) for name in names
        }
    return out


def scenario_cluster(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: a first offload of a 2-shard `Distributed` source (--cluster-rows rows
    of trades, sharded by trade_id, parquet transport) read shard by shard (each shard's
    local table on its own node, concurrently) takes less wall time than read through
    the Distributed table (the node offloader connects to merges both shards' rows and
    encodes every page), because both shards encode their own pages. Whole `offloader
    once` processes, cold against cold (each a new Iceberg table and state schema), the
    two modes alternating within each repetition, on a 2-node embedded cluster started by
    the scenario. Then the idle cycle of each mode (the same table, nothing new: the
    second idle run, which fingerprints the local table's parts on every shard).

    python -m benchmarks.cycle --scenario cluster --cluster-rows 2000000 --repeats 5
    """
    name = "bench_cluster"
    nodes = devserver.start_cluster(b.work / "cluster", 2, name=name, files_root=b.work)
    try:
        first = Bench(b.work, nodes[0].tcp_port, nodes[0].http_port, db=b.db)
        for node in nodes:
            shard = Bench(b.work, node.tcp_port, node.http_port, db=b.db)
            shard.sql(f"CREATE DATABASE IF NOT EXISTS {b.db}")
            shard.sql(trades_ddl(b.db, "t_local"))
            shard.sql(
                f"CREATE TABLE {b.db}.t AS {b.db}.t_local "
                f"ENGINE = Distributed({name}, {b.db}, t_local, trade_id)"
            )
        first.sql(
            INSERT.format(db=b.db, name="t", rows=args.cluster_rows)
            + " SETTINGS distributed_foreground_insert = 1"
        )
        modes = ("shards", "through")
        runs: dict[str, list[float]] = {m: [] for m in modes}
        peaks: dict[str, list[float]] = {m: [] for m in modes}
        idle: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(args.repeats):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                path = first.config(
                    ["t"],
                    transport="parquet",
                    batch_rows=args.batch_rows,
                    extra=f'distributed = "{mode}"\n',
                )
                secs, peak = whole_process(path)
                runs[mode].append(secs)
                peaks[mode].append(peak)
                whole_process(path)  # the first idle run audits the window
                idle[mode].append(whole_process(path)[0])
        out: dict[str, Any] = {"rows": args.cluster_rows, "shards": 2, "repeats": args.repeats}
        for mode in modes:
            out[f"{mode}_seconds_median"] = round(median(runs[mode]), 2)
            out[f"{mode}_seconds_min_max"] = [round(min(runs[mode]), 2), round(max(runs[mode]), 2)]
            out[f"{mode}_peak_mb"] = round(median(peaks[mode]))
            out[f"{mode}_idle_seconds_median"] = round(median(idle[mode]), 2)
        pairs = [a / t for a, t in zip(runs["shards"], runs["through"], strict=True)]
        out["shards_over_through"] = round(median(pairs), 2)
        out["shards_over_through_min_max"] = [round(min(pairs), 2), round(max(pairs), 2)]
        return out
    finally:
        for node in nodes:
            devserver.stop(node.directory)


SMALL_DDL = """
CREATE TABLE {db}.{name} (ts DateTime64(6, 'UTC'), id UInt64, venue LowCardinality(String),
                          price Float64, qty Float64)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id)
"""
SMALL_INSERT = """
INSERT INTO {db}.{name} SELECT toDateTime64('2026-01-01 00:00:00', 6, 'UTC')
    + toIntervalMicrosecond(({first} + number) * 1000003), {first} + number,
    ['binance', 'kraken', 'okx'][number % 3 + 1], 100 + number / 7, number % 13
FROM numbers({rows})
"""


def scenario_tables(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: one process carries a thousand tables: an idle cycle of 1,000 tables
    in <= 5 s and one new row in each of them in <= 30 s, memory flat in the table count
    beyond a fixed per-table state. For each N of --tables (a small five-column schema,
    100 rows a table, default audit, max_parallel_tables 4, native transport), whole
    `offloader once` processes in one run: the first offload, an idle cycle (the second
    idle run: the first audits every window once), an idle cycle right after OPTIMIZE
    FINAL on every table (merges change no row: no window is read again), one new row in
    every table, the idle cycle after it (every table's new part merged first) and the
    one after that (merged again), 1% of the tables with 10k new rows, and one new row
    in every table offloaded by one process and by the worker processes (`workers`,
    default: one per core), alternating --repeats pairs; wall and CPU
    seconds of the offloader process, its peak RSS, the ClickHouse queries it made
    (system.query_log) and the PostgreSQL transactions it ran (pg_stat_database), each
    per cycle.

    python -m benchmarks.cycle --scenario tables --tables 100,300,1000
    """
    import asyncpg

    counts = [int(n) for n in str(args.tables).split(",")]
    dbname = PG.rsplit("/", 1)[1]

    def ch_queries(since: float) -> int:
        async def go() -> int:
            async with native.session(b.ch, "bench") as s:
                await s.execute("SYSTEM FLUSH LOGS")
                rows = await s.rows(
                    "SELECT count() FROM system.query_log WHERE type = 'QueryStart' AND "
                    f"is_initial_query AND event_time_microseconds >= "
                    f"fromUnixTimestamp64Micro({int(since * 1e6)}) AND query NOT LIKE "
                    "'%system.query_log%' AND query NOT LIKE 'SYSTEM FLUSH LOGS%'"
                )
                return int(rows[0][0])

        return anyio.run(go)

    def pg_transactions() -> int:
        async def go() -> int:
            conn = await asyncpg.connect(PG)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                        "WHERE datname = $1",
                        dbname,
                    )
                )
            finally:
                await conn.close()

        time.sleep(1.2)  # sessions that ended flush their counters
        return anyio.run(go)

    def measured(path: Path) -> dict[str, float]:
        before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        pg0 = pg_transactions()
        since = time.time()
        secs, peak = whole_process(path)
        after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (
            after_cpu.ru_stime - before_cpu.ru_stime
        )
        return {
            "wall_s": round(secs, 2),
            "cpu_s": round(cpu, 2),
            "peak_mb": round(peak),
            "clickhouse_queries": ch_queries(since),
            # Minus the one this benchmark ran to read the counter.
            "postgres_transactions": pg_transactions() - pg0 - 1,
        }

    def one_row_by_workers(path: Path, names: list[str], repeats: int) -> dict[str, Any]:
        """One new row in every table, offloaded by one process (`workers = 1`) and by
        the default worker processes (one per core), alternating, `repeats` pairs on the
        same tables and state: the figures of each one's median run."""
        single = path.with_name("tables-one-process.toml")
        single.write_text(
            path.read_text().replace("[offloader]\n", "[offloader]\nworkers = 1\n", 1)
        )
        runs: dict[str, list[dict[str, float]]] = {"one_process": [], "workers": []}
        first = 100_000
        for _ in range(repeats):
            for key, config in (("one_process", single), ("workers", path)):
                for name in names:
                    b.sql(SMALL_INSERT.format(db=b.db, name=name, first=first, rows=1))
                first += 1
                runs[key].append(measured(config))
        return {
            f"one_row_each_{key}": sorted(found, key=lambda f: f["wall_s"])[len(found) // 2]
            for key, found in runs.items()
        }

    def merge_all(names: list[str]) -> None:
        """Every table's parts merged into one a partition (no row changes)."""
        for name in names:
            b.sql(f"OPTIMIZE TABLE {b.db}.{name} FINAL")

    out: dict[str, Any] = {}
    for n in counts:
        names = [f"s{i:04d}" for i in range(n)]
        b.sql(f"DROP DATABASE IF EXISTS {b.db}")
        b.sql(f"CREATE DATABASE {b.db}")
        for name in names:
            b.sql(SMALL_DDL.format(db=b.db, name=name))
            b.sql(SMALL_INSERT.format(db=b.db, name=name, first=0, rows=100))
        path = b.config(names, watermark="ts", key="id")
        row: dict[str, Any] = {"first_offload": measured(path)}
        whole_process(path)  # the first idle run audits every window once
        row["idle"] = measured(path)
        merge_all(names)
        row["idle_after_merges"] = measured(path)
        for name in names:
            b.sql(SMALL_INSERT.format(db=b.db, name=name, first=100, rows=1))
        row["one_row_each"] = measured(path)
        merge_all(names)
        row["idle_after_one_row"] = measured(path)
        merge_all(names)
        row["idle_after_one_row_then_merges"] = measured(path)
        for name in names[:: max(1, 100)][: max(1, n // 100)]:
            b.sql(SMALL_INSERT.format(db=b.db, name=name, first=1000, rows=10_000))
        row["one_percent_10k"] = measured(path)
        row.update(one_row_by_workers(path, names, args.repeats))
        for phase, figures in row.items():
            figures["per_table_ms"] = round(figures["wall_s"] * 1000 / n, 1)
            print(f"  tables={n} {phase}: {figures}", file=sys.stderr, flush=True)
        out[str(n)] = row
    return out


def scenario_footer(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: giving a parquet-transport page its Iceberg field ids (its footer read
    and written again with thriftpy2, the data pages not copied) costs well under 2% of
    reading that page from ClickHouse. One table of --rows rows; a run's second page (up
    to 2M rows or about 64 MiB) is read --repeats times, and its footer given ids as many
    times, in the same process, alternating.

    python -m benchmarks.cycle --scenario footer --rows 3000000 --repeats 5
    """
    from offloader.iceberg.catalog import IcebergCatalog
    from offloader.iceberg.footer import with_field_ids

    b.make_tables(["ft"], args.rows)
    cfg = load_config(b.config(["ft"], transport="parquet"))
    table = cfg.table("cold.ft")
    reads: list[float] = []
    rewrites: list[float] = []

    async def read_page() -> tuple[bytes, float]:
        """A run's second page (the first is 250k rows; the next are sized to about
        64 MiB) and the seconds its read took."""
        async with source.open_table(cfg.clickhouse, table) as src:
            pager = src.source.pager(table, src.plan, None)
            scan = Scan(src.relation, "2100-01-01 00:00:00.000000")  # every row
            pages = source.keyset_pages(pager, scan, None, table.batch_rows)
            await anext(pages)
            started = time.perf_counter()
            page = await anext(pages)
            seconds = time.perf_counter() - started
            await pages.aclose()
            body = page.encoded()
            assert body is not None
            return body, seconds

    async def schema() -> Any:
        async with source.open_table(cfg.clickhouse, table) as src:
            return src.plan.schema

    ice = IcebergCatalog(cfg.catalog, cfg.maintenance).ensure(
        table.target, anyio.run(schema), table.partition_by, (table.watermark, *table.keys)
    )
    mapping = list(ice.table.schema().name_mapping)
    body, tail = b"", b""
    for _ in range(args.repeats):
        body, seconds = anyio.run(read_page)
        reads.append(seconds)
        started = time.perf_counter()
        _, tail = with_field_ids(body, mapping, "bench")
        rewrites.append(time.perf_counter() - started)
    return {
        "rows": args.rows,
        "page_mb": round(len(body) / 2**20, 1),
        "footer_bytes": len(tail),
        "read_page_seconds_median": round(median(reads), 3),
        "field_ids_ms_median": round(median(rewrites) * 1000, 2),
        "field_ids_ms_min_max": [round(min(rewrites) * 1000, 2), round(max(rewrites) * 1000, 2)],
        "share_of_page_read": round(median(rewrites) / median(reads), 4),
    }


VIEW_QUERIES = {
    # An hour and a day of the second (cold) day, everything, one row by key.
    "hour": "SELECT count(), sum(price), avg(quantity) FROM {t} WHERE exchange_ts >= "
    "toDateTime64('2026-01-02 10:00:00', 6, 'UTC') AND exchange_ts < "
    "toDateTime64('2026-01-02 11:00:00', 6, 'UTC')",
    "day": "SELECT count(), sum(price), avg(quantity) FROM {t} WHERE exchange_ts >= "
    "toDateTime64('2026-01-02 00:00:00', 6, 'UTC') AND exchange_ts < "
    "toDateTime64('2026-01-03 00:00:00', 6, 'UTC')",
    "all": "SELECT count(), sum(price), avg(quantity) FROM {t}",
    "key": "SELECT exchange_ts, trade_id, price FROM {t} WHERE trade_id = 4242424",
}


def scenario_view(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Hypothesis: a query through the view over both tiers costs about what it costs on
    the cold table directly (ClickHouse prunes Iceberg partitions and files through the
    view's casts; its hot side reads only the granules past the position): an hour of
    a cold day at most 2x the cold table's time. Beside both, the hot table itself; and
    then, with a fifth day inserted into the hot tier only, an hour of it through the
    view against the hot table.

    Every row is offloaded first (parquet transport), so the view's rows all come from
    Iceberg. Each query runs on the three targets in turn (hot, cold, view), `repeats`
    rounds after one warm-up round (warm: ClickHouse's and the OS's caches are filled
    for all three alike); medians, seconds of wall time over HTTP.

    python -m benchmarks.cycle --scenario view --view-rows 10000000
    """
    import httpx

    from offloader.dev.demo import TRADES_INSERT
    from offloader.tiers.view import ColdSide, cold_reader

    rows = args.view_rows
    b.make_tables(["tiers"], 0)
    start_us = 1767225600_000000  # 2026-01-01 00:00 UTC, four days of trades
    b.sql(
        TRADES_INSERT.format(
            db=b.db,
            name="tiers",
            count=rows,
            start_us=start_us,
            span_us=4 * 86400_000000,
            first_id=1,
        )
    )
    path = b.config(["tiers"], transport="parquet", view=True)
    report = cycle(path)
    assert report.rows == rows and report.tables[0].view_error is None, report.summary()
    cfg = load_config(path)
    ice = IcebergCatalog(cfg.catalog).load("cold.tiers")
    assert ice is not None
    reader = cold_reader(
        ColdSide(ice.location, ice.metadata_location, 0, ()), cfg.views, "cold.tiers"
    )
    targets = {"hot": f"{b.db}.tiers", "cold": reader, "view": f"{b.db}.tiers_all"}
    url = f"http://127.0.0.1:{b.http_port}/"
    times: dict[str, list[float]] = {}
    with httpx.Client(timeout=600) as client:

        def run(query: str) -> tuple[float, str]:
            started = time.perf_counter()
            reply = client.post(url, content=query.encode())
            seconds = time.perf_counter() - started
            reply.raise_for_status()
            return seconds, reply.text

        for name, query in VIEW_QUERIES.items():
            answers = {t: run(query.format(t=sql))[1] for t, sql in targets.items()}  # warm-up
            assert len(set(answers.values())) == 1, (name, answers)
            for _ in range(args.repeats):
                for target, sql in targets.items():
                    times.setdefault(f"{name}_{target}_seconds", []).append(
                        run(query.format(t=sql))[0]
                    )
        # A fifth day in the hot tier only (after the committed position): an hour of
        # it through the view against the hot table itself.
        b.sql(
            TRADES_INSERT.format(
                db=b.db,
                name="tiers",
                count=rows // 4,
                start_us=start_us + 4 * 86400_000000,
                span_us=86400_000000,
                first_id=rows + 1,
            )
        )
        hot_hour = VIEW_QUERIES["hour"].replace("2026-01-02", "2026-01-05")
        hot_targets = {"hot": targets["hot"], "view": targets["view"]}
        answers = {t: run(hot_hour.format(t=sql))[1] for t, sql in hot_targets.items()}
        assert len(set(answers.values())) == 1, ("hot_hour", answers)
        for _ in range(args.repeats):
            for target, sql in hot_targets.items():
                times.setdefault(f"hot_hour_{target}_seconds", []).append(
                    run(hot_hour.format(t=sql))[0]
                )
    out: dict[str, Any] = {"rows": rows}
    out.update({k: round(median(v), 4) for k, v in times.items()})
    out["hot_hour_view_vs_hot"] = round(
        median(times["hot_hour_view_seconds"]) / median(times["hot_hour_hot_seconds"]), 2
    )
    for name in VIEW_QUERIES:
        view_s = median(times[f"{name}_view_seconds"])
        out[f"{name}_view_vs_cold"] = round(view_s / median(times[f"{name}_cold_seconds"]), 2)
        out[f"{name}_view_vs_hot"] = round(view_s / median(times[f"{name}_hot_seconds"]), 2)
    return out


SCENARIOS: dict[str, Callable[[Bench, argparse.Namespace], dict[str, Any]]] = {
    "idle": scenario_idle,
    "peers": scenario_peers,
    "throughput": scenario_throughput,
    "parallel": scenario_parallel,
    "memory": scenario_memory,
    "stages": scenario_stages,
    "view": scenario_view,
    "bulk": scenario_bulk,
    "footer": scenario_footer,
    "cluster": scenario_cluster,
    "tables": scenario_tables,
}


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "clickhouse": "26.9 (chdb-core embedded)",
        "versions": {
            p: metadata.version(p) for p in ("asynch", "pyiceberg", "pyarrow", "anyio", "asyncpg")
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cycle")
    parser.add_argument("--scenario", default="all", choices=["all", *SCENARIOS])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2_000_000, help="throughput backlog")
    parser.add_argument("--parallel-rows", type=int, default=200_000)
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="the 1x backlog")
    parser.add_argument("--append-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-rows",
        type=int,
        help="throughput: the tables' batch_rows (default: each transport's)",
    )
    parser.add_argument(
        "--idle-rows",
        type=int,
        default=10_000,
        help="idle: rows per table (the audit window holds them all)",
    )
    parser.add_argument(
        "--audit-days", type=int, default=4, help="throughput: the tables' audit_days (0: off)"
    )
    parser.add_argument(
        "--view-rows", type=int, default=10_000_000, help="view: rows over four days"
    )
    parser.add_argument(
        "--bulk-rows", type=int, default=10_000_000, help="bulk: rows over three days"
    )
    parser.add_argument(
        "--tables", default="100,300,1000", help="tables: the table counts, comma-separated"
    )
    parser.add_argument(
        "--cluster-rows", type=int, default=2_000_000, help="cluster: the sharded source's rows"
    )
    parser.add_argument("--clickhouse-port", type=int, help="use a running ClickHouse")
    parser.add_argument("--clickhouse-http-port", type=int, default=8123)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="offloader-bench-") as tmp:
        work = Path(tmp)
        server_dir = work / "clickhouse"
        if args.clickhouse_port:
            port, http_port = args.clickhouse_port, args.clickhouse_http_port
        else:
            # From the work directory: ClickHouse reads the warehouses under it (the view).
            server = devserver.start(server_dir, files_root=work, query_log=True)
            port, http_port = server.tcp_port, server.http_port
        try:
            bench = Bench(work, port, http_port, None if args.clickhouse_port else server.pid)
            names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
            results: dict[str, Any] = {"machine": machine(), "scenarios": {}}
            for name in names:
                print(f"== {name}", file=sys.stderr, flush=True)
                started = time.perf_counter()
                results["scenarios"][name] = SCENARIOS[name](bench, args)
                results["scenarios"][name]["scenario_seconds"] = round(
                    time.perf_counter() - started, 1
                )
                for key, value in results["scenarios"][name].items():
                    print(f"  {key:<28} {value}", flush=True)
            bench.sql(f"DROP DATABASE IF EXISTS {bench.db}")
        finally:
            if not args.clickhouse_port:
                devserver.stop(server_dir)
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
