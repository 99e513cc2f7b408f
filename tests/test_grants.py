"""`offloader grants`, without a server: each feature in use adds the grants it needs on
the one table, view or system table it touches, never a database-wide grant. That the
grants are enough is tested against a server that enforces them (test_access.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offloader import cli
from offloader.configfile import load_config
from offloader.errors import ConfigError
from offloader.ops.grants import clickhouse_grants, parse_local_tables, postgres_statements
from tests.test_config import BASE, write

SOURCE = "`market`.`bronze_trades_binance`"


def grants(tmp_path: Path, text: str, local: list[str] | None = None) -> list[tuple[str, str]]:
    cfg = load_config(write(tmp_path, text), env={})
    return [
        (g.privileges, g.on) for g in clickhouse_grants(cfg, parse_local_tables(local or [], cfg))
    ]


def table(**settings: str) -> str:
    return BASE + "".join(f"{k} = {v}\n" for k, v in settings.items())


def test_a_plain_table_needs_select_on_itself_and_system_parts(tmp_path: Path) -> None:
    assert grants(tmp_path, BASE) == [("SELECT", SOURCE), ("SELECT", "system.parts")]


def test_no_grant_is_database_wide(tmp_path: Path) -> None:
    text = table(hot_retention='"2d"', retiring_table='"retiring"', view="true")
    got = grants(tmp_path, text, ["market.bronze_trades_binance=market.local"])
    # CREATE TEMPORARY TABLE is granted globally only: the table functions need it.
    wide = [(p, on) for p, on in got if "*" in on and (p, on) != ("CREATE TEMPORARY TABLE", "*.*")]
    assert not wide, got
    assert all("." in on or on in ("FILE", "REMOTE") for _, on in got), got


def test_hot_retention_grants_on_the_source_and_its_retiring_table(tmp_path: Path) -> None:
    plain = grants(tmp_path, BASE)
    retained = grants(tmp_path, table(hot_retention='"2d"'))
    assert [g for g in retained if g not in plain] == [
        ("ALTER DELETE, INSERT", SOURCE),
        ("SELECT", "system.detached_parts"),
    ]
    retiring = grants(tmp_path, table(hot_retention='"2d"', retiring_table='"old_days"'))
    assert [g for g in retiring if g not in retained] == [
        ("SELECT, ALTER DELETE, INSERT", "`market`.`old_days`"),
        ("SELECT", "system.replicas"),  # a Replicated replica is used only in sync
    ]


def test_a_view_grants_on_the_view_and_the_cold_side(tmp_path: Path) -> None:
    got = grants(tmp_path, table(view='"analytics.trades"'))
    assert ("CREATE VIEW, DROP VIEW, SELECT", "`analytics`.`trades`") in got
    assert ("READ", "FILE") in got and ("CREATE TEMPORARY TABLE", "*.*") in got
    s3 = BASE.replace('"file:///tmp/warehouse"', '"s3://bucket/wh"') + (
        '\n[views]\nenabled = true\ns3_collection = "offloader_s3"\n'
        's3_endpoint = "http://s3.internal"\n'
    )
    got = grants(tmp_path, s3)
    assert ("CREATE VIEW, DROP VIEW, SELECT", "`market`.`bronze_trades_binance_all`") in got
    assert ("READ", "S3") in got and ("NAMED COLLECTION", "`offloader_s3`") in got
    assert ("READ", "FILE") not in got


def test_a_distributed_source_grants_on_its_local_table_and_the_cluster(tmp_path: Path) -> None:
    text = table(hot_retention='"2d"')
    got = grants(tmp_path, text, ["market.bronze_trades_binance=shards.trades_local"])
    assert ("SELECT", "`shards`.`trades_local`") in got
    assert ("ALTER DELETE, INSERT", "`shards`.`trades_local`") in got  # parts live there
    assert ("ALTER DELETE, INSERT", SOURCE) not in got
    assert ("SELECT", "system.clusters") in got and ("READ", "REMOTE") in got
    assert ("SELECT", "system.clusters") not in grants(tmp_path, text)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("market.bronze_trades_binance", "expected SOURCE=DATABASE.TABLE"),
        ("market.bronze_trades_binance=local", "expected SOURCE=DATABASE.TABLE"),
        ("market.nope=market.local", "market.nope is not a configured source"),
    ],
)
def test_a_bad_local_table_is_one_line(tmp_path: Path, pair: str, message: str) -> None:
    cfg = load_config(write(tmp_path, BASE), env={})
    with pytest.raises(ConfigError, match=message):
        parse_local_tables([pair], cfg)


def test_postgres_grants_the_dsn_user_on_its_database(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={})
    [line] = postgres_statements(cfg, "fallback")
    assert line.startswith('GRANT CONNECT, CREATE ON DATABASE "offloader" TO "postgres";')
    text = BASE.replace("postgres:${PG_PASS:-secret}@", "")
    cfg = load_config(write(tmp_path, text), env={})
    assert '"fallback"' in postgres_statements(cfg, "fallback")[0]


def test_grants_command_prints_statements_for_the_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tmp_path, table(view="true")))
    assert cli.main(["--config", path, "grants", "--user", "offloader"]) == 0
    out = capsys.readouterr().out
    assert f"GRANT SELECT ON {SOURCE} TO `offloader`;  -- source: " in out
    assert 'GRANT CONNECT, CREATE ON DATABASE "offloader"' in out
    assert "secret" not in out  # the DSN's password is nowhere
