"""What a table run and every operation on a table take from the outside world, shared
by the runs of a cycle (and by the cycles of a service): ClickHouse's settings, the
state store, thread limiters, the Iceberg catalog (opened on first use), the views'
and maintenance settings and, on a terminal, the progress display. `open_services`
opens them for one process or command."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from offloader.config import ClickHouseConfig, Config, MaintenanceConfig, ViewsConfig
from offloader.progress import Progress
from offloader.state import Store

if TYPE_CHECKING:
    from offloader.iceberg.catalog import IcebergCatalog


@dataclass(slots=True)
class Services:
    """What a table run or an operation needs from the outside world."""

    clickhouse: ClickHouseConfig
    watermarks: Store
    cpu: anyio.CapacityLimiter
    io: anyio.CapacityLimiter
    # The Iceberg catalog is opened on first use: a cycle with nothing to write never
    # imports pyiceberg nor opens the catalog.
    open_catalog: Callable[[], IcebergCatalog]
    progress: Progress | None = None  # live bars on a terminal (progress.py)
    views: ViewsConfig = field(default_factory=ViewsConfig)  # the views over both tiers
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    _catalog: IcebergCatalog | None = None
    _opening: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def catalog(self) -> IcebergCatalog:
        if self._catalog is None:
            self._catalog = self.open_catalog()
        return self._catalog

    async def open_iceberg(self) -> IcebergCatalog:
        """The catalog, opened (pyiceberg imported: most of a short process's start-up)
        in a worker thread the first time, so the event loop goes on reading pages."""
        async with self._opening:
            if self._catalog is None:
                self._catalog = await anyio.to_thread.run_sync(self.open_catalog)
        return self._catalog


@asynccontextmanager
async def open_services(
    cfg: Config, progress: Progress | None = None, *, connections: int | None = None
) -> AsyncIterator[Services]:
    """Open PostgreSQL (migrating its schema) for one process or command; the catalog
    opens on first use. `connections`: the state pool's size (default: enough for
    max_parallel_tables runs and their locks)."""
    from offloader.postgres.watermarks import Watermarks

    parallel = cfg.service.max_parallel_tables
    watermarks = await Watermarks.open(cfg.postgres, max_size=connections or 2 * parallel + 2)
    try:
        yield Services(
            clickhouse=cfg.clickhouse,
            open_catalog=lambda: _open_catalog(cfg),
            watermarks=watermarks,
            cpu=anyio.CapacityLimiter(max(1, os.cpu_count() or 1)),
            io=anyio.CapacityLimiter(max(2, parallel)),
            progress=progress,
            views=cfg.views,
            maintenance=cfg.maintenance,
        )
    finally:
        await watermarks.close()


def _open_catalog(cfg: Config) -> IcebergCatalog:
    from offloader.iceberg.catalog import IcebergCatalog

    return IcebergCatalog(cfg.catalog, cfg.maintenance)
