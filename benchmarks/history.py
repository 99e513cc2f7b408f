"""Does a run's cost stay flat as a table's history grows?

Hypothesis: a run with one new row costs the same on a table carrying a week of
15-minute commits (700 snapshots; `snapshot_retention` defaults to 7d) as on a new
table, within 1.1x: nothing a run does (its commit, the recovery's newest marker, the
audit) walks or copies the whole history.

Two identical tables in one ClickHouse: `fresh` (one offload) and `aged` (one offload,
then --snapshots in-process cycles of one new row each, no maintenance so no snapshot
is expired). Then, alternately, a whole `offloader once` process with one new row on
each (A, B, A, B, ..., --repeats pairs): wall seconds, and the run's own stages from
its `--json` report, less `open_iceberg` (which loads the table: its cost is the
metadata file's size, reported separately).

    python -m benchmarks.history                          # 700 snapshots, 7 pairs
    python -m benchmarks.history --snapshots 200 --repeats 5 --json benchmarks/history.json
    python -m benchmarks.history --maintain --json benchmarks/history_maintained.json

With --maintain, the aged table's commits are 15 minutes of watermark apart (700 span a
week, as in service) and `offloader maintain` runs on both tables once the history is
built, as the service does between cycles: closed days are compacted into one file
each, while every snapshot stays (they are younger than `snapshot_retention`), so the
aged table keeps its 700 snapshots but not its 700 one-row files.

Building the history takes minutes (each cycle is a real commit). Run on a quiet
machine: on 2 cores a busy neighbour moves these ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.cycle import (
    SMALL_DDL,
    SMALL_INSERT,
    Bench,
    cycle,
    machine,
    timed_process,
    whole_process,
)
from offloader.dev import devserver


def _once(b: Bench, path: Path, name: str, first: int, work: Path) -> dict[str, float]:
    b.sql(SMALL_INSERT.format(db=b.db, name=name, first=first, rows=1))
    out = work / f"{name}-{first}.json"
    wall, peak = whole_process(path, out)
    (table,) = orjson.loads(out.read_text())["tables"]
    assert table["rows"] == 1, table
    stages = table["stages"]
    run = table["seconds"] - stages.get("open_iceberg", 0.0)
    return {
        "wall_s": wall,
        "peak_mb": peak,
        "run_less_open_s": run,
        "open_iceberg_s": stages.get("open_iceberg", 0.0),
        "iceberg_commit_s": stages.get("iceberg_commit", 0.0),
        "audit_s": stages.get("audit", 0.0),
    }


def run(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    b.sql(f"CREATE DATABASE IF NOT EXISTS {b.db}")
    paths = {}
    for name in ("fresh", "aged"):
        b.sql(SMALL_DDL.format(db=b.db, name=name))
        b.sql(SMALL_INSERT.format(db=b.db, name=name, first=0, rows=1000))
        paths[name] = b.config([name], watermark="ts", key="id")
        cycle(paths[name])
    started = time.perf_counter()
    spacing = 900 if args.maintain else 1  # seconds of watermark between two commits
    for i in range(args.snapshots):
        b.sql(SMALL_INSERT.format(db=b.db, name="aged", first=10_000 + i * spacing, rows=1))
        cycle(paths["aged"])
        if (i + 1) % 100 == 0:
            print(f"  history: {i + 1} commits", file=sys.stderr, flush=True)
    built = time.perf_counter() - started
    if args.maintain:
        for name in ("fresh", "aged"):
            command = [sys.executable, "-m", "offloader", "--config", str(paths[name])]
            timed_process([*command, "--log-level", "WARNING", "maintain"])
    figures: dict[str, list[dict[str, float]]] = {"fresh": [], "aged": []}
    for i in range(args.repeats):
        for name in ("fresh", "aged"):  # alternating, one pair at a time
            figures[name].append(_once(b, paths[name], name, 1_000_000 + i, b.work))
    out: dict[str, Any] = {
        "snapshots": args.snapshots + 1,
        "history_build_s": round(built, 1),
        "maintained": bool(args.maintain),
    }
    for name, runs in figures.items():
        out[name] = {
            key: {
                "min": round(min(r[key] for r in runs), 3),
                "median": round(statistics.median(r[key] for r in runs), 3),
                "max": round(max(r[key] for r in runs), 3),
            }
            for key in runs[0]
        }
    for key in ("run_less_open_s", "wall_s", "iceberg_commit_s", "audit_s"):
        fresh = out["fresh"][key]["median"]
        out[f"ratio_{key}"] = round(out["aged"][key]["median"] / fresh, 2) if fresh else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history")
    parser.add_argument("--snapshots", type=int, default=700, help="commits of the aged table")
    parser.add_argument("--repeats", type=int, default=7, help="alternating pairs measured")
    parser.add_argument(
        "--maintain", action="store_true", help="run `offloader maintain` on both tables first"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="offloader-history-") as tmp:
        work = Path(tmp)
        server = devserver.start(work / "clickhouse", files_root=work)
        try:
            result = {
                "machine": machine(),
                "history": run(Bench(work, server.tcp_port, server.http_port), args),
            }
        finally:
            devserver.stop(work / "clickhouse")
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
