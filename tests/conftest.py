"""Test fixtures: a real embedded ClickHouse 26.9 per session, the machine's PostgreSQL,
and a fresh ClickHouse database, PostgreSQL schema and Iceberg catalog per test.

A missing server fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloader import devserver
from tests.helpers import Env, pg_admin

PG_DSN = os.environ.get("OFFLOADER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/offloader_tests")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devserver.Server]:
    directory = tmp_path_factory.mktemp("clickhouse")
    server = devserver.start(directory)
    try:
        yield server
    finally:
        devserver.stop(directory)


@pytest.fixture(scope="session")
def pg_database() -> str:
    pg_admin(PG_DSN, create=True)
    return PG_DSN


def make_env(
    server: devserver.Server, pg_database: str, tmp_path: Path, transport: str = "native"
) -> Env:
    tag = uuid.uuid4().hex[:10]
    e = Env(
        tmp=tmp_path,
        ch_port=server.tcp_port,
        ch_http_port=server.http_port,
        ch_database=f"t_{tag}",
        pg_dsn=pg_database,
        pg_schema=f"t_{tag}",
        catalog_name=f"cold_{tag}",
        transport=transport,
    )
    e.ch(f"CREATE DATABASE {e.ch_database}")
    return e


@pytest.fixture(params=["native", "arrow"])
def env(
    request: pytest.FixtureRequest,
    clickhouse_server: devserver.Server,
    pg_database: str,
    tmp_path: Path,
) -> Iterator[Env]:
    """A fresh ClickHouse database, PostgreSQL schema and Iceberg catalog; every test
    using it runs once per transport (native TCP and Arrow over HTTP)."""
    e = make_env(clickhouse_server, pg_database, tmp_path, request.param)
    try:
        yield e
    finally:
        e.ch(f"DROP DATABASE IF EXISTS {e.ch_database}")
        e.drop_pg_schema()
