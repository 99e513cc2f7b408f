#!/usr/bin/env bash
# Install offloader into .venv from the lock (idempotent), and make sure a local PostgreSQL
# answers on 127.0.0.1:5432.
#   bash scripts/setup.sh         what the quick start needs: offloader, the embedded
#                                 ClickHouse and SeaweedFS (requirements/quickstart.txt)
#   bash scripts/setup.sh --dev   also the tests' and linters' tools and the documentation
#                                 site (requirements/dev.txt); scripts/test.sh and CI use it
# Every package comes from a lock file with its hash (scripts/lock.sh writes them).
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/quickstart.txt
if [ "${1:-}" = "--dev" ]; then
    lock=requirements/dev.txt
elif [ -n "${1:-}" ]; then
    echo "usage: bash scripts/setup.sh [--dev]" >&2
    exit 2
fi

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
# One stamp per lock file: installed once, again when the lock or pyproject.toml changes.
stamp=.venv/.installed-$(basename "$lock" .txt)
if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install -q --disable-pip-version-check --require-hashes -r "$lock"
    # offloader itself, editable, built by the locked setuptools: nothing unlocked is fetched.
    python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    touch "$stamp"
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
