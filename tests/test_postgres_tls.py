"""TLS to PostgreSQL, as the production examples run it (`sslmode=verify-full` in
`[postgres] dsn`): offloader keeps its state over TLS, verifying the server's certificate
against a CA the test makes, and refuses a server it cannot verify or a DSN that turns
TLS off, saying why in one line, the DSN's password redacted.

The machine's shared PostgreSQL runs with ssl off and is not reconfigured: the test
starts its own throwaway cluster (the installed PostgreSQL's initdb and pg_ctl, as the
`postgres` user when the test runs as root, which PostgreSQL refuses to run as) with
ssl on and a pg_hba.conf that accepts TCP connections only over TLS. A missing binary
fails the test; nothing is skipped."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.helpers import Env
from tests.test_tls import make_certificates

pytestmark = pytest.mark.integration

# In the DSN, never needed (the test cluster trusts its TCP clients once on TLS): it must
# never be printed.
PASSWORD = "pg-tls-Secret-71"
PG_BIN_DIRS = "/usr/lib/postgresql"  # Debian's postgresql-NN packages put theirs here


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    pem: dict[str, Path]  # ca (signed the server's certificate), other (did not)
    log: Path

    def dsn(self, database: str, query: str) -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}?{query}"

    def verified(self, database: str, ca: str = "ca") -> str:
        return self.dsn(database, f"sslmode=verify-full&sslrootcert={self.pem[ca]}")


def postgres_bin() -> Path:
    """The directory of the newest installed PostgreSQL's initdb, pg_ctl and postgres."""
    needed = ("initdb", "pg_ctl", "postgres")
    found = [
        d / "bin"
        for d in sorted(Path(PG_BIN_DIRS).glob("*"), key=lambda p: _version(p.name))
        if all((d / "bin" / b).is_file() for b in needed)
    ]
    on_path = shutil.which("initdb")
    if not found and on_path and all((Path(on_path).parent / b).is_file() for b in needed):
        found = [Path(on_path).parent]
    if not found:
        pytest.fail(
            f"PostgreSQL's server binaries ({', '.join(needed)}) are not in "
            f"{PG_BIN_DIRS}/*/bin nor on PATH: install the server (apt-get install "
            "postgresql-15) to run the PostgreSQL TLS tests",
            pytrace=False,
        )
    return found[-1]


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster in `directory`, run as `user` (None: as this
    process's user)."""

    def __init__(self, directory: Path, bindir: Path, user: str | None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self._bin = bindir
        self._user = user

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=60, cwd=self.directory
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}{log}"
            )
        return done

    def init(self, pem: dict[str, Path]) -> None:
        self.run(
            str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        for source, name in ((pem["cert"], "server.crt"), (pem["key"], "server.key")):
            shutil.copyfile(source, self.data / name)
            self._own(self.data / name)
        (self.data / "server.key").chmod(0o600)
        # TCP only over TLS: a connection without it is refused, whatever its credentials.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
            "hostnossl all all ::/0 reject\n"
            "hostssl all all 127.0.0.1/32 trust\n"
        )

    def start(self, port: int) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.directory}'",
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "log_connections": "on",
            "fsync": "off",
            "shared_buffers": "'16MB'",
        }
        (self.data / "postgresql.auto.conf").write_text(
            "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        self.run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "30", "start",
        )  # fmt: skip

    def start_on_a_free_port(self) -> int:
        """Start on a port free a moment ago; again on another if one took it meanwhile."""
        for attempt in range(3):
            port = free_port()
            try:
                self.start(port)
                return port
            except AssertionError as exc:
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def _own(self, path: Path) -> None:
        if self._user:
            shutil.chown(path, self._user, self._user)


def _server_user() -> str | None:
    """PostgreSQL will not run as root: as root, the `postgres` user runs it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root, and there is no `postgres` user to run the test's PostgreSQL "
            "as (PostgreSQL refuses root): install the server package, which creates it",
            pytrace=False,
        )
    if shutil.which("runuser") is None:
        pytest.fail("running as root, and `runuser` (util-linux) is missing", pytrace=False)
    return "postgres"


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    bindir = postgres_bin()
    user = _server_user()
    # Not under pytest's base temp: as root, that is 0700 and the server's user cannot
    # reach a directory below it.
    directory = Path(tempfile.mkdtemp(prefix="offloader-pgtls-"))
    cluster = Cluster(directory, bindir, user)
    try:
        pem = make_certificates(Path(tempfile.mkdtemp(prefix="certs-", dir=directory)))
        if user:
            shutil.chown(directory, user, user)
        cluster.init(pem)
        port = cluster.start_on_a_free_port()
        yield TlsPostgres(port, pem, cluster.log)
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def pg_fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    return anyio.run(go)


def refused(env: Env, tls_postgres: TlsPostgres, dsn: str) -> str:
    """`offloader once` with `dsn`: it fails, nothing offloaded, and its cycle's line
    says why (returned), the DSN's password redacted."""
    env.create_trades("trades")
    env.insert_trades("trades", 10, 1, "2025-03-01 00:00:00")
    env.write_config([env.table("trades")], pg_dsn=dsn)
    # No default CA file (~/.postgresql/root.crt, $PGSSLROOTCERT): only the DSN's.
    done = env.cli("once", timeout=60, extra_env={"HOME": str(env.tmp), "PGSSLROOTCERT": ""})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert PASSWORD not in output, output
    [line] = done.stdout.splitlines()  # the cycle's one line
    assert "0 rows; ok 0, idle 0, failed 1" in line, line
    redacted = f"error: PostgreSQL postgresql://postgres:***@127.0.0.1:{tls_postgres.port}/"
    assert redacted in line, line
    assert ": connect failed: " in line, line
    return line


def test_offload_keeps_its_state_over_verified_tls(env_one: Env, tls_postgres: TlsPostgres) -> None:
    env = env_one
    env.create_trades("trades")
    env.insert_trades("trades", 100, 1, "2025-03-01 00:00:00")
    dsn = tls_postgres.verified("offloader_tls")
    env.write_config([env.table("trades")], pg_dsn=dsn)
    done = env.cli("once", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100 rows" in done.stdout, done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert env.assert_tiers_equal("cold.trades") == 100
    # The watermark is committed in the TLS server's state database (created on first use).
    rows = pg_fetch(
        dsn,
        f"SELECT seq, rows_total FROM \"{env.pg_schema}\".watermarks WHERE target = 'cold.trades'",
    )
    assert [(r["seq"], r["rows_total"]) for r in rows] == [(1, 100)], rows
    # The server saw TLS: on a connection made with the same DSN, and on every one
    # offloader opened (the server logs each connection's encryption).
    rows = pg_fetch(dsn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert [r["ssl"] for r in rows] == [True]
    authorized = [
        line
        for line in tls_postgres.log.read_text().splitlines()
        if "connection authorized" in line and "database=offloader_tls" in line
    ]
    assert authorized, tls_postgres.log.read_text()
    assert all("SSL enabled" in line for line in authorized), authorized


def test_a_dsn_without_tls_is_refused_by_a_server_that_requires_it(
    env_one: Env, tls_postgres: TlsPostgres
) -> None:
    line = refused(env_one, tls_postgres, tls_postgres.dsn("offloader_tls", "sslmode=disable"))
    assert "sslmode=disable" in line, line
    assert "no encryption" in line, line
    assert "sslmode=verify-full" in line, line  # what to do


def test_a_server_certificate_from_an_unknown_ca_is_refused(
    env_one: Env, tls_postgres: TlsPostgres
) -> None:
    line = refused(env_one, tls_postgres, tls_postgres.verified("offloader_tls", ca="other"))
    assert "certificate verify failed" in line.lower(), line
    assert "sslrootcert" in line, line  # what to do


def test_verify_full_without_a_ca_file_says_to_name_one(
    env_one: Env, tls_postgres: TlsPostgres
) -> None:
    line = refused(env_one, tls_postgres, tls_postgres.dsn("offloader_tls", "sslmode=verify-full"))
    assert "root certificate file" in line, line
    assert "set sslrootcert=" in line, line
