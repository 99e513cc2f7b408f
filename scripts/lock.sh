#!/usr/bin/env bash
# Write the lock files in requirements/ from pyproject.toml: exact versions with their
# hashes, for Python 3.11 on x86_64 Linux. Run it after changing a dependency range, and
# commit what it writes. dev.txt is resolved first; the smaller sets are resolved within
# it (-c), so a venv moved from one set to a larger one keeps its versions.
#   production.txt  the service alone (the systemd install, CI's wheel check)
#   quickstart.txt  + the embedded ClickHouse and SeaweedFS (scripts/setup.sh)
#   dev.txt         + tests, linters, the documentation site (scripts/setup.sh --dev)
#   readers.txt     Polars and Daft for the tests (.venv-readers, scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
compile=("$uv" pip compile --quiet --generate-hashes --python-version 3.11
    --python-platform x86_64-manylinux_2_28 --no-header --upgrade)
"${compile[@]}" pyproject.toml requirements/build.in --extra embedded --extra dev \
    --extra docs -o requirements/dev.txt
"${compile[@]}" pyproject.toml requirements/build.in --extra embedded \
    -c requirements/dev.txt -o requirements/quickstart.txt
"${compile[@]}" pyproject.toml requirements/build.in \
    -c requirements/dev.txt -o requirements/production.txt
"${compile[@]}" requirements/readers.in -o requirements/readers.txt
