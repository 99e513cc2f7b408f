"""Crash suite: SIGKILL `offloader once` at every stage of a table run, dozens of times,
while rows keep arriving; then a clean run must leave the tiers exactly equal.

Kill points (offloader.faults): read, convert, write, iceberg_commit, watermark_txn,
view_replace, plus kills at random moments. After every kill the table's view over both
tiers still returns each row exactly once (the previous consistent position). Longer
mode: OFFLOADER_CRASH_ROUNDS=20 (default 4: about 35 kills).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import time
from collections import Counter

import pytest

from offloader import faults
from tests.helpers import Env

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("OFFLOADER_CRASH_ROUNDS", "4"))
PER_STEP = 45_000


def test_kill_at_every_point_then_exact(env_long: Env) -> None:
    env = env_long  # the default transport; all three: OFFLOADER_ALL_TRANSPORTS=1
    env.create_trades("crash")
    env.insert_trades("crash", 100_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("crash", batch_rows=10_000, append_rows=30_000, view=True)])
    db = env.ch_database
    sums = "count(), sum(cityHash64(trade_id, exchange_ts, price, tags))"

    def view_is_exact() -> None:
        """The view returns every source row once, whatever instant the kill hit."""
        if not env.ch(f"EXISTS TABLE {db}.crash_all")[0][0]:
            return  # the very first run died before it created the view
        got = env.ch(
            f"SELECT (SELECT {sums} FROM {db}.crash_all), (SELECT {sums} FROM {db}.crash)"
        )[0]
        assert got[0] == got[1], got

    rng = random.Random(2026)
    kills: Counter[str] = Counter()
    next_id = 1_000_000
    step = 0
    for round_ in range(ROUNDS):
        for point in faults.POINTS:
            # Rows keep arriving: each run has 5 pages, 2 chunks and 2 commits to do.
            start = dt.datetime(2026, 2, 1) + dt.timedelta(days=step)
            env.insert_trades(
                "crash", PER_STEP, first_id=next_id, start=f"{start:%Y-%m-%d %H:%M:%S}"
            )
            next_id += 100_000
            step += 1
            nth = 1 + round_ % 2
            for _ in range(50):
                result = env.cli("once", extra_env={faults.ENV: f"{point}:{nth}"})
                # A killed worker's PostgreSQL session may hold the table lock a moment.
                if "skipped 1" not in result.stdout:
                    break
                time.sleep(0.2)
            if result.returncode == -signal.SIGKILL:
                kills[f"{point}:{nth}"] += 1
            else:
                assert result.returncode == 0, result.stdout + result.stderr
            view_is_exact()
        for _ in range(5):
            proc = env.popen("once")
            time.sleep(rng.uniform(0.3, 2.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills["random"] += 1
            proc.wait(timeout=120)
            view_is_exact()
    print(f"\ncrash suite: {sum(kills.values())} kills survived: {dict(sorted(kills.items()))}")
    injected = sum(n for k, n in kills.items() if k != "random")
    assert injected == len(faults.POINTS) * ROUNDS, kills  # every injected point was reached
    assert kills["random"] >= 1
    final = env.cli("once")
    assert final.returncode == 0, final.stdout + final.stderr
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout
    expected = 100_000 + PER_STEP * len(faults.POINTS) * ROUNDS
    assert env.assert_tiers_equal("cold.crash") == expected
    view_is_exact()
    assert env.ch(f"SELECT count() FROM {db}.crash_all")[0][0] == expected
