"""Metrics without a server: every labelled counter exists at 0 for each configured table
and label value (so increase() in an alert sees the first event), and a table removed
from the config loses its series."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from offloader.errors import FAILURE_REASONS
from offloader.ops.retention import RetentionReport
from offloader.report import REFUSAL_REASONS, RETENTION_RESULTS, TableReport
from offloader.service.metrics import MAINTENANCE_RESULTS, Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_every_failure_reason_the_code_reports_is_tracked() -> None:
    found = set()
    for path in (ROOT / "offloader").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'\breason\s*=\s*"([a-z_]+)"', text))
    assert found, "no reason literal found: the pattern is stale"
    assert found <= set(FAILURE_REASONS), found - set(FAILURE_REASONS)


def test_tracked_tables_have_their_series_at_zero_until_removed() -> None:
    m = Metrics()
    m.track(["cold.a", "cold.b"])
    text = generate_latest(m.registry).decode()
    for table in ("cold.a", "cold.b"):
        for reason in FAILURE_REASONS:
            assert (
                f'offloader_table_failures_total{{reason="{reason}",table="{table}"}} 0.0' in text
            )
        for result in MAINTENANCE_RESULTS:
            assert (
                f'offloader_maintenance_runs_total{{result="{result}",table="{table}"}} 0.0' in text
            )
        assert f'offloader_rows_total{{table="{table}"}} 0.0' in text
    # Gauges are not invented: a 0 last-success time would page at once.
    assert "offloader_last_success_timestamp_seconds{" not in text
    m.table(TableReport("cold.a", "db.a", status="failed", reason="clickhouse"))
    m.track(["cold.a", "cold.c"])  # b removed, c added
    text = generate_latest(m.registry).decode()
    assert 'table="cold.b"' not in text
    assert 'offloader_table_failures_total{reason="clickhouse",table="cold.a"} 1.0' in text
    assert 'offloader_table_failures_total{reason="clickhouse",table="cold.c"} 0.0' in text


def test_retention_passes_refusals_and_failures_are_counted() -> None:
    """Refusals by reason, passes by result, and the refused-partitions gauge the
    OffloaderRetentionRefused alert watches (back to 0 after a clean pass)."""
    m = Metrics()
    m.track(["cold.a"])
    text = generate_latest(m.registry).decode()
    for reason in REFUSAL_REASONS:
        assert f'offloader_retention_refusals_total{{reason="{reason}",table="cold.a"}} 0.0' in text
    for result in RETENTION_RESULTS:
        assert f'offloader_retention_passes_total{{result="{result}",table="cold.a"}} 0.0' in text
    refused = RetentionReport("cold.a")
    refused.refuse("20250101", "the tiers differ on 2025-01-01", "differ")
    refused.late.append("partition 20241201: 3 rows in days offloader already dropped")
    m.retention(refused)
    m.retention(RetentionReport("cold.a", status="failed", error="cold.a: ClickHouse down"))
    text = generate_latest(m.registry).decode()
    assert 'offloader_retention_refusals_total{reason="differ",table="cold.a"} 1.0' in text
    assert 'offloader_retention_refusals_total{reason="late",table="cold.a"} 1.0' in text
    assert 'offloader_retention_passes_total{result="refused",table="cold.a"} 1.0' in text
    assert 'offloader_retention_passes_total{result="failed",table="cold.a"} 1.0' in text
    assert 'offloader_retention_refused_partitions{table="cold.a"} 2.0' in text
    m.retention(RetentionReport("cold.a"))
    text = generate_latest(m.registry).decode()
    assert 'offloader_retention_refused_partitions{table="cold.a"} 0.0' in text
    assert 'offloader_retention_passes_total{result="ok",table="cold.a"} 1.0' in text
