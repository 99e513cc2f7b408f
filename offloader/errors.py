"""The project's exceptions, grouped by what the caller can do about them.

Driver exceptions (asynch, asyncpg, pyiceberg) are translated into these once,
at the module that owns the driver, so nothing above that boundary needs to know
which library raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# ClickHouse error codes that mean "fix the table or config", not "retry later".
CLICKHOUSE_SCHEMA_CODES = {
    16: "no such column",
    47: "unknown identifier",
    60: "unknown table",
    81: "unknown database",
    497: "access denied",
    516: "authentication failed",
}


# Every `reason` a failed table run can report (TableError.reason and the supervisor's
# own): the label values of offloader_table_failures_total, whose series exist at 0 for
# every table from the start (metrics.Metrics.track), so an alert's increase() sees the
# first failure. tests/test_metrics_unit.py checks the code raises no other.
FAILURE_REASONS = (
    "error",
    "clickhouse",
    "schema",
    "iceberg",
    "postgres",
    "inconsistent",
    "data",
    "locked",
    "utf8",
    "timeout",
    "missing_table",
    "config",
    "schema_change",
    "unmappable",
    "view",
    "internal",
    "worker",  # `once` in worker processes: the table's worker died before reporting
)


class OffloaderError(Exception):
    """Base of every error offloader raises on purpose."""


class ConfigError(OffloaderError):
    """The configuration file is wrong: fix the file named in the message.

    The command exits with code 2; a running service keeps the last good config.
    """


class TableError(OffloaderError):
    """This table cannot be offloaded this cycle; the other tables go on.

    `reason` is a short machine-friendly label used in metrics and reports.
    """

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SourceUnavailable(TableError):
    """ClickHouse could not be reached or failed mid-query: retried next cycle."""

    reason = "clickhouse"


class SourceSchemaError(TableError):
    """The source table is missing or has columns offloader cannot map: fix the table or config."""

    reason = "schema"


class SinkError(TableError):
    """The Iceberg catalog or warehouse failed: retried next cycle."""

    reason = "iceberg"


class StateError(TableError):
    """PostgreSQL (watermarks) could not be reached or refused a write: retried next cycle."""

    reason = "postgres"


class InconsistentState(TableError):
    """Iceberg and PostgreSQL disagree in a way offloader must not repair by itself.

    Typically the Iceberg table was rolled back or dropped. An operator decides;
    README "Recovery" explains `offloader reset`.
    """

    reason = "inconsistent"


class DataError(TableError):
    """A source value cannot be stored exactly (e.g. UInt64 above 2^63-1 into long)."""

    reason = "data"


class Locked(TableError):
    """Another offloader worker holds this table's lock: skipped this cycle."""

    reason = "locked"


# ClickHouse's codes for a remote server it could not reach: an initiator answering for a
# Distributed table one of whose shards is down.
UNREACHABLE_CODES = frozenset(
    {209, 210, 279}
)  # SOCKET_TIMEOUT, NETWORK_ERROR, ALL_CONNECTION_TRIES_FAILED
# "Connection refused (127.0.0.1:9001)", "(127.0.0.1:9001, local address: …)"
_ADDRESS = re.compile(r"\(([A-Za-z0-9_.\-\[\]:]+:\d+)[,)]")


def unreachable(code: int | None, text: str) -> str:
    """For a server error about a server it could not reach, the addresses its whole
    message names (' (unreachable: 127.0.0.1:9001)'), else ''."""
    if code not in UNREACHABLE_CODES:
        return ""
    found = sorted(set(_ADDRESS.findall(text)))
    return f" (unreachable: {', '.join(found)}: is that shard's server running?)" if found else ""


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that matters out of a task group's group: offloader's own first (a
    failing writer closes its stream, so the converter's send fails with a
    BrokenResourceError that is only the consequence), then any that is not a
    cancellation or a closed stream (a failing task cancels its siblings)."""
    import anyio

    cancelled = anyio.get_cancelled_exc_class()
    echoes = (cancelled, anyio.BrokenResourceError, anyio.ClosedResourceError)
    leaves = list(_leaves(group))
    for kinds in (OffloaderError, Exception):
        for exc in leaves:
            if isinstance(exc, kinds) and not isinstance(exc, echoes):
                return exc
    return leaves[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
