"""Does the cold tier stay fast as a table ages? Hundreds of small cycles of two identical
tables, one left alone and one maintained (`offloader maintain` every --maintain-every
cycles), measured side by side in the same run.

Hypothesis: without maintenance every cycle adds a small data file per partition, a
manifest and a snapshot, so commits and reads slow down with the table's age; with it
each closed day holds one file, the current snapshot a few manifests, the metadata
directory about `metadata_versions` files, and commit and reader times stay flat.

    python -m benchmarks.aging                          # 400 cycles, default sizes
    python -m benchmarks.aging --cycles 1000 --json benchmarks/aging.json

Simulated time: each cycle inserts --rows-per-cycle rows 15 minutes after the last
cycle's (96 cycles a day). Snapshot retention is simulated too: a maintenance pass
expires the snapshots of cycles older than --retention-cycles (default 96: one day of
15-minute cycles) rather than a wall-clock age, since the whole run lasts minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from benchmarks.cycle import Bench, machine
from offloader.configfile import load_config
from offloader.dev import devserver
from offloader.iceberg import IcebergCatalog, files
from offloader.offload.supervisor import run_cycle
from offloader.ops.maintenance import maintain
from offloader.tiers.services import open_services

INSERT = """
INSERT INTO {db}.{name} (exchange_ts, received_ts, trade_id, symbol, price, quantity, side,
                         is_maker, venue_seq, tags)
SELECT toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMinute({cycle} * 15)
           + toIntervalMicrosecond(number * 1000),
       toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMinute({cycle} * 15),
       {cycle} * 100000 + number + 1,
       ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1],
       toDecimal128(60000 + number / 7, 10),
       toDecimal128((number % 997 + 1) / 1000, 10),
       if(number % 2 = 0, 'buy', 'sell'),
       number % 3 = 0,
       toInt64(number),
       [['binance', 'kraken'][number % 2 + 1]]
FROM numbers({rows})
"""


def read_times(catalog: IcebergCatalog, target: str, day: str, repeats: int) -> dict[str, Any]:
    """Reader time on the table as it is: pyiceberg count(*) and one day's rows, and
    ClickHouse's own Iceberg reader (in-process chDB icebergLocal) count(*)."""
    ice = catalog.load(target)
    assert ice is not None
    table = ice.table
    nxt = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    day_filter = f"exchange_ts >= '{day}T00:00:00+00:00' and exchange_ts < '{nxt}T00:00:00+00:00'"
    full, one_day, ch = [], [], []
    rows = day_rows = 0
    location = table.location().removeprefix("file://")
    import chdb

    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = table.scan(selected_fields=("trade_id",)).to_arrow().num_rows
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        day_rows = table.scan(row_filter=day_filter).to_arrow().num_rows
        one_day.append(time.perf_counter() - t0)
        cwd = os.getcwd()
        os.chdir("/")
        try:
            t0 = time.perf_counter()
            ch_rows = int(str(chdb.query(f"SELECT count() FROM icebergLocal('{location}')")))
            ch.append(time.perf_counter() - t0)
        finally:
            os.chdir(cwd)
        assert ch_rows == rows, (ch_rows, rows)
    return {
        "rows": rows,
        "day_rows": day_rows,
        "pyiceberg_count_seconds": round(statistics.median(full), 4),
        "pyiceberg_one_day_seconds": round(statistics.median(one_day), 4),
        "clickhouse_icebergLocal_count_seconds": round(statistics.median(ch), 4),
    }


def shape_of(catalog: IcebergCatalog, target: str) -> dict[str, Any]:
    ice = catalog.load(target)
    assert ice is not None
    s = files.shape(ice)
    live = files.live_files(ice, "exchange_ts")
    per_day: dict[Any, int] = {}
    for f in live.stats:
        per_day[f.partition] = per_day.get(f.partition, 0) + 1
    days = [per_day[k] for k in sorted(per_day)]
    location = Path(ice.table.location().removeprefix("file://"))
    return {
        "data_files": s.data_files,
        "max_files_per_closed_day": max(days[:-1]) if len(days) > 1 else None,
        "manifests": s.manifests,
        "snapshots": s.snapshots,
        "metadata_json_files": len(list((location / "metadata").glob("*.metadata.json"))),
        "files_on_disk": sum(1 for p in location.rglob("*") if p.is_file()),
    }


def run(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    names = ["age_plain", "age_maint"]
    b.make_tables(names, 0)
    # One table at a time: a concurrent commit of the other table would share the GIL
    # and blur the commit times being compared.
    path = b.config(names, parallel=1, batch_rows=10_000)
    cfg = load_config(path)
    commit: dict[str, list[float]] = {n: [] for n in names}
    started_at: list[float] = []
    passes: list[dict[str, Any]] = []

    async def go() -> None:
        async with open_services(cfg) as services:
            for i in range(args.cycles):
                for n in names:
                    query = INSERT.format(db=b.db, name=n, cycle=i, rows=args.rows_per_cycle)
                    await anyio.to_thread.run_sync(b.sql, query)
                started_at.append(time.time())
                report = await run_cycle(cfg, services)
                if not report.ok:
                    raise SystemExit(report.summary())
                for t in report.tables:
                    commit[t.target.split(".")[1]].append(t.stages.get("iceberg_commit", 0.0))
                if (i + 1) % args.maintain_every == 0:
                    back = max(0, len(started_at) - args.retention_cycles)
                    retention = max(0.0, time.time() - started_at[back])
                    # Orphans: the run is one process doing one thing at a time, so files
                    # unreferenced for a few seconds are safe to delete.
                    mcfg = dataclasses.replace(
                        cfg.maintenance, snapshot_retention=retention, orphan_age=args.orphan_age
                    )
                    t0 = time.perf_counter()
                    services.maintenance = mcfg
                    (rep,) = await maintain(services, [cfg.table("cold.age_maint")])
                    if rep.status != "ok":
                        raise SystemExit(f"maintenance failed: {rep.error}")
                    passes.append(
                        {
                            "seconds": time.perf_counter() - t0,
                            "files_rewritten": rep.files_rewritten,
                        }
                    )
                if (i + 1) % 50 == 0:
                    print(f"  cycle {i + 1}/{args.cycles}", file=sys.stderr, flush=True)

    anyio.run(go)
    catalog = IcebergCatalog(cfg.catalog, cfg.maintenance)
    window = args.window
    out: dict[str, Any] = {
        "cycles": args.cycles,
        "rows_per_cycle": args.rows_per_cycle,
        "maintain_every": args.maintain_every,
        "retention_cycles": args.retention_cycles,
        "maintenance_passes": len(passes),
        "maintenance_pass_median_seconds": round(statistics.median(p["seconds"] for p in passes), 3)
        if passes
        else None,
    }
    for n in names:
        first = statistics.median(commit[n][1 : window + 1])  # [0] creates the table
        last = statistics.median(commit[n][-window:])
        # Once the retention window is full, a maintained table's shape stops growing:
        # commit time just after that point against the last cycles.
        at = args.retention_cycles + args.maintain_every
        steady = (
            statistics.median(commit[n][at : at + window]) if at + window < len(commit[n]) else None
        )
        out[n] = {
            "commit_first_seconds": round(first, 4),
            "commit_last_seconds": round(last, 4),
            "commit_last_over_first": round(last / first, 2),
            "commit_after_retention_window_seconds": round(steady, 4) if steady else None,
            "commit_last_over_after_retention_window": round(last / steady, 2) if steady else None,
            **shape_of(catalog, f"cold.{n}"),
            **read_times(catalog, f"cold.{n}", "2026-01-02", args.repeats),
        }
    plain, maint = out["age_plain"], out["age_maint"]
    for key in ("pyiceberg_count_seconds", "clickhouse_icebergLocal_count_seconds"):
        out[f"{key}_plain_over_maintained"] = round(plain[key] / maint[key], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aging")
    parser.add_argument("--cycles", type=int, default=400)
    parser.add_argument("--rows-per-cycle", type=int, default=200)
    parser.add_argument("--maintain-every", type=int, default=4, help="cycles (4 = hourly)")
    parser.add_argument("--retention-cycles", type=int, default=96)
    parser.add_argument("--orphan-age", type=float, default=5.0, help="seconds")
    parser.add_argument("--window", type=int, default=20, help="cycles averaged first/last")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="offloader-aging-") as tmp:
        work = Path(tmp)
        server = devserver.start(work / "clickhouse")
        try:
            bench = Bench(work, server.tcp_port, server.http_port, server.pid)
            started = time.perf_counter()
            result = {"machine": machine(), "aging": run(bench, args)}
            result["aging"]["scenario_seconds"] = round(time.perf_counter() - started, 1)
            bench.sql(f"DROP DATABASE IF EXISTS {bench.db}")
        finally:
            devserver.stop(work / "clickhouse")
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
