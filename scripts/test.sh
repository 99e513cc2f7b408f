#!/usr/bin/env bash
# Run the whole test suite: unit tests and integration tests against a real embedded
# ClickHouse 26.9 (started by the tests) and the local PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest "$@"
