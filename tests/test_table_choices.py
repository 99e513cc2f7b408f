"""A table's choice keys (uint64, strings, late_rows, distributed) refuse any other value
with one line naming the file, the table, the key, the values allowed and the value
given, and read an allowed value as it is."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from offloader.configfile import parse_config
from offloader.errors import ConfigError

MINIMAL: dict[str, Any] = {
    "clickhouse": {},
    "postgres": {"dsn": "postgresql://u@h/db"},
    "iceberg": {"catalog": {"name": "cold"}},
    "tables": [{"source": "db.t", "target": "ns.t", "watermark": "ts", "keys": ["id"]}],
}
REFUSALS = {
    "uint64": "must be 'error' or 'decimal'",
    "strings": "must be 'string' or 'binary'",
    "late_rows": "must be 'alert' (report drifted days) or 'repair' (also repair them)",
    "distributed": "must be 'shards' (read each shard's local table) or 'through' (read "
    "through the Distributed table)",
}
ALLOWED = {
    "uint64": ("error", "decimal"),
    "strings": ("string", "binary"),
    "late_rows": ("alert", "repair"),
    "distributed": ("shards", "through"),
}


def table_with(key: str, value: object) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data["tables"][0][key] = value
    return data


@pytest.mark.parametrize("key", sorted(REFUSALS))
@pytest.mark.parametrize("value", ["other", 1])
def test_a_choice_refuses_another_value_naming_table_key_and_choices(
    key: str, value: object
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(table_with(key, value), "tables.toml", {})
    assert str(raised.value) == (
        f"tables.toml: tables[0] (db.t).{key} {REFUSALS[key]}, got {value!r}"
    )


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in ALLOWED.items() for v in vs])
def test_a_choice_reads_an_allowed_value(key: str, value: str) -> None:
    config = parse_config(table_with(key, value), "tables.toml", {})
    assert getattr(config.tables[0], key) == value
