#!/usr/bin/env bash
# Run the whole test suite: unit tests and integration tests against a real embedded
# ClickHouse 26.9 (started by the tests) and the local PostgreSQL. Installs what only the
# tests need: the development tools, promtool and the independent Iceberg readers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# shellcheck disable=SC1091
. .venv/bin/activate

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

# Iceberg readers the tests use beside DuckDB and ClickHouse's own: Polars and Daft, in a
# virtualenv of their own (Daft pins an older pyarrow than offloader's), from their lock.
readers=.venv-readers
lock=requirements/readers.txt
if [ ! -f "$readers/.installed" ] || [ "$lock" -nt "$readers/.installed" ]; then
    rm -rf "$readers"
    "${PYTHON:-python3}" -m venv "$readers"
    "$readers/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$lock"
    touch "$readers/.installed"
fi

exec python -m pytest "$@"
