"""Secrets in the state database's DSN never reach the logs, `status` or the runs table:
offloader runs with a DSN that holds a password with `@` and `:` in it and secret query
parameters, against a reachable PostgreSQL (trust auth takes any password) and against a
closed port (the errors then quote the DSN)."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers import Env

pytestmark = pytest.mark.integration

# Each secret is the tail of what it is written in: a redaction that stops at the first
# `@` (or `:`) of a password shows it.
SECRETS = ("Userinfo7q", "Query7q", "Sslkey7q", "Passwd7q", "Secret7q", "Token7q")


def secret_dsn(base: str, port: int, *, raw: bool) -> str:
    """`base` with the password `pa@ss:Userinfo7q` (%-encoded, as asyncpg needs it, or
    `raw`) and ?password= and ?sslpassword= (asyncpg's own keys); `raw` also adds
    passwd=, secret=, token= (which asyncpg would send to the server as settings)."""
    parts = urlsplit(base)
    user = parts.username or "postgres"
    query = "password=a@b:Query7q&sslpassword=k:Sslkey7q"
    password = "pa%40ss%3AUserinfo7q"
    if raw:
        query += "&passwd=Passwd7q&secret=Secret7q&token=Token7q"
        password = "pa@ss:Userinfo7q"
    netloc = f"{user}:{password}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def assert_no_secret(where: str, text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows {leaked}: {text[-2000:]}"


def runs_table(env: Env) -> str:
    """Every row of the runs table, as text."""
    result = subprocess.run(
        ["psql", env.pg_dsn, "-Atc", f"SELECT r::text FROM {env.pg_schema}.runs AS r"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_secrets_of_a_working_dsn_stay_out_of_logs_status_and_runs(env_one: Env) -> None:
    env = env_one
    env.create_trades("trades")
    env.insert_trades("trades", 50, 1, "2025-03-01 00:00:00")
    dsn = secret_dsn(env.pg_dsn, 5432, raw=False)
    # A second table that fails (no such source) puts an error into the runs table.
    tables = [env.table("trades"), env.table("missing")]
    env.write_config(tables, pg_dsn=dsn, service={"metrics_port": 0})
    once = env.cli("--log-level", "DEBUG", "--log-format", "json", "once")
    assert once.returncode == 1 and '"rows":50' in once.stderr, once.stdout + once.stderr
    assert_no_secret("once", once.stdout + once.stderr)
    assert "state database open" in once.stderr and "password=***" in once.stderr
    for args in (["status"], ["status", "--json"], ["status", "--check"], ["validate"]):
        shown = env.cli("--log-format", "json", *args)
        assert "cold.trades" in shown.stdout, shown.stdout + shown.stderr
        assert_no_secret(" ".join(args), shown.stdout + shown.stderr)
    runs = runs_table(env)
    assert "failed" in runs and "missing" in runs, runs
    assert_no_secret("the runs table", runs)


@pytest.mark.parametrize("raw", [False, True], ids=["encoded", "raw"])
def test_secrets_of_a_failing_dsn_stay_out_of_errors(env_one: Env, raw: bool) -> None:
    """A closed port (the errors quote the DSN), or a raw `@` and `:` in the password,
    which asyncpg cannot parse (its message quotes the password's tail)."""
    env = env_one
    env.create_trades("trades")
    dsn = secret_dsn(env.pg_dsn, 5432 if raw else 1, raw=raw)
    env.write_config([env.table("trades")], pg_dsn=dsn)
    for args in (["once"], ["status"]):
        failed = env.cli("--log-format", "json", *args)
        said = failed.stdout + failed.stderr
        assert failed.returncode == 1 and "PostgreSQL postgresql://" in said, (args, said)
        assert "Traceback" not in said and "password=***" in said, (args, said)
        assert ("percent-encode" in said) == raw, (args, said)
        assert_no_secret(" ".join(args), said)
