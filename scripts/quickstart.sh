#!/usr/bin/env bash
# Quick start on a fresh Debian machine: install, start an embedded ClickHouse 26.9 with two
# sample trades tables, offload them into Iceberg, show the report, the status, what the
# verified hot retention would drop (instead of a TTL) and a query over both tiers through
# each table's view.
#   bash scripts/quickstart.sh        a local warehouse (SQLite catalog, files under var/)
#   bash scripts/quickstart.sh --s3   the production shape: an S3 object store and an Iceberg
#                                     REST catalog (SeaweedFS, started under var/s3)
#   bash scripts/quickstart.sh --cluster  a sharded hot tier: two embedded ClickHouse nodes
#                                     (one shard each, var/cluster), Distributed trades tables
#   bash scripts/quickstart.sh stop   stop the embedded servers
# Everything lives under ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "stop" ]; then
    .venv/bin/python -m offloader.dev.devserver stop --dir var/clickhouse
    .venv/bin/python -m offloader.dev.devstore stop --dir var/s3
    .venv/bin/python -m offloader.dev.devserver stop --dir var/cluster
    exit 0
fi
s3=0
cluster=0
if [ "${1:-}" = "--s3" ]; then
    s3=1
elif [ "${1:-}" = "--cluster" ]; then
    cluster=1
elif [ -n "${1:-}" ]; then
    echo "usage: bash scripts/quickstart.sh [--s3 | --cluster | stop]" >&2
    exit 2
fi
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

mkdir -p var
# ClickHouse runs from var/ so that it can read the Iceberg warehouse under it (the views).
config=var/quickstart.toml
state=var/offloader
store=()
if [ "$cluster" = 1 ]; then
    python -m offloader.dev.devserver start --dir var/cluster --nodes 2 --files-root var
    port=$(cut -f1 var/cluster/node1/ports.tsv)
    ports="$port,$(cut -f1 var/cluster/node2/ports.tsv)"
    config=var/quickstart-cluster.toml
    state=var/offloader-cluster
    store=(--cluster-ports "$ports")
else
    python -m offloader.dev.devserver start --dir var/clickhouse --files-root var
    port=$(cut -f1 var/clickhouse/ports.tsv)
fi
if [ "$s3" = 1 ]; then
    python -m offloader.dev.devstore start --dir var/s3
    config=var/quickstart-s3.toml
    store=(--s3-store var/s3)
fi
if [ ! -f "$config" ]; then
    python -m offloader.dev.demo --port "$port" --rows 200000 "${store[@]}" \
        --config-out "$config" --state-dir "$state" \
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
if [ "$cluster" = 1 ]; then
    echo "== one query over both tiers, on each node (the views offloader keeps on every node)"
    for node in var/cluster/node*; do
        echo "-- $node"
        python -m offloader.dev.demo --port "$(cut -f1 "$node/ports.tsv")" --show-views
    done
else
    echo "== offloader retain --dry-run (hot_retention: what offloader would drop from ClickHouse, verified)"
    offloader retain --dry-run
    echo
    echo "== one query over both tiers (the views offloader keeps)"
    python -m offloader.dev.demo --port "$port" --show-views
fi
echo
if [ "$s3" = 1 ]; then
    echo "Config: $config  Iceberg: REST catalog and S3 of var/s3 (python -m offloader.dev.devstore status --dir var/s3)"
else
    echo "Config: $config  Iceberg warehouse: $state/warehouse"
fi
echo "Try: OFFLOADER_CONFIG=$config .venv/bin/offloader run --now --log-format text"
if [ "$cluster" = 0 ]; then
    echo "     OFFLOADER_CONFIG=$config .venv/bin/offloader retain   (drops the verified old days)"
fi
