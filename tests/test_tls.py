"""TLS to ClickHouse, as the production examples run it (`secure = true`): offloader
offloads over TLS on the native and the HTTP port, verifying the server's certificate
against a CA the test makes, and refuses a server whose certificate it cannot verify.

The embedded engine opens only plain listeners ("SYSTEM START/STOP LISTEN in
clickhouse-local supports only TCP and HTTP listeners"), so TLS is terminated in front of
them by a small proxy: offloader's side of the connection is real TLS either way.
PostgreSQL's TLS (`sslmode=verify-full`) is tested in test_postgres_tls.py."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloader.dev import devserver
from tests.helpers import Env

pytestmark = pytest.mark.integration


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a certificate it signs for 127.0.0.1 (and its key), and another CA."""

    def openssl(command: str) -> None:
        subprocess.run(
            ["openssl", *command.split()], cwd=directory, check=True, capture_output=True
        )

    for ca in ("ca", "other"):
        openssl(
            f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {ca}.key "
            f"-out {ca}.pem"
        )
    openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out cert.csr")
    (directory / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile san.cnf -out cert.pem"
    )
    return {name: directory / f"{name}.pem" for name in ("ca", "other", "cert", "key")}


class TlsProxy:
    """TLS listeners on 127.0.0.1 in front of plain ports, one thread, one event loop."""

    def __init__(self, cert: Path, key: Path, targets: list[int]) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.ports = [
            asyncio.run_coroutine_threadsafe(self._listen(t), self._loop).result(10)
            for t in targets
        ]

    async def _listen(self, target: int) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self._context)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass  # the other side went away: the pipe's job is over
    finally:
        writer.close()


@pytest.fixture(scope="module")
def tls(
    clickhouse_server: devserver.Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TlsProxy, dict[str, Path]]]:
    directory = tmp_path_factory.mktemp("tls")
    pem = make_certificates(directory)
    proxy = TlsProxy(
        pem["cert"], pem["key"], [clickhouse_server.tcp_port, clickhouse_server.http_port]
    )
    try:
        yield proxy, pem
    finally:
        proxy.close()


@pytest.mark.parametrize("transport", ["native", "parquet"])
def test_offload_over_tls_verifying_the_server(
    env_one: Env, tls: tuple[TlsProxy, dict[str, Path]], transport: str
) -> None:
    proxy, pem = tls
    env = env_one
    env.transport = transport
    env.create_trades("trades")
    env.insert_trades("trades", 100, 1, "2025-03-01 00:00:00")
    native, http = proxy.ports
    env.write_config(
        [env.table("trades")],
        clickhouse_port=native,
        clickhouse_http_port=http,
        clickhouse_extra={"secure": True},
    )
    # A certificate offloader cannot verify: refused, nothing offloaded.
    refused = env.cli("once", extra_env={"SSL_CERT_FILE": str(pem["other"])})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout + refused.stderr, refused.stdout
    trusted = env.cli("once", extra_env={"SSL_CERT_FILE": str(pem["ca"])})
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "100 rows" in trusted.stdout, trusted.stdout
    assert env.assert_tiers_equal("cold.trades") == 100
