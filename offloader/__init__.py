"""offloader: move rows from ClickHouse (hot tier) to Apache Iceberg (cold tier), exactly once."""

__version__ = "0.1.0"
