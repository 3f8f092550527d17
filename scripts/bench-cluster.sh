#!/usr/bin/env bash
# Benchmark: a real Kubernetes cluster on microVMs under QEMU's TCG, end to end — scripts/e2e-cluster.sh's
# "nodes" flavor (the same binaries and variables: LM_K8S_BIN, LM_CAPI_BIN, LM_CAPI_SRC, LM_CNI_BIN, LM_ETCD),
# then its figures again at the end: apply → control-plane VM created, workload API answering, control-plane
# Machine Running, its node Ready, 2 nodes Ready; scale → 3 nodes Ready; per VM its QEMU's RSS and the
# guest's own times (boot → kubeadm, kubeadm itself, the preloaded images' import); capmvm's and the agents'
# RSS over the run. The full log goes to $LM_BENCH_LOG (default /var/tmp/bench-cluster.log). Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${LM_BENCH_LOG:-/var/tmp/bench-cluster.log}
LM_E2E_FLAVORS=nodes ./scripts/e2e-cluster.sh 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
echo
echo "== figures (from $log)"
sed -n '/== nodes: figures/,/== nodes: delete/p' "$log" | grep -v '== nodes: delete'
grep -E 'node image .* pushed in|delete → all gone' "$log"
exit "$rc"
