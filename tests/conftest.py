"""Test fixtures: a real embedded ClickHouse 26.9 per session, the machine's PostgreSQL,
and a fresh ClickHouse database, PostgreSQL schema and Iceberg catalog per test.

A missing server fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from offloader.dev import devserver, devstore
from tests.helpers import Env, pg_admin

PG_DSN = os.environ.get("OFFLOADER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/offloader_tests")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devserver.Server]:
    directory = tmp_path_factory.mktemp("clickhouse")
    # It runs from the session's base directory, so icebergLocal (the views over both
    # tiers) can read every test's warehouse below it.
    server = devserver.start(directory, files_root=tmp_path_factory.getbasetemp())
    try:
        yield server
    finally:
        devserver.stop(directory)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    bucket: str = devstore.BUCKET
    store: devstore.Store | None = None  # its REST catalog: store.rest_catalog()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server and Iceberg REST catalog on loopback (SeaweedFS, `weed
    mini`): credentials checked, no bucket created on upload, as S3 does."""
    directory = tmp_path_factory.mktemp("s3")
    store = devstore.start(directory)
    try:
        yield S3Server(store.endpoint, store.access_key, store.secret_key, store.pid, store=store)
    finally:
        devstore.stop(directory)


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


TRANSPORTS = ["native", "arrow", "parquet"]
# The long suites (soak, random kills) test what no transport changes: they run on the
# default transport, and on all three with OFFLOADER_ALL_TRANSPORTS=1 (each transport's
# own crash points are killed in test_exactly_once.py on all three every run).
LONG_TRANSPORTS = TRANSPORTS if os.environ.get("OFFLOADER_ALL_TRANSPORTS") else ["native"]


def _fresh_env(
    server: devserver.Server, pg_database: str, tmp_path: Path, transport: str
) -> Iterator[Env]:
    e = make_env(server, pg_database, tmp_path, transport)
    try:
        yield e
    finally:
        e.ch(f"DROP DATABASE IF EXISTS {e.ch_database}")
        e.drop_pg_schema()


@pytest.fixture(params=TRANSPORTS)
def env(
    request: pytest.FixtureRequest,
    clickhouse_server: devserver.Server,
    pg_database: str,
    tmp_path: Path,
) -> Iterator[Env]:
    """A fresh ClickHouse database, PostgreSQL schema and Iceberg catalog; every test
    using it runs once per transport (native TCP, Arrow and Parquet over HTTP)."""
    yield from _fresh_env(clickhouse_server, pg_database, tmp_path, request.param)


@pytest.fixture(params=LONG_TRANSPORTS)
def env_long(
    request: pytest.FixtureRequest,
    clickhouse_server: devserver.Server,
    pg_database: str,
    tmp_path: Path,
) -> Iterator[Env]:
    """`env` for the long suites: the default transport (all three with
    OFFLOADER_ALL_TRANSPORTS=1)."""
    yield from _fresh_env(clickhouse_server, pg_database, tmp_path, request.param)


@pytest.fixture
def env_parquet(
    clickhouse_server: devserver.Server, pg_database: str, tmp_path: Path
) -> Iterator[Env]:
    """`env` on the parquet transport only, for what only it does."""
    yield from _fresh_env(clickhouse_server, pg_database, tmp_path, "parquet")


@pytest.fixture
def env_one(clickhouse_server: devserver.Server, pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """`env` on the default transport only, for what no transport changes (the service's
    metrics)."""
    yield from _fresh_env(clickhouse_server, pg_database, tmp_path, "native")
