"""Test fixtures: a real embedded ClickHouse 26.9 per session, the machine's PostgreSQL,
and a fresh ClickHouse database, PostgreSQL schema and Iceberg catalog per test.

A missing server fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    bucket: str = "cold"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API server on loopback (moto's standalone server) that checks
    credentials: the first three calls create an IAM user, its policy and its key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the S3 test server (moto) did not start") from None
                time.sleep(0.1)
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="offloader")
        iam.put_user_policy(
            UserName="offloader",
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":'
            '[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="offloader")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc.pid)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
        )
        s3.create_bucket(Bucket=server.bucket)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
def env_one(clickhouse_server: devserver.Server, pg_database: str, tmp_path: Path) -> Iterator[Env]:
    """`env` on the default transport only, for what no transport changes (the service's
    metrics)."""
    yield from _fresh_env(clickhouse_server, pg_database, tmp_path, "native")
