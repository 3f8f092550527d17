#!/usr/bin/env bash
# Image builder benchmark: cold (empty package cache) and warm build times of each image that
# lmctl image build makes, and their sizes. Writes OCI layouts under a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product lmctl >&2
lmctl=.build/release/lmctl
scratch=$(mktemp -d /var/tmp/lm-bench-images.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cache=$scratch/cache
now() { date +%s.%N; }
build() { # name args...
  local name=$1; shift
  local t0 t1
  t0=$(now)
  "$lmctl" image build "$@" --tag "bench/$name:x" --output "oci-layout:$scratch/$name-$RANDOM" --cache-dir "$cache" >/dev/null 2>&1
  t1=$(now)
  echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}'
}
size() { # name: compressed layer size of the newest layout for name
  local d; d=$(ls -dt "$scratch/$1"-* | head -1)
  du -sb --apparent-size "$d/blobs" | awk '{printf "%.1f MiB", $1 / 1048576}'
}
printf '%-16s %10s %10s %12s\n' image cold_s warm_s layout_size
for spec in "kernel:kernel" "kernel-modules:kernel-modules" "minimal:rootfs --preset minimal" "cloud:rootfs --preset cloud"; do
  name=${spec%%:*}; args=${spec#*:}
  rm -rf "$cache"
  # shellcheck disable=SC2086
  cold=$(build "$name" $args)
  # shellcheck disable=SC2086
  warm=$(build "$name" $args)
  printf '%-16s %10s %10s %12s\n' "$name" "$cold" "$warm" "$(size "$name")"
done
