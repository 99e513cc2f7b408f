"""All of offloader's ClickHouse SQL, built by pure functions (no driver), one module
per subject:

- `text`: quoting, typed literals, keyset predicates, row hashes;
- `scan`: reading a source's rows (pages, range sums, what is behind, per-day counts);
- `system`: the system tables (parts fingerprints, columns, clusters, replicas).
"""
