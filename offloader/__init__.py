"""offloader: move rows from ClickHouse (hot tier) to Apache Iceberg (cold tier), exactly once.

The installed version: `offloader --version` (importlib.metadata).
"""
