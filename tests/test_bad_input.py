"""Bad input: fuzzed configs, hostile identifiers, extreme values. Never a traceback,
never a silently altered value."""

from __future__ import annotations

import io
import tomllib
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offloader import cli
from offloader.configfile import parse_config
from offloader.errors import ConfigError
from tests.helpers import Env, _toml

VALID: dict[str, Any] = {
    "offloader": {"interval": "15m", "max_parallel_tables": 4, "table_timeout": "10m"},
    "clickhouse": {"host": "127.0.0.1", "port": 9000},
    "postgres": {"dsn": "postgresql://postgres@127.0.0.1:5432/offloader"},
    "iceberg": {"catalog": {"name": "cold", "type": "sql", "uri": "sqlite:///x.db"}},
    "tables": [
        {
            "source": "market.trades",
            "target": "cold.trades",
            "watermark": "ts",
            "keys": ["id"],
            "lag": "5m",
            "batch_rows": 1000,
        }
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["", " ", "5m", "-1s", "1h30m", "15", "${NOPE}", "a.b.c", ".x", "x."]),
    st.lists(st.text(max_size=5), max_size=3),
)
sections = ["offloader", "clickhouse", "postgres", "iceberg", "tables"]
keys = [
    "interval",
    "max_parallel_tables",
    "table_timeout",
    "metrics_port",
    "host",
    "port",
    "dsn",
    "source",
    "target",
    "watermark",
    "keys",
    "lag",
    "batch_rows",
    "append_rows",
    "partition_by",
    "enabled",
    "uint64",
    "strings",
    "bogus",
    "lagg",
    "name",
    "type",
]


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    import copy

    cfg = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["set", "delete", "replace_section", "dup_table"]))
        section = draw(st.sampled_from(sections))
        if action == "delete":
            cfg.pop(section, None)
            continue
        if action == "replace_section":
            cfg[section] = draw(scalars)
            continue
        if action == "dup_table":
            tables = cfg.get("tables")
            if isinstance(tables, list) and tables and isinstance(tables[0], dict):
                tables.append(dict(tables[0]))
            continue
        target = cfg.get(section)
        if section == "tables" and isinstance(target, list) and target:
            target = target[0]
        if section == "iceberg" and isinstance(target, dict):
            target = target.get("catalog")
        if isinstance(target, dict):
            key = draw(st.sampled_from(keys))
            value = draw(scalars)
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return cfg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_fuzzed_configs_give_one_clear_line(cfg: dict[str, Any]) -> None:
    try:
        parse_config(cfg, "tables.toml", env={})
    except ConfigError as exc:
        error = exc
    else:
        return
    text = str(error)
    assert text.startswith("tables.toml: ")
    assert "\n" not in text
    # Its own words, not a chained driver or parser error shown instead of them.
    assert error.__cause__ is None, error.__cause__


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_garbage_files_exit_2_without_traceback(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    try:
        tomllib.loads(data.decode())
        parsed = True
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        parsed = False
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli.main(["--config", str(path), "validate", "--offline"])
    if not parsed:
        assert code == 2
    assert code in (0, 2)
    if code == 2:  # one line of offloader's own, naming the file
        assert err.getvalue().startswith(f"offloader: {path}: "), err.getvalue()
        assert err.getvalue().count("\n") == 1
    else:
        assert err.getvalue() == ""


HOSTILE = """
CREATE TABLE {db}.`we"ird 't\\`abl€ select` (
    `from`        DateTime64(6, 'UTC'),
    `sel\\`ect`   UInt64,
    `order by`    String,
    `ünï"code`    Nullable(Int32),
    `a'b`         LowCardinality(String)
) ENGINE = MergeTree ORDER BY (`from`, `sel\\`ect`)
"""


@pytest.mark.integration
def test_hostile_identifiers_end_to_end(env: Env) -> None:
    env.ch(HOSTILE.format(db=env.ch_database))
    env.ch(
        f"INSERT INTO {env.ch_database}.`we\"ird 't\\`abl€ select` SELECT "
        "toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(intDiv(number, 3)), "
        "number, concat('x', toString(number)), if(number % 2 = 0, NULL, toInt32(number)), "
        "'q' FROM numbers(25000)"
    )
    env.write_config(
        [
            env.table(
                "x",
                source=f"{env.ch_database}.we\"ird 't`abl€ select",
                target="cold.hostile",
                watermark="from",
                keys=["sel`ect"],
                batch_rows=7000,
            )
        ]
    )
    validate = env.cli("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    report = env.once()
    assert report.ok, report.summary()
    assert env.assert_tiers_equal("cold.hostile") == 25_000
    assert env.cli("verify").returncode == 0


EXTREMES = """
CREATE TABLE {db}.extreme (
    ts  DateTime64(6, 'UTC'),
    id  UInt64,
    s   String,
    d32 Nullable(Date32),
    far Nullable(DateTime64(6, 'UTC')),
    dt  Nullable(DateTime('UTC')),
    f   Nullable(Float64),
    i8  Nullable(Int8),
    u64 Nullable(UInt64),
    dec Nullable(Decimal(38, 10)),
    b   Nullable(Bool),
    u   Nullable(UUID),
    e   Nullable(Enum8('a' = 1)),
    lc  LowCardinality(Nullable(String))
) ENGINE = MergeTree ORDER BY (ts, id)
"""


@pytest.mark.integration
def test_extreme_values_stored_exactly(env: Env) -> None:
    env.ch(EXTREMES.format(db=env.ch_database))
    env.ch(
        f"INSERT INTO {env.ch_database}.extreme VALUES "
        "('1900-01-01 00:00:00.000001', 1, '', '1900-01-01', '1900-01-01 00:00:00', "
        "'1970-01-01 00:00:00', nan, -128, 9223372036854775807, "
        "'-9999999999999999999999999999.9999999999', false, "
        "'ffffffff-ffff-ffff-ffff-ffffffffffff', 'a', ''), "
        "('2026-01-01 00:00:00', 2, repeat('é', 500000), '2299-12-31', "
        "'2299-12-31 23:59:59.999999', '2106-02-07 06:28:15', -inf, 127, 0, "
        "'9999999999999999999999999999.9999999999', true, "
        "'00000000-0000-0000-0000-000000000000', 'a', 'x'), "
        "('2000-01-01 00:00:00', 3, 'nulls', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
        "NULL, NULL, NULL)"
    )
    env.write_config([env.table("extreme", watermark="ts", keys=["id"])])
    report = env.once()
    assert report.ok, report.summary()
    assert env.assert_tiers_equal("cold.extreme") == 3
    assert env.cli("verify").returncode == 0
    rows = {r["id"]: r for r in env.iceberg_arrow(env.config().table("cold.extreme")).to_pylist()}
    assert len(rows[2]["s"]) == 500_000
    assert rows[2]["far"].year == 2299 and rows[1]["far"].year == 1900
    assert all(rows[3][k] is None for k in rows[3] if k not in ("ts", "id", "s"))


@pytest.mark.integration
def test_invalid_utf8_fails_naming_the_column_then_binary_stores_bytes(env: Env) -> None:
    env.ch(
        f"CREATE TABLE {env.ch_database}.raw (ts DateTime, id UInt64, payload String) "
        "ENGINE = MergeTree ORDER BY (ts, id)"
    )
    env.ch(
        f"INSERT INTO {env.ch_database}.raw VALUES ('2026-01-01 00:00:00', 1, 'fine'), "
        "('2026-01-01 00:00:01', 2, unhex('68C328FF69'))"
    )
    env.write_config([env.table("raw", watermark="ts", keys=["id"])])
    report = env.once()
    assert not report.ok
    error = report.tables[0].error or ""
    assert "not valid UTF-8" in error and "column 'payload'" in error and "68C328FF69" in error
    assert 'strings = "binary"' in error
    binary = {"strings": "binary", "target": "cold.raw_bytes"}
    if env.transport == "parquet":  # ClickHouse's Parquet has no binary Strings
        binary["transport"] = "arrow"
    env.write_config([env.table("raw", watermark="ts", keys=["id"], **binary)])
    assert env.once().ok
    rows = env.iceberg_arrow(env.config().table("cold.raw_bytes")).to_pylist()
    assert [r["payload"] for r in rows] == [b"fine", bytes.fromhex("68C328FF69")]
    assert env.cli("verify").returncode == 0


def test_toml_helper_quotes() -> None:
    assert _toml('a"b') == '"a\\"b"'


@pytest.mark.integration
def test_awkward_string_keys_page_exactly(env: Env) -> None:
    """Keys that JSON or PostgreSQL's jsonb cannot hold as text (invalid UTF-8, NUL bytes,
    FixedString padding) still make exact keyset positions across many small pages."""
    env.ch(
        f"CREATE TABLE {env.ch_database}.awk (ts DateTime, k String, f FixedString(4), "
        "n UInt32) ENGINE = MergeTree ORDER BY (ts, k, f)"
    )
    keys = ["unhex('68C328FF69')", "'a\\0b'", "'plain'", "unhex('FF')", "''", "'é'"]
    values = [
        f"('2026-01-01 00:00:00', {k}, {f}, {i})"
        for i, (k, f) in enumerate(
            (k, f) for k in keys for f in ("'ab'", "unhex('00FF')", "'abcd'", "''")
        )
    ]
    env.ch(f"INSERT INTO {env.ch_database}.awk VALUES {', '.join(values)}")
    env.write_config(
        [env.table("awk", watermark="ts", keys=["k", "f"], strings="binary", batch_rows=1)]
    )
    report = env.once()
    if env.transport == "parquet":  # binary Strings: refused, pointing to the arrow transport
        assert not report.ok and 'transport = "arrow"' in (report.tables[0].error or "")
        return
    assert report.ok, report.summary()
    assert report.tables[0].rows == len(values) and report.tables[0].pages >= len(values)
    rows = env.iceberg_arrow(env.config().table("cold.awk")).to_pylist()
    assert sorted(r["n"] for r in rows) == list(range(len(values)))
    env.ch(f"INSERT INTO {env.ch_database}.awk VALUES ('2026-01-01 00:00:01', 'zz', 'zz', 99)")
    again = env.once()  # resumes from a stored position holding those bytes
    assert again.ok and again.tables[0].rows == 1, again.summary()
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
