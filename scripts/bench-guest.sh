#!/usr/bin/env bash
# Guest benchmark: a real Debian 12 cloud-init guest (lmctl's cloud preset) created through the API,
# timed from `lmctl create` to cloud-init's final console message ("... finished at ...") and to the
# first successful ssh login (key from user-data, address allocated on the agent's own bridge).
# RUNS (default 3) guests one after another; the first one also pulls the images and builds their
# volume (cold), the others find them cached (warm). Release build. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
./scripts/install-deps.sh >&2
./scripts/test-env.sh start >&2
eval "$(./scripts/test-env.sh env)"
for p in flintlockd lmctl; do swift build -c release --static-swift-stdlib --scratch-path .build-release --product $p >&2; done
bin=.build-release/release
lmctl=$bin/lmctl
$lmctl image build kernel --tag "$LM_REGISTRY/lm-bench/kernel:latest" --push --cache-dir /tmp/lm-build-cache >&2
$lmctl image build rootfs --preset cloud --tag "$LM_REGISTRY/lm-bench/cloud:latest" --push --cache-dir /tmp/lm-build-cache >&2

state=$(mktemp -d /tmp/lm-bench-guest.XXXXXX)
api=127.0.0.1:19090
ssh-keygen -q -t ed25519 -N "" -f "$state/key"
$bin/flintlockd run --state-dir "$state/agent" --grpc-endpoint $api --containerd-socket "$LM_CONTAINERD_SOCKET" \
  --containerd-ns lmbench --bridge-name lmbench0 --bridge-cidr 10.91.0.1/24 >"$state/agent.log" 2>&1 &
agent=$!
cleanup() {
  for uid in $($lmctl list --host $api -o json 2>/dev/null | python3 -c 'import json,sys
d=json.load(sys.stdin); vms=d.get("microvm",[d]) if d else []
print(" ".join(v["spec"]["uid"] for v in vms if "spec" in v))' 2>/dev/null); do
    $lmctl delete --host $api --wait "$uid" >/dev/null 2>&1 || true
  done
  kill "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  # What the agent set up for its bridge outlives it (by design, for running guests): remove it here.
  nft delete table ip liquidmetal_lmbench0 2>/dev/null || true
  ip link del lmbench0 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 100); do $lmctl list --host $api >/dev/null 2>&1 && break; sleep 0.2; done

now() { date +%s.%N; }
ssh_ok() { ssh -i "$state/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
  -o ConnectTimeout=3 -o LogLevel=ERROR "lm@$1" true 2>/dev/null; }
printf '%-4s %-14s %22s %18s\n' run address create_to_cloudinit_s create_to_ssh_s
for i in $(seq "$runs"); do
  t0=$(now)
  uid=$($lmctl create --host $api -o json --name "bench-$i" --vcpu 2 --memory 768 \
    --kernel-image "$LM_REGISTRY/lm-bench/kernel:latest" --initrd-image "$LM_REGISTRY/lm-bench/kernel:latest" \
    --root-image "$LM_REGISTRY/lm-bench/cloud:latest" --tap eth0 --hostname "bench-$i" --ssh-key-file "$state/key.pub" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["uid"])')
  addr=$($lmctl get --host $api -o json "$uid" | python3 -c 'import json,sys
print(json.load(sys.stdin)["status"]["network_interfaces"]["eth0"]["address"].split("/")[0])')
  t1="" t2=""
  for _ in $(seq 1200); do
    if [ -z "$t1" ] && $lmctl logs --host $api "$uid" 2>/dev/null | grep -q " finished at "; then t1=$(now); fi
    if [ -n "$t1" ] && ssh_ok "$addr"; then t2=$(now); break; fi
    sleep 0.5
  done
  [ -n "$t2" ] || { echo "bench-guest: guest $i did not become reachable; agent log: $state/agent.log" >&2; exit 1; }
  printf '%-4s %-14s %22s %18s\n' "$i" "$addr" "$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")" "$(awk "BEGIN{printf \"%.1f\", $t2 - $t0}")"
  $lmctl delete --host $api --wait "$uid" >/dev/null
done
