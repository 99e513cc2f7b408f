"""Config loading and validation: every mistake is one clear line. No server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from offloader.config import parse_duration, parse_partition
from offloader.configfile import load_config
from offloader.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[offloader]
interval = "15m"
max_parallel_tables = 4
table_timeout = "10m"

[clickhouse]
host = "127.0.0.1"
port = 9000
password = "${CH_PASS:-}"

[postgres]
dsn = "postgresql://postgres:${PG_PASS:-secret}@127.0.0.1:5432/offloader"

[iceberg.catalog]
name = "cold"
type = "sql"
uri = "sqlite:////tmp/catalog.db"
warehouse = "file:///tmp/warehouse"

[[tables]]
source = "market.bronze_trades_binance"
target = "cold.bronze_trades_binance"
watermark = "exchange_ts"
keys = ["trade_id"]
lag = "5m"
batch_rows = 100000
partition_by = ["day(exchange_ts)"]
enabled = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tables.toml"
    path.write_text(text)
    return path


def test_shipped_example_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "tables.toml", env={})
    assert cfg.tables and cfg.service.interval == 900


def test_base_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={"CH_PASS": "hunter2"})
    assert cfg.service.interval == 900 and cfg.service.table_timeout == 600
    assert cfg.clickhouse.password == "hunter2"
    assert "hunter2" not in repr(cfg.clickhouse)
    assert "secret" not in repr(cfg.postgres) and "secret" in cfg.postgres.dsn
    [t] = cfg.tables
    assert t.keys == ("trade_id",) and t.lag == 300 and t.batch_rows == 100_000
    assert str(t.partition_by[0]) == "day(exchange_ts)"
    assert t.append_rows == 1_000_000
    assert cfg.clickhouse.http_compression is False  # identity replies unless asked


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "batch_rows = 100000",
            "batch_rows = -5",
            "tables[0] (market.bronze_trades_binance).batch_rows must be",
        ),
        ("batch_rows = 100000", 'batch_rows = "many"', "batch_rows must be"),
        (
            'lag = "5m"',
            'lag = "5 minutes"',
            "tables[0] (market.bronze_trades_binance).lag must be a duration",
        ),
        ('lag = "5m"', 'lagg = "5m"', "lagg is not a known key (did you mean 'lag'?)"),
        ('keys = ["trade_id"]', "keys = []", "keys must be a non-empty list"),
        ('keys = ["trade_id"]', "", "keys is required"),
        ('interval = "15m"', "interval = 15", "offloader.interval must be a duration string"),
        ("max_parallel_tables = 4", "max_parallel_tables = 0", "max_parallel_tables must be"),
        ("[postgres]", "[postgress]", "postgress is not a known key"),
        (
            'target = "cold.bronze_trades_binance"',
            'target = "nonamespace"',
            "target must be 'namespace.table'",
        ),
        (
            'partition_by = ["day(exchange_ts)"]',
            'partition_by = ["week(x)"]',
            "not a partition transform",
        ),
        ('password = "${CH_PASS:-}"', 'password = "${CH_PASS}"', "refers to ${CH_PASS}"),
        ("enabled = true", 'enabled = "yes"', "enabled must be true or false"),
        ("port = 9000", 'port = 9000\nhttp_compression = "zstd"', "http_compression must be"),
        (
            "enabled = true",
            'enabled = true\nretiring_table = "bronze_retiring"',
            "retiring_table is used by hot_retention, which is not set",
        ),
        (
            "enabled = true",
            'enabled = true\nhot_retention = "7d"\nretiring_table = "market.r"',
            "retiring_table must be a table name (no database",
        ),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = str(err.value)
    assert message in text, text
    assert text.startswith(str(path)) and "\n" not in text


def test_duplicate_target(tmp_path: Path) -> None:
    block = BASE[BASE.index("[[tables]]") :]
    path = write(tmp_path, BASE + block.replace("market.bronze_trades_binance", "market.other"))
    with pytest.raises(
        ConfigError, match=r"tables\[1\] \(market.other\).target duplicates tables\[0\]"
    ):
        load_config(path, env={})


def _second_table(source: str, target: str) -> str:
    return (
        BASE[BASE.index("[[tables]]") :]
        .replace("market.bronze_trades_binance", source)
        .replace("cold.bronze_trades_binance", target)
    )


def test_targets_whose_locations_nest_are_refused_naming_both(tmp_path: Path) -> None:
    """A table located inside another's would see the other's files as its orphans."""
    inner = _second_table("market.archive", "cold.bronze_trades_binance/archive")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASE + inner), env={})
    text = str(caught.value)
    assert (
        "tables[1] (market.archive).target is placed at cold/bronze_trades_binance/archive" in text
    )
    assert "inside the location of tables[0] (cold.bronze_trades_binance)" in text
    assert "rename one target" in text and "\n" not in text
    # A Hive or Glue catalog places a table at <namespace>.db/<table>.
    glue = BASE.replace('type = "sql"', 'type = "glue"') + inner
    with pytest.raises(ConfigError, match=r"placed at cold\.db/bronze_trades_binance/archive"):
        load_config(write(tmp_path, glue), env={})
    # Names that only share a prefix, or a namespace that only starts with a table's
    # name (`cold.bronze_trades_binance/y`), do not nest.
    for target in ("cold.bronze_trades_binance_2", "cold.bronze_trades_binance.y"):
        cfg = load_config(write(tmp_path, BASE + _second_table("market.y", target)), env={})
        assert len(cfg.tables) == 2


def test_missing_section_and_file(tmp_path: Path) -> None:
    start, end = BASE.index("[postgres]"), BASE.index("[iceberg.catalog]")
    with pytest.raises(ConfigError, match=r"missing section \[postgres\]"):
        load_config(write(tmp_path, BASE[:start] + BASE[end:]), env={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(write(tmp_path, "[offloader\n"), env={})


def test_cli_exit_code_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("batch_rows = 100000", "batch_rows = -5"))
    for command in ("once", "validate", "status"):
        result = subprocess.run(
            [sys.executable, "-m", "offloader", "--config", str(path), command],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "batch_rows must be a positive integer, got -5" in result.stderr


def test_offline_validate_and_env_var_selects_config(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    result = subprocess.run(
        [sys.executable, "-m", "offloader", "validate", "--offline"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={"OFFLOADER_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "configuration OK, 1 tables" in result.stdout


def test_durations_and_partitions() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("10")
    assert str(parse_partition("bucket(16, trade_id)")) == "bucket(16, trade_id)"
    assert str(parse_partition("symbol")) == "identity(symbol)"
