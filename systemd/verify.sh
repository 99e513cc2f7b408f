#!/usr/bin/env bash
# Check the unit with systemd-analyze verify. The unit names /opt/offloader/.venv/bin/offloader
# and user offloader; verify needs the binary to exist, so check a copy whose paths point
# at this checkout (everything else is verified as shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$(pwd)
sed -e "s#/opt/offloader#$root#g" systemd/offloader.service > "$tmp/offloader.service"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$tmp/offloader.service" 2>&1 || true)
# Lines about other units on the host (not ours) are noise in a container.
ours=$(printf '%s\n' "$out" | grep -F "offloader.service" || true)
if [ -n "$ours" ]; then
    printf '%s\n' "$ours" >&2
    echo "systemd-analyze verify: problems in systemd/offloader.service" >&2
    exit 1
fi
echo "systemd/offloader.service: systemd-analyze verify OK"
