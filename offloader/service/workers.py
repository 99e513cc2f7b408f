"""Worker processes: `offloader run` and `once` on every core of the host.

One Python process offloads on one core: its page decoding, Arrow conversion and
pyiceberg commits all hold one GIL (1,000 tables with a new row each: 87 s, 69 s of it
CPU, the second core idle). With more than one worker (`[offloader] workers`, by
default one per core and at most one per `max_parallel_tables` enabled tables) the
command starts that many processes of itself, each with its own event loop, supervisor
and connections, each offloading its share of the enabled tables: round robin over
their sorted targets, so shares differ by one table at most. Every table's run still
holds its PostgreSQL advisory lock, so two workers (or hosts) never run one table at
once, not even while a config reload moves a table from one share to another.

`once`: the workers' JSON reports are merged into one cycle report. A worker that dies
leaves its tables FAILED (reason "worker"); what it committed is kept and a run that
died between its two commits is recovered by the table's next run, as after any kill.
`run`: this process forwards SIGTERM, SIGINT and SIGHUP to every worker, restarts a
worker that exits while the service is not stopping (after a pause that grows while
it keeps failing), answers systemd's readiness and watchdog itself, and exits once
every worker has. Worker `i` serves its metrics on `metrics_port + i` (0: each its own
free port). One log stream: the workers write to this process's stdout and stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import anyio.abc
import orjson

from offloader.config import Config
from offloader.offload.supervisor import CycleReport
from offloader.report import Status, TableReport
from offloader.service.systemd import sd_notify, watchdog

log = logging.getLogger(__name__)

# A worker that ran this long before exiting is restarted after the shortest pause.
HEALTHY_SECONDS = 60.0
RESTART_PAUSE = (1.0, 30.0)  # first and longest pause before restarting a worker
WORKER_ENV = "OFFLOADER_WORKER"


def worker_count(cfg: Config) -> int:
    """How many worker processes the command runs (1: it offloads in its own process)."""
    if cfg.service.workers:
        return cfg.service.workers
    wanted = -(-len(cfg.enabled_tables) // cfg.service.max_parallel_tables)
    return max(1, min(os.cpu_count() or 1, wanted))


def share(cfg: Config, index: int, count: int) -> Config:
    """The config worker `index` of `count` runs: its enabled tables (every count-th of
    the sorted targets, from its index) and its own metrics port."""
    targets = sorted(t.target for t in cfg.enabled_tables)
    mine = set(targets[index::count])
    port = cfg.service.metrics_port
    service = dataclasses.replace(cfg.service, metrics_port=port + index if port else port)
    return dataclasses.replace(
        cfg, service=service, tables=tuple(t for t in cfg.tables if t.target in mine)
    )


def parse_worker(text: str) -> tuple[int, int]:
    """`--worker I/N` (an internal option: set by the parent process)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise ValueError(f"--worker must be I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _command(options: Sequence[str], command: str, index: int, count: int) -> list[str]:
    return [sys.executable, "-m", "offloader", *options, command, "--worker", f"{index}/{count}"]


def _child_env(index: int) -> dict[str, str]:
    """Worker `index`'s environment: its index (WORKER_ENV, in its log lines), without
    systemd's notification socket, which is the parent's alone."""
    env = dict(os.environ, **{WORKER_ENV: str(index)})
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


async def once(cfg: Config, count: int, options: Sequence[str]) -> CycleReport:
    """One cycle in `count` worker processes, their reports merged."""
    report = CycleReport(cycle_id=uuid.uuid4().hex, started_at=datetime.now(UTC))
    started = time.monotonic()
    outputs: list[tuple[int, bytes]] = [(0, b"")] * count

    async def one(index: int) -> None:
        done = await anyio.run_process(
            [*_command(options, "once", index, count), "--json"],
            check=False,
            stdin=subprocess.DEVNULL,
            stderr=None,  # the worker's log lines go to this process's stderr
            env=_child_env(index),
        )
        outputs[index] = (done.returncode, done.stdout)

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(one, index)
    for index, (code, out) in enumerate(outputs):
        report.tables += _worker_tables(cfg, index, count, code, out)
    order = {t.target: i for i, t in enumerate(cfg.enabled_tables)}
    report.tables.sort(key=lambda r: order.get(r.target, len(order)))
    report.seconds = time.monotonic() - started
    return report


def _worker_tables(cfg: Config, index: int, count: int, code: int, out: bytes) -> list[TableReport]:
    """A worker's table reports; its tables FAILED when it printed none (it died)."""
    lines = out.strip().splitlines()
    try:
        return [TableReport.from_dict(t) for t in orjson.loads(lines[-1])["tables"]]
    except (IndexError, KeyError, ValueError, TypeError):
        why = (
            f"worker {index} exited with {code} before reporting; what it committed is "
            "kept, and the table's next run recovers a commit it left half done"
        )
        return [
            TableReport(t.target, t.source, status=Status.FAILED, reason="worker", error=why)
            for t in share(cfg, index, count).enabled_tables
        ]


class Workers:
    """`offloader run` as `count` worker processes (module docstring)."""

    def __init__(self, count: int, options: Sequence[str], run_now: bool) -> None:
        self.count = count
        self.options = list(options)
        self.run_now = run_now
        self.stopping = anyio.Event()
        self.processes: dict[int, anyio.abc.Process] = {}
        self.restarts = 0

    def forward(self, signum: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                if signum != signal.SIGHUP:
                    if not self.stopping.is_set():
                        log.info(f"{signal.Signals(signum).name}: stopping every worker")
                    self.stopping.set()
                self.forward(signal.Signals(signum))

    async def keep(self, index: int) -> int:
        """Run worker `index` until the service stops, restarting it when it exits."""
        pause = RESTART_PAUSE[0]
        command = _command(self.options, "run", index, self.count)
        while True:
            started = time.monotonic()
            process = await anyio.open_process(
                [*command, *(["--now"] if self.run_now else [])],
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                env=_child_env(index),
                # Signals reach a worker from this process only, once each: a terminal's
                # Ctrl-C goes to its foreground process group, and a second SIGTERM
                # makes a worker exit without draining.
                start_new_session=True,
            )
            self.processes[index] = process
            if self.stopping.is_set():  # a signal came while it started
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            if self.stopping.is_set():
                return code
            if time.monotonic() - started > HEALTHY_SECONDS:
                pause = RESTART_PAUSE[0]
            log.error(
                "worker exited; restarting it",
                extra={"worker": index, "code": code, "in_seconds": pause},
            )
            self.restarts += 1
            with anyio.move_on_after(pause):
                await self.stopping.wait()
            if self.stopping.is_set():
                return 0
            pause = min(pause * 2, RESTART_PAUSE[1])
            self.run_now = True  # a restarted worker catches up at once


async def run(count: int, options: Sequence[str], run_now: bool) -> int:
    """`offloader run` in `count` worker processes; exits when every worker has."""

    workers = Workers(count, options, run_now)
    codes: list[int] = [0] * count
    log.info("offloader started", extra={"workers": count})

    async def one(index: int) -> None:
        codes[index] = await workers.keep(index)

    async with anyio.create_task_group() as tg:
        tg.start_soon(workers.signals)
        tg.start_soon(watchdog)
        async with anyio.create_task_group() as running:
            for index in range(count):
                running.start_soon(one, index)
            sd_notify("READY=1")
        tg.cancel_scope.cancel()
    log.info("offloader stopped", extra={"workers": count, "restarts": workers.restarts})
    return max(codes)
