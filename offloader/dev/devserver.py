"""An embedded ClickHouse 26.9 server for the quick start, the tests and the benchmarks.

Runs the clickhouse-local engine shipped in the `chdb-core` wheel (extra
`embedded`) in a child process with real native-TCP and HTTP listeners; no
Docker, no system package. Not for production: point offloader at your own
ClickHouse there.

    python -m offloader.dev.devserver start --dir var/clickhouse [--tcp-port 9000]
                                        [--files-root var]
    python -m offloader.dev.devserver stop --dir var/clickhouse

clickhouse-local lets `file()` and `icebergLocal()` read only below its current directory
(it ignores `<user_files_path>` for that check), so the server runs from `files_root`
(default: its own directory): put the Iceberg warehouse below it and the views over both
tiers can read the cold tier. Its config.xml is written there.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CONFIG_XML = """<clickhouse>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <logger><level>warning</level><console>0</console><log>{dir}/server.log</log></logger>
{extra}</clickhouse>
"""

# A cluster: each node names every node, one shard each (no replication: the embedded
# engine has no ZooKeeper client), and logs its queries (what was asked of which node).
QUERY_LOG_XML = """  <query_log><database>system</database><table>query_log</table></query_log>
"""
CLUSTER_XML = """  <remote_servers>
    <{name}>
{shards}    </{name}>
  </remote_servers>
"""
SHARD_XML = """      <shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>
"""

# Users and their grants, enforced: the users.xml at `users` (users created by SQL fail
# on the embedded engine: it has no writable access storage).
USERS_XML = """  <user_directories replace="replace">
    <users_xml><path>{users}</path></users_xml>
  </user_directories>
"""

# The listeners live only while this query runs; its last statement keeps it
# running. The sleep's value is consumed (sum), otherwise the optimiser turns it
# into a busy loop burning a core.
CHILD = """
import sys
from chdb import _chdb
d = sys.argv[1]
sql = (
    "SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
    "SELECT getServerPort('tcp_port'), getServerPort('http_port') "
    f"INTO OUTFILE '{d}/ports.tmp' TRUNCATE FORMAT TabSeparated; "
    "SELECT sum(sleepEachRow(1)) FROM system.numbers SETTINGS max_block_size = 1"
)
_chdb.query(sql, "TabSeparated", path=d + "/data")
"""


@dataclass(frozen=True, slots=True)
class Server:
    pid: int
    tcp_port: int
    http_port: int
    directory: Path


def start(
    directory: str | os.PathLike[str],
    tcp_port: int = 0,
    http_port: int = 0,
    timeout: float = 60.0,
    files_root: str | os.PathLike[str] | None = None,
    users: str | os.PathLike[str] | None = None,
    cluster: tuple[str, Sequence[int]] | None = None,
    query_log: bool = False,
) -> Server:
    """Start the server in the background and wait until it accepts connections.
    `files_root`: the directory the server runs from, below which `icebergLocal` may
    read (default: `directory`). `users`: a users.xml whose users and grants the server
    enforces (default: the one `default` user, all rights, no password). `cluster`: its
    name and the native ports of its shards, one node each (`start_cluster`; a cluster's
    nodes log their queries). `query_log`: system.query_log is kept.

    Eight parameters: each is one independent setting of a development server, given
    by keyword by the tests, the benchmarks and the command line, all but `directory`
    optional; a value holding them would only be built at each call to be taken apart
    here."""
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    existing = running(d)
    if existing is not None:
        return existing
    root = Path(files_root).resolve() if files_root is not None else d
    for stale in ("ports.tmp", "ports.tsv", "pid"):
        (d / stale).unlink(missing_ok=True)
    extra = _extra_config(users, cluster, query_log)
    (root / "config.xml").write_text(
        CONFIG_XML.format(tcp=tcp_port, http=http_port, dir=d, extra=extra)
    )
    log = (d / "stdout.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(d)],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    ports = d / "ports.tmp"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (d / "stdout.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"embedded ClickHouse exited with {proc.returncode}:\n{tail}")
        if ports.exists() and ports.read_text().strip():
            tcp, http = (int(p) for p in ports.read_text().split())
            (d / "pid").write_text(str(proc.pid))
            (d / "ports.tsv").write_text(f"{tcp}\t{http}\n")
            return Server(proc.pid, tcp, http, d)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"embedded ClickHouse did not open its ports within {timeout:g}s")


def _extra_config(
    users: str | os.PathLike[str] | None,
    cluster: tuple[str, Sequence[int]] | None,
    query_log: bool,
) -> str:
    """The server config's optional parts (start's `users`, `cluster`, `query_log`)."""
    extra = USERS_XML.format(users=Path(users).resolve()) if users is not None else ""
    if cluster is not None:
        name, shards = cluster
        extra += CLUSTER_XML.format(
            name=name, shards="".join(SHARD_XML.format(tcp=port) for port in shards)
        )
    if query_log or cluster is not None:
        extra += QUERY_LOG_XML
    return extra


def start_cluster(
    directory: str | os.PathLike[str],
    nodes: int = 2,
    *,
    name: str = "offloader_cluster",
    files_root: str | os.PathLike[str] | None = None,
    users: str | os.PathLike[str] | None = None,
) -> list[Server]:
    """`nodes` servers (directory/node1, node2, …) forming the cluster `name`, one shard
    each: every node's config names all of them, with ports chosen free first. They are
    started one after another (each reads config.xml from `files_root` at start)."""
    ports = [(free_port(), free_port()) for _ in range(nodes)]
    shards = [tcp for tcp, _ in ports]
    root = files_root if files_root is not None else directory
    return [
        start(
            Path(directory) / f"node{i}",
            tcp,
            http,
            files_root=root,
            users=users,
            cluster=(name, shards),
        )
        for i, (tcp, http) in enumerate(ports, 1)
    ]


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(directory: str | os.PathLike[str]) -> Server | None:
    d = Path(directory).resolve()
    try:
        pid = int((d / "pid").read_text())
        tcp, http = (int(p) for p in (d / "ports.tsv").read_text().split())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return Server(pid, tcp, http, d)


def stop(directory: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    server = running(directory)
    if server is None:
        return False
    kill(server.pid, timeout)
    (server.directory / "pid").unlink(missing_ok=True)
    return True


def kill(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        if waited == pid:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offloader.dev.devserver")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default="var/clickhouse", help="data and run directory")
    parser.add_argument("--tcp-port", type=int, default=0, help="native port (0: any free)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: any free)")
    parser.add_argument(
        "--files-root",
        default=None,
        help="directory the server runs from; icebergLocal reads only below it (default: --dir)",
    )
    parser.add_argument("--users", default=None, help="a users.xml to enforce (users, grants)")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="start a cluster of this many nodes (one shard each; --dir/node1, node2, ...)",
    )
    args = parser.parse_args(argv)
    nodes = sorted(Path(args.dir).glob("node[0-9]*"))
    if args.action == "start" and args.nodes > 1:
        running_nodes = [running(n) for n in nodes]
        if nodes and all(running_nodes):
            cluster = [n for n in running_nodes if n is not None]
        else:
            cluster = start_cluster(
                args.dir, args.nodes, files_root=args.files_root, users=args.users
            )
        for s in cluster:
            print(
                f"embedded ClickHouse pid {s.pid}: native 127.0.0.1:{s.tcp_port}, "
                f"http 127.0.0.1:{s.http_port}, data {s.directory}/data"
            )
        return 0
    if args.action == "stop" and nodes:
        stopped = [stop(n) for n in nodes]
        print("stopped" if any(stopped) else "not running")
        return 0
    if args.action == "start":
        s = start(
            args.dir, args.tcp_port, args.http_port, files_root=args.files_root, users=args.users
        )
        print(
            f"embedded ClickHouse pid {s.pid}: native 127.0.0.1:{s.tcp_port}, "
            f"http 127.0.0.1:{s.http_port}, data {s.directory}/data"
        )
        return 0
    if args.action == "stop":
        print("stopped" if stop(args.dir) else "not running")
        return 0
    s2 = running(args.dir)
    print(f"running pid {s2.pid} native {s2.tcp_port}" if s2 else "not running")
    return 0 if s2 else 1


if __name__ == "__main__":
    sys.exit(main())
