#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
# System tests (containerd, registry, QEMU, TAP) need root; they run for real in CI (CI=true)
# and fail there if anything is missing; elsewhere they are skipped when the host can't run them.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
./scripts/install-deps.sh
swift test
echo "scripts/test.sh: finished in $(( $(date +%s) - start )) s" >&2
