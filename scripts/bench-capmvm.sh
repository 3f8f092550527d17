#!/usr/bin/env bash
# capmvm benchmark: release builds of flintlockd, capmvm and capmvm-bench; the fixture images; then
# capmvm-bench runs 3 agents and capmvm against the in-process test API server and prints
# MicrovmMachine → CreateMicroVM latencies (p50/p99), the scheduler's time for 50 machines over 3
# hosts, and capmvm's RSS. Run as root. LM_BENCH_VERBOSE=1 also prints each machine's latency.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >&2
./scripts/test-env.sh start >&2
eval "$(./scripts/test-env.sh env)"
for p in flintlockd capmvm capmvm-bench lmctl; do
  swift build -c release --static-swift-stdlib --scratch-path .build-release --product $p >&2
done
lmctl=.build-release/release/lmctl
$lmctl image build kernel --tag "$LM_REGISTRY/lm-test/kernel:latest" --push --cache-dir /tmp/lm-build-cache >&2
$lmctl image build rootfs --preset minimal --tag "$LM_REGISTRY/lm-test/root:latest" --push >&2
# The agent uses an image already recorded under its tag: drop old records in its namespace.
ctr --address "$LM_CONTAINERD_SOCKET" -n lmbench images rm "$LM_REGISTRY/lm-test/kernel:latest" "$LM_REGISTRY/lm-test/root:latest" >/dev/null 2>&1 || true
exec .build-release/release/capmvm-bench --containerd-socket "$LM_CONTAINERD_SOCKET" --registry "$LM_REGISTRY" "$@"
