"""What a table run needs from the outside world, shared by the runs of a cycle (and
by the cycles of a service): ClickHouse's settings, the state store, thread limiters,
the Iceberg catalog (opened on first use) and, on a terminal, the progress display."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from offloader.config import ClickHouseConfig, ViewsConfig
from offloader.progress import Progress
from offloader.state import Store

if TYPE_CHECKING:
    from offloader.iceberg.catalog import IcebergCatalog


@dataclass(slots=True)
class Services:
    """What a table run needs from the outside world, shared across a cycle."""

    clickhouse: ClickHouseConfig
    watermarks: Store
    cpu: anyio.CapacityLimiter
    io: anyio.CapacityLimiter
    # The Iceberg catalog is opened on first use: a cycle with nothing to write never
    # imports pyiceberg nor opens the catalog.
    open_catalog: Callable[[], IcebergCatalog]
    progress: Progress | None = None  # live bars on a terminal (progress.py)
    views: ViewsConfig = field(default_factory=ViewsConfig)  # the views over both tiers
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
