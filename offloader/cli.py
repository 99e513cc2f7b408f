"""Command line: parse arguments, configure logging once, hand off.

Exit codes: 0 success; 1 a table failed (or a check failed); 2 configuration error or
a malformed option (one line naming the option); 3 `verify` compared nothing (no day in
the range: never mistaken for a proof).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import importlib.abc
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import orjson

from offloader.config import Config, config_path, parse_duration
from offloader.configfile import load_config
from offloader.errors import ConfigError, OffloaderError
from offloader.log import setup as setup_logging
from offloader.report import Status, Verdict

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_NOTHING = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the option (no usage block): what a
    cron job's mail or a log shows."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def day(text: str) -> dt.date:
    """An option's day: exactly YYYY-MM-DD (a real date)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a day: {text!r} (use YYYY-MM-DD)")


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"{text!r} is not DEBUG, INFO, WARNING or ERROR")
    return level


def day_range(args: argparse.Namespace) -> tuple[dt.date | None, dt.date | None]:
    """--since and --until of verify and repair (parsed by `day`), checked in order."""
    since, until = args.since, args.until
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"--since {since} must be before --until {until}")
    return since, until


def _global_options(*, suppress: bool) -> _Parser:
    """--config, --log-format and --log-level, for the main parser (with defaults) and
    for every command (without: a default there would override the value given before
    the command)."""
    options = _Parser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    options.add_argument(
        "--config",
        type=nonempty,
        default=default(None),
        help="config file (default: $OFFLOADER_CONFIG or config/tables.toml)",
    )
    options.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=default(None),
        help="log lines as JSON objects (default when not a terminal) or text",
    )
    options.add_argument(
        "--log-level", type=log_level, default=default("INFO"), help="DEBUG, INFO, WARNING or ERROR"
    )
    return options


def build_parser() -> _Parser:
    """The command line: global options, then one subcommand, added group by group in
    the order `--help` lists them."""
    parser = _Parser(
        prog="offloader",
        description="Move rows from ClickHouse to Apache Iceberg, exactly once.",
        parents=[_global_options(suppress=False)],
    )
    # The installed distribution's version (pyproject.toml), whichever way it was installed.
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version('offloader')}"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    # Global options are accepted after the command too (`offloader once --config X`);
    # there they only override what was given before it.
    globals_after = _global_options(suppress=True)

    def add_parser(name: str, **kwargs: Any) -> _Parser:
        return sub.add_parser(name, parents=[globals_after], **kwargs)

    _add_service_commands(add_parser)
    _add_inspection_commands(add_parser)
    _add_upkeep_commands(add_parser)
    _add_setup_commands(add_parser)
    return parser


def _add_service_commands(add_parser: Callable[..., _Parser]) -> None:
    """`once` and `run`: offloading cycles."""
    once = add_parser("once", help="run one cycle over every enabled table and exit")
    once.add_argument("--json", action="store_true", help="print the cycle report as JSON")
    once.add_argument("--worker", type=worker_share, help=argparse.SUPPRESS)

    run = add_parser("run", help="run as a service: a cycle on every aligned interval")
    run.add_argument("--now", action="store_true", help="run a first cycle immediately")
    run.add_argument("--worker", type=worker_share, help=argparse.SUPPRESS)


def _add_inspection_commands(add_parser: Callable[..., _Parser]) -> None:
    """`status`, `validate` and `verify`: they look, and change nothing."""
    status = add_parser("status", help="per-table watermark, last run and lag")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a table's lag exceeds [offloader] lag_alert or its last run failed",
    )

    validate = add_parser("validate", help="check the config (and, live, the sources)")
    validate.add_argument(
        "--offline", action="store_true", help="check the file only, without connecting"
    )

    verify = add_parser(
        "verify", help="compare ClickHouse and Iceberg per day up to the committed watermark"
    )
    verify.add_argument("tables", nargs="*", metavar="TABLE", help="targets (default: all)")
    verify.add_argument("--since", type=day, help="first day to compare (YYYY-MM-DD)")
    verify.add_argument("--until", type=day, help="day to stop before (YYYY-MM-DD)")
    verify.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def _add_upkeep_commands(add_parser: Callable[..., _Parser]) -> None:
    """`expire`, `maintain`, `repair` and `retain`: upkeep of the two tiers."""
    expire = add_parser(
        "expire", help="expire old Iceberg snapshots, always keeping the newest offloader commit"
    )
    expire.add_argument("tables", nargs="*", metavar="TABLE", help="targets (default: all)")
    expire.add_argument(
        "--older-than",
        type=duration,
        default="7d",
        help="retention, a duration such as 7d or 36h (default 7d)",
    )

    maintain = add_parser(
        "maintain",
        help="compact small files, expire snapshots, delete orphan files (see [maintenance])",
    )
    maintain.add_argument("tables", nargs="*", metavar="TABLE", help="targets (default: all)")
    maintain.add_argument(
        "--dry-run", action="store_true", help="print what would be rewritten and deleted"
    )
    maintain.add_argument("--json", action="store_true", help="print the reports as JSON")
    maintain.add_argument(
        "--field-ids",
        action="store_true",
        help="also write again (data pages unchanged) the data files whose footer lacks "
        "Iceberg field ids, so readers that map columns by id only (Daft) read them",
    )
    _add_repair_command(add_parser)

    retain = add_parser(
        "retain",
        help="drop hot partitions older than hot_retention that Iceberg verifiably holds",
    )
    retain.add_argument("tables", nargs="*", metavar="TABLE", help="targets (default: all)")
    retain.add_argument(
        "--dry-run",
        action="store_true",
        help="list each partition it would drop with both tiers' counts; drop nothing",
    )
    retain.add_argument("--json", action="store_true", help="print the reports as JSON")


def _add_repair_command(add_parser: Callable[..., _Parser]) -> None:
    repair = add_parser(
        "repair",
        help="replace days of an Iceberg table with ClickHouse's rows (late rows, mutations)",
    )
    repair.add_argument("table", help="target (or source) name of the table")
    repair.add_argument("--since", type=day, help="first day to replace (YYYY-MM-DD)")
    repair.add_argument("--until", type=day, help="day to stop before (YYYY-MM-DD)")
    repair.add_argument(
        "--dry-run", action="store_true", help="print the days and row counts, change nothing"
    )
    repair.add_argument(
        "--force",
        action="store_true",
        help="also replace named days ClickHouse may no longer fully hold (Iceberg's rows "
        "of those days are lost)",
    )
    repair.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_setup_commands(add_parser: Callable[..., _Parser]) -> None:
    """`add`, `grants` and `reset`: onboarding tables, access, recovery."""
    add = add_parser(
        "add",
        help="propose [[tables]] blocks from ClickHouse's metadata, check them live, append "
        "them to the config",
    )
    add.add_argument("sources", nargs="*", metavar="SOURCE", help="database.table to add")
    add.add_argument(
        "--all", metavar="DATABASE", help="also every readable table of DATABASE not yet added"
    )
    add.add_argument("--namespace", help="Iceberg namespace of the targets (default: the usual)")
    add.add_argument(
        "--dry-run", action="store_true", help="print the blocks, write nothing to the config"
    )

    grants = add_parser(
        "grants",
        help="print the ClickHouse and PostgreSQL grants offloader needs for the config",
    )
    grants.add_argument(
        "--user", type=nonempty, help="ClickHouse user to grant to (default: [clickhouse] user)"
    )
    grants.add_argument(
        "--local-table",
        action="append",
        default=[],
        metavar="SOURCE=DB.TABLE",
        help="a Distributed source and the local table under it on every node (repeatable)",
    )

    reset = add_parser(
        "reset", help="recovery: set a table's PostgreSQL watermark to what Iceberg holds"
    )
    reset.add_argument("table", help="target (or source) name of the table")
    reset.add_argument("--yes", action="store_true", help="do it (without --yes: show only)")


def tune_memory() -> None:
    """Keep the resident set bounded by what a cycle holds, not by allocator caches.

    Measured (benchmarks/RESULTS.md, memory scenario): glibc's per-thread malloc
    arenas (pages are decoded on the event loop thread and converted in workers) and
    pyarrow's mimalloc pool together kept ~90 MB more resident than needed.
    Environment variables set by the operator win. Runs before pyarrow is imported:
    Arrow's C++ default pool is chosen from the environment once.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform == "linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-8, 2)  # M_ARENA_MAX = 2, before any worker thread exists
        except (OSError, AttributeError):
            pass


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses `import pandas` in an offloader process, which never uses it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (unused by offloader)", name=name)
        return None


def without_pandas() -> None:
    """pyarrow.dataset, which pyiceberg imports, imports pandas whenever it is installed
    (it is, beside the embedded ClickHouse): measured 0.3-0.4 s and 35 MB more for every
    process that opens Iceberg. offloader never uses pandas, and pyarrow treats it as
    absent when its import fails. Only in the command's own process (entry), never
    where offloader is imported as a library."""
    if not any(isinstance(f, _NoPandas) for f in sys.meta_path) and "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


def entry() -> None:
    """The `offloader` command: main(), then the process ends. Its objects are frozen
    out of the cyclic garbage collector first: the collections of interpreter shutdown
    traversed every object pyiceberg, pyarrow and SQLAlchemy had created, 0.3-0.4 s of
    a 2 s `offloader once` (measured, benchmarks/RESULTS.md). Everything that holds a
    resource (PostgreSQL, ClickHouse sessions, files, the catalog) is closed by main()
    itself, and atexit handlers (log flushing) still run."""
    without_pandas()
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_memory()
    fmt = args.log_format or ("text" if sys.stderr.isatty() else "json")
    stream = sys.stdout if args.command == "run" else sys.stderr
    setup_logging(fmt, args.log_level, stream)
    path = config_path(args.config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"offloader: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        handler = _COMMANDS[args.command]
        result: int = anyio.run(handler, cfg, args)
        return result
    except ConfigError as exc:
        print(f"offloader: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OffloaderError as exc:
        print(f"offloader: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `offloader status | head`
        return EXIT_OK


def worker_share(text: str) -> tuple[int, int]:
    from offloader.service.workers import parse_worker

    try:
        return parse_worker(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _worker_options(cfg: Config, args: argparse.Namespace) -> list[str]:
    """The global options a worker process of this command is started with."""
    return ["--config", cfg.path, "--log-level", args.log_level] + (
        ["--log-format", args.log_format] if args.log_format else []
    )


async def _once(cfg: Config, args: argparse.Namespace) -> int:
    from offloader import progress
    from offloader.offload.supervisor import run_once
    from offloader.service import workers

    if args.worker:
        cfg = workers.share(cfg, *args.worker)
    count = 1 if args.worker else workers.worker_count(cfg)
    if count > 1:
        report = await workers.once(cfg, count, _worker_options(cfg, args))
    elif progress.wanted(args.json):
        with progress.TerminalProgress() as bars:
            report = await run_once(cfg, progress=bars)
    else:
        report = await run_once(cfg)
    if args.json:
        print(report.to_json())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


async def _run(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.service import workers
    from offloader.service.scheduler import serve

    count = 1 if args.worker else workers.worker_count(cfg)
    if count > 1:
        return await workers.run(count, _worker_options(cfg, args), args.now)
    return await serve(cfg.path, cfg, run_now=args.now, worker=args.worker)


async def _status(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops.status import collect, render
    from offloader.tiers.services import open_services

    async with open_services(cfg, connections=2) as services:
        statuses = await collect(services, cfg)
    if args.json:
        print(orjson.dumps([s.as_dict() for s in statuses], option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(statuses))
    if not args.check:
        return EXIT_OK
    bad = [
        s
        for s in statuses
        if s.enabled
        and (
            (s.lag_seconds is not None and s.lag_seconds > cfg.service.lag_alert)
            or s.last_status == Status.FAILED
            or s.problem
            or s.ttl_warning
            or s.drifted_days
            or s.view_problem
            or (s.retention_last or {}).get("result") == Status.FAILED
        )
    ]
    for s in bad:
        print(
            f"offloader: CHECK FAILED {s.target}: lag {s.lag_seconds}s "
            f"(limit {cfg.service.lag_alert:g}s), last run {s.last_status}"
            + (f", problem: {s.problem}" if s.problem else "")
            + (f", {s.ttl_warning}" if s.ttl_warning else "")
            + (
                f", late rows on {len(s.drifted_days)} days "
                f"({', '.join(d['day'] for d in s.drifted_days)}): run `offloader repair "
                f"{s.target}`"
                if s.drifted_days
                else ""
            )
            + (f", {s.view_problem}" if s.view_problem else "")
            + (
                f", last retention pass failed: {(s.retention_last or {}).get('error')}"
                if (s.retention_last or {}).get("result") == Status.FAILED
                else ""
            ),
            file=sys.stderr,
        )
    return EXIT_FAILED if bad else EXIT_OK


async def _validate(cfg: Config, args: argparse.Namespace) -> int:
    print(
        f"{cfg.path}: configuration OK, {len(cfg.tables)} tables "
        f"({len(cfg.enabled_tables)} enabled)"
    )
    if args.offline:
        return EXIT_OK
    from offloader import iceberg, source
    from offloader.errors import TableError
    from offloader.iceberg import IcebergCatalog
    from offloader.ops import retention
    from offloader.tiers import view

    failed = 0
    catalog = IcebergCatalog(cfg.catalog)
    for namespace in sorted({t.target_namespace for t in cfg.tables}):
        try:
            checks = await anyio.to_thread.run_sync(catalog.probe, namespace)
            print("Iceberg: " + "; ".join(checks))
        except TableError as exc:
            failed += 1
            print(f"Iceberg: ERROR {exc}")
    for table in cfg.tables:
        try:
            async with source.open_table(cfg.clickhouse, table) as src:
                schema = src.plan.schema
                kinds = {c.name: str(c.ch_type) for c in src.plan.columns}
                src.source.pager(table, src.plan)  # the transport refuses what it cannot store
                probed = []
                if table.view is not None:
                    ice = await anyio.to_thread.run_sync(catalog.load, table.target)
                    probed.append(
                        await view.probe_everywhere(src, cfg.views, table, ice, cfg.clickhouse)
                    )
                if table.hot_retention is not None:
                    probed.append(await retention.check(src, table))
            print(f"\n{table.source} -> {table.target}{'' if table.enabled else ' (disabled)'}: OK")
            print(iceberg.describe(schema, table.partition_by, kinds))
            for line in probed:
                print(line)
        except TableError as exc:
            failed += 1
            print(f"\n{table.source} -> {table.target}: ERROR {exc}")
    return EXIT_FAILED if failed else EXIT_OK


async def _add(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops import onboard

    if not args.sources and not args.all:
        raise ConfigError("add: name a source (database.table) or --all DATABASE")
    return await onboard.add(cfg, args.sources, args.all, args.namespace, args.dry_run)


async def _grants(cfg: Config, args: argparse.Namespace) -> int:
    """Print the grants; reads the config only (no server is contacted)."""
    import getpass

    from offloader.ops.grants import clickhouse_grants, parse_local_tables, postgres_statements

    user = args.user or cfg.clickhouse.user
    local_tables = parse_local_tables(args.local_table, cfg)
    print(f"-- ClickHouse, on every node ({cfg.path}):")
    for grant in clickhouse_grants(cfg, local_tables):
        print(grant.statement(user))
    print("-- PostgreSQL, the state database:")
    for line in postgres_statements(cfg, os.environ.get("PGUSER") or getpass.getuser()):
        print(line)
    return EXIT_OK


async def _reset(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.iceberg import IcebergCatalog
    from offloader.postgres.watermarks import Watermarks

    table = cfg.table(args.table)
    ice = await anyio.to_thread.run_sync(IcebergCatalog(cfg.catalog).load, table.target)
    mark = await anyio.to_thread.run_sync(ice.latest_mark) if ice is not None else None
    seq = mark.seq if mark else 0
    position: Any = list(mark.position) if mark else None
    watermarks = await Watermarks.open(cfg.postgres, max_size=2)
    try:
        state = await watermarks.get(table.target, table.source)
        print(
            f"{table.target}: PostgreSQL at commit {state.seq} {state.position}; "
            f"Iceberg at commit {seq} {position}"
        )
        if not args.yes:
            print("dry run: pass --yes to set PostgreSQL to what Iceberg holds")
            return EXIT_OK
        async with watermarks.table_lock(table.target):
            await watermarks.reset(table.target, seq, position)
        print(f"{table.target}: PostgreSQL watermark set to commit {seq} {position}")
    finally:
        await watermarks.close()
    return EXIT_OK


async def _verify(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops.verify import verify_table
    from offloader.tiers.services import open_services

    since, until = day_range(args)
    tables = [cfg.table(t) for t in args.tables] if args.tables else list(cfg.enabled_tables)
    if not tables:
        print(f"offloader: {cfg.path}: no enabled table to verify", file=sys.stderr)
        return EXIT_NOTHING
    verdicts = []
    async with open_services(cfg, connections=2) as services:
        retained = {r.target: r.retained_until for r in await services.watermarks.status()}
        for table in tables:
            verdict = await verify_table(services, table, since, until, retained.get(table.target))
            verdicts.append(verdict)
            if not args.json:
                print(verdict.render())
    if args.json:
        print(orjson.dumps([v.as_dict() for v in verdicts], option=orjson.OPT_INDENT_2).decode())
    if any(not v.ok for v in verdicts):
        return EXIT_FAILED
    # Comparing no day proves nothing: a typo'd range must not pass a cron check.
    return EXIT_NOTHING if any(v.result == Verdict.NOTHING for v in verdicts) else EXIT_OK


async def _maintain(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops.maintenance import maintain
    from offloader.tiers.services import open_services

    tables = [cfg.table(t) for t in args.tables] if args.tables else list(cfg.enabled_tables)
    async with open_services(cfg, connections=2) as services:
        reports = await maintain(services, tables, dry_run=args.dry_run, field_ids=args.field_ids)
    if args.json:
        print(orjson.dumps([r.as_dict() for r in reports], option=orjson.OPT_INDENT_2).decode())
    else:
        for r in reports:
            print(r.line())
            for step in r.planned:
                print(f"  {step}")
    failed = [r for r in reports if r.status == Status.FAILED]
    for r in failed:
        print(f"offloader: maintenance FAILED {r.error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


async def _repair(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops.repair import RepairReport, repair_table
    from offloader.tiers.services import open_services

    table = cfg.table(args.table)
    since, until = day_range(args)
    if args.force and not (since or until):
        raise ConfigError("--force needs the days named with --since/--until")
    from offloader import progress

    async def run(bars: progress.Progress | None = None) -> RepairReport:
        async with open_services(cfg, bars, connections=2) as services:
            return await repair_table(
                services, table, since=since, until=until, force=args.force, dry_run=args.dry_run
            )

    if progress.wanted(args.json) and not args.dry_run:
        with progress.TerminalProgress() as bars:
            report = await run(bars)
    else:
        report = await run()
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in report.lines():
            print(line)
    if report.status in (Status.FAILED, Status.REFUSED) or report.refused:
        print(
            f"offloader: repair of {table.target} {report.status}"
            + (f": {report.error}" if report.error else "; see the REFUSED lines"),
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


async def _expire(cfg: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from offloader.iceberg import IcebergCatalog, files
    from offloader.postgres.watermarks import Watermarks

    keep: float = args.older_than  # parsed by `duration`
    cutoff = datetime.now(UTC) - timedelta(seconds=keep)
    catalog = IcebergCatalog(cfg.catalog)
    tables = [cfg.table(t) for t in args.tables] if args.tables else list(cfg.tables)
    watermarks = await Watermarks.open(cfg.postgres, max_size=2)
    try:
        # The snapshot each view over both tiers reads is kept until the view moves on.
        kept = {t.target for t in cfg.tables if t.view is not None}
        viewed = {v.snapshot_id for v in await watermarks.views() if v.target in kept}
    finally:
        await watermarks.close()
    for table in tables:
        ice = await anyio.to_thread.run_sync(catalog.load, table.target)
        if ice is None:
            print(f"{table.target}: no Iceberg table yet")
            continue
        victims = await anyio.to_thread.run_sync(files.expirable_snapshots, ice, cutoff)
        victims = [v for v in victims if v not in viewed]
        await anyio.to_thread.run_sync(files.expire, ice, victims)
        expired = len(victims)
        print(
            f"{table.target}: expired {expired} snapshots older than {cutoff:%Y-%m-%d %H:%M} UTC; "
            f"{ice.snapshot_count()} kept"
        )
    return EXIT_OK


async def _retain(cfg: Config, args: argparse.Namespace) -> int:
    from offloader.ops.retention import RetentionReport, retain
    from offloader.tiers.services import open_services

    tables = [cfg.table(t) for t in args.tables] if args.tables else list(cfg.enabled_tables)
    async with open_services(cfg, connections=2) as services:
        reports = await retain(services, tables, dry_run=args.dry_run)
    off = [RetentionReport(t.target, status=Status.OFF) for t in tables if t.hot_retention is None]
    if args.json:
        shown = [r.as_dict() for r in [*reports, *off]]
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        for report in [*reports, *off]:
            print("\n".join(report.lines()))
    if not reports and not args.json:
        print("offloader: no table sets hot_retention", file=sys.stderr)
    bad = [r for r in reports if r.status == Status.FAILED or r.refused or r.late]
    return EXIT_FAILED if bad else EXIT_OK


_COMMANDS: dict[str, Any] = {
    "add": _add,
    "verify": _verify,
    "expire": _expire,
    "maintain": _maintain,
    "repair": _repair,
    "once": _once,
    "run": _run,
    "status": _status,
    "validate": _validate,
    "reset": _reset,
    "grants": _grants,
    "retain": _retain,
}


if __name__ == "__main__":
    sys.exit(main())
