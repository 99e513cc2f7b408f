"""Read an Iceberg table with a reader nobody here wrote — Polars (`pl.scan_iceberg`)
or Daft (`daft.read_iceberg`) — and write what it read as an Arrow IPC file.

Runs in its own virtualenv (`.venv-readers`, made by scripts/test.sh: Daft pins an
older pyarrow than offloader's), so it imports nothing of offloader's:

    .venv-readers/bin/python tests/iceberg_readers.py READER CATALOG_NAME CATALOG_URI \\
        WAREHOUSE TABLE OUT.arrow
"""

from __future__ import annotations

import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog


def main(reader: str, name: str, uri: str, warehouse: str, table: str, out: str) -> None:
    catalog = SqlCatalog(name, uri=uri, warehouse=warehouse)
    iceberg = catalog.load_table(table)
    if reader == "polars":
        import polars as pl

        data = pl.scan_iceberg(iceberg).collect().to_arrow()
    elif reader == "daft":
        import daft

        data = daft.read_iceberg(iceberg).to_arrow()
    else:
        raise SystemExit(f"unknown reader {reader!r}: polars or daft")
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
        writer.write_table(data)


if __name__ == "__main__":
    main(*sys.argv[1:])
