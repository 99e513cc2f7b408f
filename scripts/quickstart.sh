#!/usr/bin/env bash
# Quick start on a fresh Debian machine: install, start an embedded ClickHouse 26.9 with two
# sample trades tables, offload them into Iceberg, show the report, the status, what the
# verified hot retention would drop (instead of a TTL) and a query over both tiers through
# each table's view.
#   bash scripts/quickstart.sh        a local warehouse (SQLite catalog, files under var/)
#   bash scripts/quickstart.sh --s3   the production shape: an S3 object store and an Iceberg
#                                     REST catalog (SeaweedFS, started under var/s3)
#   bash scripts/quickstart.sh stop   stop the embedded servers
# Everything lives under ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "stop" ]; then
    .venv/bin/python -m offloader.dev.devserver stop --dir var/clickhouse
    .venv/bin/python -m offloader.dev.devstore stop --dir var/s3
    exit 0
fi
s3=0
if [ "${1:-}" = "--s3" ]; then
    s3=1
elif [ -n "${1:-}" ]; then
    echo "usage: bash scripts/quickstart.sh [--s3 | stop]" >&2
    exit 2
fi
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

mkdir -p var
# ClickHouse runs from var/ so that it can read the Iceberg warehouse under it (the views).
python -m offloader.dev.devserver start --dir var/clickhouse --files-root var
port=$(cut -f1 var/clickhouse/ports.tsv)
config=var/quickstart.toml
store=()
if [ "$s3" = 1 ]; then
    python -m offloader.dev.devstore start --dir var/s3
    config=var/quickstart-s3.toml
    store=(--s3-store var/s3)
fi
if [ ! -f "$config" ]; then
    python -m offloader.dev.demo --port "$port" --rows 200000 "${store[@]}" \
        --config-out "$config" --state-dir var/offloader \
        --postgres "postgresql://postgres@127.0.0.1:5432/offloader_quickstart"
else
    # ClickHouse may have come up on another port: keep the config pointing at it.
    sed -i "s/^port = .*/port = $port/" "$config"
    if ! grep -q '^\[views\]' "$config"; then
        # A config from before the views: add them (before the first table).
        sed -i '0,/^\[\[tables\]\]/s//[views]\nenabled = true\n\n[[tables]]/' "$config"
    fi
    python -m offloader.dev.demo --port "$port" --rows 1000 "${store[@]}"
fi
export OFFLOADER_CONFIG=$config
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
echo "== offloader retain --dry-run (hot_retention: what offloader would drop from ClickHouse, verified)"
offloader retain --dry-run
echo
echo "== one query over both tiers (the views offloader keeps)"
python -m offloader.dev.demo --port "$port" --show-views
echo
if [ "$s3" = 1 ]; then
    echo "Config: $config  Iceberg: REST catalog and S3 of var/s3 (python -m offloader.dev.devstore status --dir var/s3)"
else
    echo "Config: $config  Iceberg warehouse: var/offloader/warehouse"
fi
echo "Try: OFFLOADER_CONFIG=$config .venv/bin/offloader run --now --log-format text"
echo "     OFFLOADER_CONFIG=$config .venv/bin/offloader retain   (drops the verified old days)"
