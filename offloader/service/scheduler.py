"""`offloader run`: cycles on aligned ticks, config reload, graceful shutdown, sd_notify.

Ticks fall on multiples of `interval` counted from the top of the hour (15m:
:00, :15, :30, :45), all in UTC. A cycle that overruns skips the ticks it
missed; they are never piled up or run back to back.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.abc

from offloader.config import Config
from offloader.configfile import load_config
from offloader.errors import ConfigError, TableError
from offloader.offload.supervisor import run_cycle
from offloader.report import Status
from offloader.service.metrics import Metrics
from offloader.service.systemd import sd_notify, watchdog
from offloader.service.workers import share
from offloader.tiers.services import open_services

if TYPE_CHECKING:
    from offloader.ops.maintenance import MaintenanceReport
    from offloader.ops.retention import RetentionReport

T = TypeVar("T")

# A maintenance pass only starts when at least this much time is left before the next
# tick, and ends this long before it: maintenance never delays a cycle.
MAINTENANCE_MIN_WINDOW = 10.0
MAINTENANCE_TICK_MARGIN = 5.0

log = logging.getLogger(__name__)


def next_tick(now: float, interval: float) -> float:
    """The first aligned tick strictly after `now` (epoch seconds, UTC)."""
    if interval <= 3600:
        hour = math.floor(now / 3600) * 3600
        k = math.floor((now - hour) / interval) + 1
        return min(hour + k * interval, hour + 3600)
    return (math.floor(now / interval) + 1) * interval


@dataclass(frozen=True, slots=True)
class Missed:
    next_at: float
    skipped: int


def after_cycle(scheduled: float, now: float, interval: float) -> Missed:
    """Where to go after a cycle that was due at `scheduled` ends at `now`."""
    nxt = next_tick(scheduled, interval)
    skipped = 0
    while nxt <= now:
        skipped += 1
        nxt = next_tick(nxt, interval)
    return Missed(nxt, skipped)


class Service:
    def __init__(self, path: str, cfg: Config, worker: tuple[int, int] | None = None) -> None:
        self.path = path
        self.worker = worker  # (index, count): a worker process runs its share of the tables
        self.cfg = cfg
        self.stopping = anyio.Event()
        self.wake = anyio.Event()
        self.metrics = Metrics()
        self.metrics.track(t.target for t in cfg.enabled_tables)
        self.cycles = 0
        # Epoch seconds of the next maintenance and retention passes (the first ones
        # follow the first cycle).
        self.next_pass: dict[str, float] = {}

    def reload(self) -> None:
        """Re-read the config; keep the last good one if the edit is broken."""
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            self.metrics.config_errors.inc()
            log.error(
                "config reload rejected; keeping the last good config", extra={"error": str(exc)}
            )
            return
        if self.worker is not None:
            new = share(new, *self.worker)
        before = {t.target for t in self.cfg.enabled_tables}
        after = {t.target for t in new.enabled_tables}
        if new != self.cfg:
            log.info(
                "config reloaded",
                extra={"added": sorted(after - before), "removed": sorted(before - after)},
            )
        self.cfg = new
        self.metrics.track(t.target for t in new.enabled_tables)

    async def signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: re-reading config")
                    self.reload()
                    continue
                if self.stopping.is_set():
                    log.warning(
                        "second signal: exiting now; the next start recovers any "
                        "commit in flight from Iceberg"
                    )
                    logging.shutdown()
                    os._exit(1)
                name = signal.Signals(signum).name
                log.info(
                    f"{name}: stopping after in-flight commits",
                    extra={"grace_seconds": self.cfg.service.shutdown_grace},
                )
                sd_notify("STOPPING=1")
                self.stopping.set()
                self.wake.set()
                with anyio.move_on_after(self.cfg.service.shutdown_grace):
                    await anyio.sleep_forever()
                log.warning("shutdown grace period over: cancelling the cycle")
                scope.cancel()

    async def cycle(self) -> None:
        cfg = self.cfg
        started = time.monotonic()
        try:
            async with open_services(cfg) as services:
                report = await run_cycle(
                    cfg, services, stopping=self.stopping, on_table=self.metrics.table
                )
            ok = report.ok
            log.info(report.summary().splitlines()[0])
        except TableError as exc:  # state database or catalog unavailable
            ok = False
            log.error("cycle failed", extra={"error": str(exc)})
        self.cycles += 1
        self.metrics.cycle(time.monotonic() - started, ok)

    def _due(
        self, name: str, enabled: bool, interval: float, budget: float, next_tick_at: float
    ) -> float | None:
        """The deadline (time.monotonic()) of the between-cycles pass `name` when one is
        due and fits before the next tick (less a margin), booking the one after; None
        when not."""
        now = time.time()
        if not enabled or now < self.next_pass.get(name, 0.0) or self.stopping.is_set():
            return None
        window = next_tick_at - now - MAINTENANCE_TICK_MARGIN
        if window < MAINTENANCE_MIN_WINDOW:
            return None
        self.next_pass[name] = now + interval
        return time.monotonic() + min(budget, window)

    async def maintenance(self, next_tick_at: float) -> None:
        """A maintenance pass between cycles when one is due, within its budget and
        never past the next tick (less a margin). Tables it does not reach wait."""
        cfg = self.cfg
        mcfg = cfg.maintenance
        deadline = self._due("maintenance", mcfg.enabled, mcfg.interval, mcfg.budget, next_tick_at)
        if deadline is None:
            return
        from offloader.ops.maintenance import maintain

        started = time.monotonic()

        async def run() -> list[MaintenanceReport]:
            async with open_services(cfg, connections=2) as services:
                return await maintain(
                    services, list(cfg.enabled_tables), deadline=deadline, stopping=self.stopping
                )

        reports = await _guarded("maintenance", run)
        if reports is None:
            return
        for report in reports:
            self.metrics.maintenance(report)
        log.info(
            "maintenance pass finished",
            extra={
                "tables": len(reports),
                "failed": sum(r.status == Status.FAILED for r in reports),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def retention(self, next_tick_at: float) -> None:
        """A verified hot-retention pass between cycles when one is due ([retention]),
        within its budget and never past the next tick (less a margin)."""
        cfg = self.cfg
        rcfg = cfg.retention
        tables = [t for t in cfg.enabled_tables if t.hot_retention is not None]
        enabled = rcfg.enabled and bool(tables)
        deadline = self._due("retention", enabled, rcfg.interval, rcfg.budget, next_tick_at)
        if deadline is None:
            return
        from offloader.ops.retention import retain

        async def run() -> list[RetentionReport]:
            async with open_services(cfg, connections=2) as services:
                return await retain(services, tables, deadline=deadline, stopping=self.stopping)

        for report in await _guarded("retention", run) or []:
            self.metrics.retention(report)

    async def loop(self, run_now: bool) -> None:
        scheduled = time.time() if run_now else next_tick(time.time(), self.cfg.service.interval)
        while not self.stopping.is_set():
            delay = scheduled - time.time()
            if delay > 0:
                log.info(
                    "next cycle",
                    extra={
                        "at": time.strftime("%H:%M:%S", time.gmtime(scheduled)),
                        "in_seconds": round(delay, 1),
                    },
                )
                with anyio.move_on_after(delay):
                    await self.wake.wait()
                if self.stopping.is_set():
                    break
            self.reload()
            await self.cycle()
            missed = after_cycle(scheduled, time.time(), self.cfg.service.interval)
            if missed.skipped:
                self.metrics.skipped_ticks.inc(missed.skipped)
                log.warning(
                    "cycle overran its interval; skipping missed ticks",
                    extra={"skipped": missed.skipped},
                )
            scheduled = missed.next_at
            await self.maintenance(scheduled)
            await self.retention(scheduled)


async def _guarded(name: str, run: Callable[[], Awaitable[list[T]]]) -> list[T] | None:
    """A between-cycles pass's reports, or None when it failed as a whole (logged): a
    pass never stops the offloading service, not even with a bug."""
    try:
        return await run()
    except TableError as exc:
        log.error(f"{name} pass failed", extra={"error": str(exc)})
    except Exception:
        log.exception(f"{name} pass crashed")
    return None


async def serve(
    path: str, cfg: Config, *, run_now: bool = False, worker: tuple[int, int] | None = None
) -> int:
    """`offloader run` in this process (with `worker`: as worker process I of N, on its
    share of the tables, workers.py)."""
    if worker is not None:
        cfg = share(cfg, *worker)
    service = Service(path, cfg, worker)
    server = None
    if cfg.service.metrics_port is not None:
        server = service.metrics.serve(cfg.service.metrics_host, cfg.service.metrics_port)
    log.info(
        "offloader started",
        extra={
            "config": path,
            "tables": len(cfg.enabled_tables),
            "interval_seconds": cfg.service.interval,
            **({"worker": worker[0]} if worker else {}),
        },
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.signals, tg.cancel_scope)
            tg.start_soon(watchdog)
            sd_notify("READY=1")
            await service.loop(run_now)
            tg.cancel_scope.cancel()
    finally:
        if server is not None:
            server.shutdown()
    log.info("offloader stopped", extra={"cycles": service.cycles})
    return 0
