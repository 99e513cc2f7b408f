"""Soak: hundreds of consecutive cycles with rows arriving in between.

CI runs 220 cycles; OFFLOADER_SOAK_CYCLES=5000 for a longer run.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import anyio
import pytest

from offloader.offload.supervisor import run_cycle
from offloader.tiers.services import open_services
from tests.helpers import Env

pytestmark = pytest.mark.integration

CYCLES = int(os.environ.get("OFFLOADER_SOAK_CYCLES", "220"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_soak(env_long: Env) -> None:
    env = env_long  # the default transport; all three: OFFLOADER_ALL_TRANSPORTS=1
    env.create_trades("soak")
    env.write_config([env.table("soak", batch_rows=50)], service={"max_parallel_tables": 2})
    cfg = env.config()
    inserted = 0
    with_rows = 0
    samples: dict[int, float] = {}

    async def soak() -> None:
        nonlocal inserted, with_rows
        async with open_services(cfg) as services:
            for i in range(CYCLES):
                if i % 4 != 3:  # every fourth cycle finds nothing new
                    start = dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i)
                    n = 20 + i % 80
                    await anyio.to_thread.run_sync(
                        lambda s=start, n=n, first=1 + i * 1000: env.insert_trades(
                            "soak", n, first_id=first, start=f"{s:%Y-%m-%d %H:%M:%S}"
                        )
                    )
                    inserted += n
                report = await run_cycle(cfg, services)
                assert report.ok, report.summary()
                if report.rows:
                    with_rows += 1
                if i in (50, CYCLES - 1):
                    samples[i] = rss_mb()

    anyio.run(soak)
    growth = samples[CYCLES - 1] - samples[50]
    print(
        f"\nsoak: {CYCLES} cycles, {inserted} rows, {with_rows} snapshots, "
        f"RSS {samples[50]:.0f} -> {samples[CYCLES - 1]:.0f} MB"
    )
    assert growth < 40, f"memory grew by {growth:.0f} MB over {CYCLES - 51} cycles"
    assert env.cli("verify").returncode == 0
    assert env.assert_tiers_equal("cold.soak") == inserted
    # One snapshot per cycle that found rows, none for the others.
    assert env.snapshots("cold.soak") == with_rows
    metadata = list((env.tmp / "warehouse").rglob("*.metadata.json"))
    # One metadata file per commit, plus creation and the table-property update.
    assert len(metadata) <= with_rows + 3, len(metadata)
