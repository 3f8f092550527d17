#!/usr/bin/env bash
# Benchmark: prepares containerd, the registry and the fixture images, builds in release mode,
# then runs lm-bench (which starts its own flintlockd) and prints the figures. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/test-env.sh start
eval "$(./scripts/test-env.sh env)"
# A statically linked Swift runtime keeps the agent's resident memory a little lower.
swift build -c release --static-swift-stdlib --scratch-path .build-release --product flintlockd
swift build -c release --static-swift-stdlib --scratch-path .build-release --product lm-bench
swift build -c release --static-swift-stdlib --scratch-path .build-release --product lmctl
# The fixture images lm-bench boots (as the system tests build them): kernel and minimal root.
lmctl=.build-release/release/lmctl
$lmctl image build kernel --tag "$LM_REGISTRY/lm-test/kernel:latest" --push --cache-dir /tmp/lm-build-cache
$lmctl image build rootfs --preset minimal --tag "$LM_REGISTRY/lm-test/root:latest" --push
exec .build-release/release/lm-bench --containerd-socket "$LM_CONTAINERD_SOCKET" --registry "$LM_REGISTRY" "$@"
