#!/usr/bin/env bash
# Quick start on a fresh Debian machine: install, start an embedded ClickHouse 26.9 with two
# sample trades tables, offload them into a local Iceberg warehouse, show the report, the
# status and a query over both tiers through each table's view.
# Everything lives under ./var; run `bash scripts/quickstart.sh stop` to stop ClickHouse.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "stop" ]; then
    .venv/bin/python -m offloader.devserver stop --dir var/clickhouse
    exit 0
fi
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

mkdir -p var
# ClickHouse runs from var/ so that it can read the Iceberg warehouse under it (the views).
python -m offloader.devserver start --dir var/clickhouse --files-root var
port=$(cut -f1 var/clickhouse/ports.tsv)
if [ ! -f var/quickstart.toml ]; then
    python -m offloader.demo --port "$port" --rows 200000 \
        --config-out var/quickstart.toml --state-dir var/offloader \
        --postgres "postgresql://postgres@127.0.0.1:5432/offloader_quickstart"
else
    # ClickHouse may have come up on another port: keep the config pointing at it.
    sed -i "s/^port = .*/port = $port/" var/quickstart.toml
    if ! grep -q '^\[views\]' var/quickstart.toml; then
        # A config from before the views: add them (before the first table).
        sed -i '0,/^\[\[tables\]\]/s//[views]\nenabled = true\n\n[[tables]]/' var/quickstart.toml
    fi
    python -m offloader.demo --port "$port" --rows 1000
fi
export OFFLOADER_CONFIG=var/quickstart.toml
echo
echo "== offloader validate"
offloader validate
echo
echo "== offloader once"
offloader --log-format text once
echo
echo "== offloader status"
offloader status
echo
echo "== one query over both tiers (the views offloader keeps)"
python -m offloader.demo --port "$port" --show-views
echo
echo "Config: var/quickstart.toml  Iceberg warehouse: var/offloader/warehouse"
echo "Try: OFFLOADER_CONFIG=var/quickstart.toml .venv/bin/offloader run --now --log-format text"
