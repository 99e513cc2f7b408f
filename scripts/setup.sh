#!/usr/bin/env bash
# Install offloader and its development tools into .venv (idempotent), and make sure
# a local PostgreSQL answers on 127.0.0.1:5432. Used by quickstart.sh, test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        echo "setup: installing python3-venv (apt-get)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf .venv
        "$PYTHON" -m venv .venv
    fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.offloader-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi

# promtool (from Debian's prometheus package, unpacked, no service) checks and unit-tests
# the alert rules in ops/.
if [ ! -x .venv/promtool/usr/bin/promtool ]; then
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq >/dev/null
        (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1)
    fi
    dpkg -x "$tmp"/prometheus_*.deb .venv/promtool
    rm -rf "$tmp"
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "setup: installing PostgreSQL (apt-get)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432 || {
        echo "setup: PostgreSQL is not answering on 127.0.0.1:5432" >&2
        exit 1
    }
fi

# Iceberg readers the tests use beside DuckDB and ClickHouse's own: Polars and Daft, in a
# virtualenv of their own (Daft pins an older pyarrow than offloader's).
readers=.venv-readers
if [ ! -f "$readers/.installed-2" ]; then
    rm -rf "$readers"
    "$PYTHON" -m venv "$readers"
    "$readers/bin/python" -m pip install -q --upgrade pip
    "$readers/bin/python" -m pip install -q "polars==2.1.0" "daft==0.7.26" "pyiceberg[sql-sqlite]==0.12.0"
    touch "$readers/.installed-2"
fi
