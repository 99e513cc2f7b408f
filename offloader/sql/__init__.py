"""All of offloader's ClickHouse SQL, built by pure functions (no driver), one module
per subject; every other module runs queries by calling these builders
(`tests/test_sql_in_one_place.py` fails on a statement written anywhere else):

- `text`: quoting, typed literals, keyset predicates, row hashes;
- `scan`: reading a source's rows (`Scan`: keyset pages, range sums, what is behind a
  position, per-day counts, the shard probe);
- `system`: the system tables (a table's row and columns, the parts fingerprint,
  the cluster's nodes, replicas' state);
- `profile`: what a source's rows are like as a whole (`offloader add`);
- `view`: the view over both tiers;
- `retention`: parking, moving back and dropping partitions, the retiring table;
- `verify`: `offloader verify`'s canonical row text and per-day checksums;
- `grants`: the statements `offloader grants` prints.
"""
