"""Peers measured in the same run as offloader, never quoted from memory.

    dlt       dlt's fastest path into Iceberg as its docs describe it: a `@dlt.resource`
              paging the table with clickhouse-connect's `query_arrow` (keyset on the
              watermark, `dlt.sources.incremental` so a second run is idle) into the
              filesystem destination with `table_format="iceberg"` (pyiceberg, SQLite
              catalog). Needs the optional `bench` extra: pip install -e ".[bench]".
    export    ClickHouse alone encoding the same rows as Parquet
              (`INSERT INTO FUNCTION file(..., Parquet) SELECT * ...`): what a transport
              that let ClickHouse write the files could approach.

`python -m benchmarks.peers dlt --http-port P --database D --table T --dir DIR` is one
dlt run, timed as a whole process by benchmarks.cycle (scenario `peers`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any


def dlt_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("dlt", "clickhouse_connect"))


def run_dlt(http_port: int, database: str, table: str, directory: Path, page_rows: int) -> int:
    """One dlt pipeline run of `database.table` into an Iceberg table under
    `directory`; returns the rows it loaded."""
    import clickhouse_connect  # type: ignore[import-not-found,unused-ignore]
    import dlt  # type: ignore[import-not-found,unused-ignore]

    client = clickhouse_connect.get_client(host="127.0.0.1", port=http_port)

    @dlt.resource(name=table, write_disposition="append", table_format="iceberg")  # type: ignore[untyped-decorator,unused-ignore]
    def rows(
        ts: Any = dlt.sources.incremental(  # noqa: B008 (dlt's documented idiom)
            "exchange_ts", initial_value=dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        ),
    ) -> Any:
        last = ts.last_value.strftime("%Y-%m-%d %H:%M:%S.%f")
        while True:
            page = client.query_arrow(
                f"SELECT * FROM {database}.{table} "
                f"WHERE exchange_ts > toDateTime64('{last}', 6, 'UTC') "
                f"ORDER BY exchange_ts LIMIT {page_rows}"
            )
            if page.num_rows == 0:
                return
            yield page
            last = page.column("exchange_ts")[-1].as_py().strftime("%Y-%m-%d %H:%M:%S.%f")
            if page.num_rows < page_rows:
                return

    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{table}",
        pipelines_dir=str(directory / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=f"file://{directory}/warehouse"),
        dataset_name="cold",
    )
    info = pipeline.run(rows())
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    loaded = 0
    if trace is not None and trace.last_normalize_info is not None:
        loaded = sum(trace.last_normalize_info.row_counts.get(t, 0) for t in (table,))
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("peer", choices=["dlt"])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--page-rows", type=int, default=100_000)
    parser.add_argument("--report", type=Path, help="write {rows, seconds} of pipeline.run here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    loaded = run_dlt(args.http_port, args.database, args.table, args.dir, args.page_rows)
    seconds = time.perf_counter() - started
    print(f"loaded {loaded} in {seconds:.2f} s")
    if args.report is not None:
        args.report.write_text(json.dumps({"rows": loaded, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
