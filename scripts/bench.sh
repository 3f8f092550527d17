#!/usr/bin/env bash
# Benchmark: prepares containerd, the registry and the fixture images, builds in release mode,
# then runs lm-bench (which starts its own flintlockd) and prints the figures. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/test-env.sh start
eval "$(./scripts/test-env.sh env)"
./scripts/build-test-images.sh --push "$LM_REGISTRY"
# A statically linked Swift runtime keeps the agent's resident memory a little lower.
swift build -c release --static-swift-stdlib --scratch-path .build-release --product flintlockd
swift build -c release --static-swift-stdlib --scratch-path .build-release --product lm-bench
exec .build-release/release/lm-bench --containerd-socket "$LM_CONTAINERD_SOCKET" --registry "$LM_REGISTRY" "$@"
