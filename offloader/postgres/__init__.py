"""The state store in PostgreSQL (asyncpg): watermarks, run log, per-day sums, table
locks, views and retention state. Only this package imports asyncpg."""
