#!/usr/bin/env bash
# Image builder benchmark: cold (empty package cache) and warm build times of each image that
# lmctl image build makes, and their sizes. Writes OCI layouts under a scratch directory.
# k8s-node is included when LM_K8S_PACKAGE_SOURCE (an apt source line with kubelet, kubeadm and
# kubectl) and optionally LM_K8S_PACKAGE_SOURCE_KEY name a repository this machine can reach.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --static-swift-stdlib --scratch-path .build-release --product lmctl >&2
lmctl=.build-release/release/lmctl
scratch=$(mktemp -d /var/tmp/lm-bench-images.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cache=$scratch/cache
now() { date +%s.%N; }
build() { # name args...
  local name=$1; shift
  local t0 t1
  t0=$(now)
  # A failed build must not print a time: its output goes to stderr and the script stops.
  if ! "$lmctl" image build "$@" --tag "bench/$name:x" --output "oci-layout:$scratch/$name-$RANDOM" --cache-dir "$cache" >"$scratch/$name.log" 2>&1; then
    echo "bench-images: building $name failed:" >&2
    tail -20 "$scratch/$name.log" >&2
    return 1
  fi
  t1=$(now)
  echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}'
}
size() { # name: compressed layer size of the newest layout for name
  local d; d=$(ls -dt "$scratch/$1"-* | head -1)
  du -sb --apparent-size "$d/blobs" | awk '{printf "%.1f MiB", $1 / 1048576}'
}
printf '%-16s %10s %10s %12s\n' image cold_s warm_s layout_size
specs=("kernel:kernel" "kernel-modules:kernel-modules" "minimal:rootfs --preset minimal" "cloud:rootfs --preset cloud")
[ -z "${LM_K8S_PACKAGE_SOURCE:-}" ] || specs+=("k8s-node:rootfs --preset k8s-node")
for spec in "${specs[@]}"; do
  name=${spec%%:*}; args=${spec#*:}
  if [ "$name" = k8s-node ]; then
    set -- --package-source "$LM_K8S_PACKAGE_SOURCE"
    [ -z "${LM_K8S_PACKAGE_SOURCE_KEY:-}" ] || set -- "$@" --package-source-key "$LM_K8S_PACKAGE_SOURCE_KEY"
  else
    set --
  fi
  rm -rf "$cache"
  # shellcheck disable=SC2086
  cold=$(build "$name" $args "$@") || exit 1
  # shellcheck disable=SC2086
  warm=$(build "$name" $args "$@") || exit 1
  printf '%-16s %10s %10s %12s\n' "$name" "$cold" "$warm" "$(size "$name")"
done
