"""`once` and `repair` on a terminal show live per-table progress (rows done of the
rows to go, rows/s, time left); off a terminal and with --json the output is unchanged."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, Env

pytestmark = pytest.mark.integration


def on_terminal(env: Env, *args: str, timeout: float = 180) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offloader", "--config", str(env.config_path), *args],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=30)
    os.close(leader)
    return code, out.decode("utf-8", "replace")


def test_once_on_a_terminal_shows_progress_and_not_elsewhere(env: Env) -> None:
    env.create_trades("bars")
    env.insert_trades("bars", 30_000, first_id=1, start="2026-01-01 00:00:00")
    env.write_config([env.table("bars", batch_rows=2_000, append_rows=10_000)])
    code, shown = on_terminal(env, "once")
    assert code == 0, shown
    assert "cold.bars" in shown and "30000/30000" in shown
    assert "rows/s" in shown and "\x1b[" in shown  # drawn with terminal control codes
    assert "1 tables" in shown and "30000 rows" in shown  # the summary still printed
    env.assert_tiers_equal("cold.bars")

    env.insert_trades("bars", 500, first_id=100_000, start="2026-01-02 00:00:00")
    plain = env.cli("once")
    assert plain.returncode == 0
    assert "\x1b[" not in plain.stdout + plain.stderr and "rows/s" not in plain.stderr
    json_run = env.cli("once", "--json")
    assert json_run.returncode == 0 and json_run.stdout.lstrip().startswith("{")
