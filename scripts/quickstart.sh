#!/usr/bin/env bash
# Quickstart: from a fresh Debian 12 machine (root, Swift installed) to a running microVM.
#   ./scripts/quickstart.sh          install, build, start everything, boot a microVM
#   ./scripts/quickstart.sh --clean  delete the microVM and stop everything it started
# What it starts (all private, nothing system-wide is reconfigured):
#   containerd + a registry on 127.0.0.1:5111 (scripts/test-env.sh, state in /tmp/lm-test-env),
#   a bridge lmquick0 with 10.98.0.1/24, flintlockd on 127.0.0.1:9090 (state in /tmp/lm-quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
state=/tmp/lm-quickstart
bridge=lmquick0
lmctl=.build/debug/lmctl
say() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" = "--clean" ]; then
  if [ -x "$lmctl" ]; then
    for uid in $("$lmctl" list -o json 2>/dev/null | python3 -c 'import json,sys
d=json.load(sys.stdin); vms=d.get("microvm",[d]) if d else []
print(" ".join(v["spec"]["uid"] for v in vms if "spec" in v))' 2>/dev/null); do
      "$lmctl" delete --wait "$uid" || true
    done
  fi
  [ -f $state/flintlockd.pid ] && kill "$(cat $state/flintlockd.pid)" 2>/dev/null || true
  ./scripts/test-env.sh stop || true
  ip link del $bridge 2>/dev/null || true
  echo "cleaned up (images stay cached in /tmp/lm-test-env; downloaded packages in /var/cache/liquidmetal)"
  exit 0
fi

say "Installing Debian packages"
./scripts/install-deps.sh
say "Building flintlockd and lmctl (the first build takes several minutes)"
swift build
say "Starting a private containerd and a loopback registry"
./scripts/test-env.sh start
eval "$(./scripts/test-env.sh env)"
say "Building a kernel image (Debian 12 cloud kernel) and a minimal root image with lmctl image build, pushing them to $LM_REGISTRY"
"$lmctl" image build kernel --tag "$LM_REGISTRY/lm/kernel:latest" --push --cache-dir /var/cache/liquidmetal
"$lmctl" image build rootfs --preset minimal --tag "$LM_REGISTRY/lm/minimal:latest" --push
say "Creating bridge $bridge (10.98.0.1/24)"
if other=$(ip -o route show 10.98.0.0/24 | grep -v "dev $bridge " | awk '{print $3}' | head -1) && [ -n "$other" ]; then
  echo "quickstart: 10.98.0.0/24 is already routed through $other; remove that address first (ip addr flush dev $other)" >&2
  exit 1
fi
ip link show $bridge >/dev/null 2>&1 || ip link add $bridge type bridge
ip addr show dev $bridge | grep -q 10.98.0.1/24 || ip addr add 10.98.0.1/24 dev $bridge
ip link set $bridge up
say "Starting flintlockd (log: $state/flintlockd.log)"
mkdir -p $state
if [ -f $state/flintlockd.pid ] && kill -0 "$(cat $state/flintlockd.pid)" 2>/dev/null; then
  echo "already running"
else
  setsid .build/debug/flintlockd run --state-dir $state --containerd-socket "$LM_CONTAINERD_SOCKET" \
    --grpc-endpoint 127.0.0.1:9090 --bridge-name $bridge >>$state/flintlockd.log 2>&1 < /dev/null &
  echo $! > $state/flintlockd.pid
fi
for _ in $(seq 50); do "$lmctl" list >/dev/null 2>&1 && break; sleep 0.2; done
say "Creating a microVM: $lmctl create -f examples/microvm.yaml"
if "$lmctl" list --name hello | grep -q hello; then echo "hello exists already"; else "$lmctl" create -f examples/microvm.yaml; fi
uid=$("$lmctl" list --name hello -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["uid"])')
say "Waiting for the guest's console (lmctl logs $uid)"
for _ in $(seq 120); do
  "$lmctl" logs "$uid" 2>/dev/null | grep -q LIQUIDMETAL-NET-READY && break
  sleep 1
done
"$lmctl" logs "$uid" --tail 600
"$lmctl" list
say "Pinging the guest at 10.98.0.2 over the bridge"
ping -c 3 -W 2 10.98.0.2
cat <<MSG

The microVM is running. Try:
  $lmctl get $uid            # spec and status (YAML)
  $lmctl logs -f $uid        # follow the serial console
  $lmctl watch               # every change, live
  $lmctl delete --wait $uid  # delete it (QEMU, TAP, state and lease go)
Clean up everything: ./scripts/quickstart.sh --clean
MSG
