#!/usr/bin/env bash
# e2e-cluster.sh — capmvm under the real Cluster API, on a real (loopback) management cluster, and a
# real Kubernetes cluster whose nodes are microVMs.
#
# Starts, all on 127.0.0.1 and all under $LM_E2E_DIR (default /tmp/lm-e2e):
#   etcd and kube-apiserver (the management cluster; kube-controller-manager for garbage collection),
#   Cluster API's core, kubeadm bootstrap and kubeadm control-plane controllers as processes, their
#   conversion and admission webhooks served on loopback and wired into the CRDs and webhook
#   configurations by URL (as Cluster API's envtest does; no cert-manager),
#   our CRDs and RBAC, and capmvm with --leader-elect as the ServiceAccount the RBAC names,
#   containerd and a registry (scripts/test-env.sh), two flintlockd agents on bridges of their own,
#   a kernel and a cloud-init root image built with lmctl.
# Then, for each flavor:
#   static, topology (templates/cluster-template.yaml, then the ClusterClass one): clusterctl generate
#     cluster → kubectl apply → KubeadmControlPlane and MachineDeployment make Machines →
#     MicrovmMachines → microVMs created with the real kubeadm bootstrap data → checks: every Machine
#     Provisioned with capmvm's providerID and addresses, each VM's user-data is its bootstrap Secret's,
#     and cloud-init ran it in the guest (the cloud image has no kubeadm: its command shows on the console).
#   nodes (templates/cluster-template-airgapped.yaml): a real cluster. The node image is built with
#     lmctl from a pkgs.k8s.io-shaped repository of $LM_K8S_BIN's kubelet, kubeadm, kubectl and CNI
#     plugins (scripts/k8s-apt-repo.sh), with the control-plane, kube-proxy and pause images (built with
#     lmctl from the same binaries) preloaded: the guests reach no registry. 1 control plane on host 0
#     + 1 worker, placed over both hosts (MicrovmHosts) → the workload cluster's API answers on the
#     keepalived address → 2 nodes Ready, each with its Machine's providerID → the MachineDeployment
#     scaled to 2 → 3 nodes Ready → figures (times, RSS, memory per VM, guest and our parts).
#   Then the Cluster is deleted and every VM must be gone from every host, no finalizer left.
# Each stage is printed with its time. Exits 0 only when every check holds, 1 when one fails, and 2
# (saying what is missing) without the binaries.
#
# Needs (none of them installable from Debian 12; build them by hand, see docs/kubernetes-nodes.md):
#   LM_K8S_BIN   a directory with kube-apiserver, kube-controller-manager, kubectl, etcd; for the nodes
#                flavor also kubelet, kubeadm, kube-scheduler, kube-proxy, pause (a static build of
#                Kubernetes' build/pause/linux/pause.c) and an etcd of v3.6 or later (kubeadm v1.34+ run
#                it with flags v3.5 refuses; LM_ETCD names another binary for the node image than $LM_K8S_BIN/etcd)
#   LM_CAPI_BIN  a directory with capi-manager, capi-kubeadm-bootstrap, capi-kubeadm-control-plane, clusterctl
#   LM_CAPI_SRC  Cluster API's source tree (its CRDs and webhook manifests)
#   LM_CNI_BIN   (nodes) CNI plugins (bridge, host-local, portmap, loopback...), version LM_CNI_VERSION (1.9.1)
# Optional: LM_E2E_DIR, LM_E2E_KEEP=1 (leave everything running at the end), LM_E2E_FLAVORS
#   ("static topology nodes", the default, or some of them), KUBERNETES_VERSION (v1.36.2),
#   LM_E2E_SCALE_TIMEOUT (2400: seconds for the third node to be Ready after the scale).
# Runs as root (containerd, TAP devices, bridges).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

FLAVORS=${LM_E2E_FLAVORS:-static topology nodes}
missing=()
k8s_bins="kube-apiserver kube-controller-manager kubectl etcd"
case " $FLAVORS " in *" nodes "*) k8s_bins="$k8s_bins kubelet kubeadm kube-scheduler kube-proxy pause" ;; esac
for b in $k8s_bins; do [ -x "${LM_K8S_BIN:-/nonexistent}/$b" ] || missing+=("\$LM_K8S_BIN/$b"); done
for b in capi-manager capi-kubeadm-bootstrap capi-kubeadm-control-plane clusterctl; do [ -x "${LM_CAPI_BIN:-/nonexistent}/$b" ] || missing+=("\$LM_CAPI_BIN/$b"); done
[ -d "${LM_CAPI_SRC:-/nonexistent}/config/crd/bases" ] || missing+=("\$LM_CAPI_SRC (Cluster API's source tree, with config/crd/bases)")
case " $FLAVORS " in *" nodes "*)
  for b in bridge host-local portmap loopback; do [ -x "${LM_CNI_BIN:-/nonexistent}/$b" ] || missing+=("\$LM_CNI_BIN/$b"); done
  etcd_version=$("${LM_ETCD:-${LM_K8S_BIN:-/nonexistent}/etcd}" --version 2>/dev/null | sed -n 's/^etcd Version: //p')
  case $etcd_version in 3.[6-9]*|[4-9]*) ;; *) missing+=("an etcd v3.6+ for the node image (\$LM_ETCD or \$LM_K8S_BIN/etcd is '${etcd_version:-not there}')") ;; esac ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e-cluster.sh: missing: ${missing[*]}" >&2
  echo "  LM_K8S_BIN: kube-apiserver, kube-controller-manager, kubectl, etcd (nodes: also kubelet, kubeadm," >&2
  echo "  kube-scheduler, kube-proxy, pause, etcd v3.6+); LM_CAPI_BIN: capi-manager, capi-kubeadm-bootstrap," >&2
  echo "  capi-kubeadm-control-plane, clusterctl; LM_CAPI_SRC: Cluster API's tree; LM_CNI_BIN (nodes): CNI plugins." >&2
  echo "  docs/kubernetes-nodes.md says how they were built for this project's runs." >&2
  exit 2
fi
[ "$(id -u)" = 0 ] || { echo "e2e-cluster.sh: run as root" >&2; exit 2; }
for t in openssl python3 curl ip; do command -v $t >/dev/null || { echo "e2e-cluster.sh: needs $t (./scripts/install-deps.sh)" >&2; exit 2; }; done
python3 -c 'import yaml' 2>/dev/null || { echo "e2e-cluster.sh: needs python3-yaml (./scripts/install-deps.sh)" >&2; exit 2; }

K=$LM_K8S_BIN C=$LM_CAPI_BIN S=$LM_CAPI_SRC
W=${LM_E2E_DIR:-/tmp/lm-e2e}
KVER=${KUBERNETES_VERSION:-v1.36.2}
start=$(date +%s)
stage() { printf '\n[%4ss] == %s\n' "$(( $(date +%s) - start ))" "$*"; }
info() { printf '[%4ss]    %s\n' "$(( $(date +%s) - start ))" "$*"; }
failures=0
check() {  # check "what" command...
  local what=$1; shift
  if "$@"; then info "ok: $what"; else info "FAILED: $what"; failures=$((failures + 1)); fi
}
# wait_for SECONDS "what" command...: polls every 2 s.
wait_for() {
  local limit=$1 what=$2; shift 2
  local until=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -lt "$until" ]; do "$@" >/dev/null 2>&1 && { info "$what ($(( $(date +%s) - start ))s)"; return 0; }; sleep 2; done
  info "TIMED OUT after ${limit}s: $what"; return 1
}

# Ports (loopback only).
ETCD=23790 ETCDPEER=23800 API=26443 CORE_WH=29443 BOOT_WH=29444 CP_WH=29445 AGENT0=29090 AGENT1=29091

pids=()
spawn() {  # spawn NAME command...: runs in its own session, log in $W/NAME.log
  local name=$1; shift
  setsid "$@" >"$W/$name.log" 2>&1 < /dev/null &
  disown $!  # stopped by cleanup; no job notices
  pids+=($!)
  echo $! > "$W/$name.pid"
}
lmctl=""
started_test_env=0
# The uids of an agent's VMs (lmctl list -o json prints one VM as an object, several as {"microvm": [...]}).
vm_uids() {
  "$lmctl" list --host "$1" -o json 2>/dev/null | python3 -c 'import json,sys
t=sys.stdin.read().strip() or "{}"; d=json.loads(t)
for vm in (d.get("microvm", []) if "microvm" in d or "spec" not in d else [d]): print(vm["spec"]["uid"])' 2>/dev/null || true
}
vms_total() { local n=0; for port in $AGENT0 $AGENT1; do n=$((n + $(vm_uids 127.0.0.1:$port | grep -c . || true))); done; echo $n; }
cleanup() {
  local rc=$?
  if [ "${LM_E2E_KEEP:-}" = 1 ]; then echo "LM_E2E_KEEP=1: everything keeps running (pids in $W/*.pid)"; exit $rc; fi
  stage "stopping"
  if [ -n "$lmctl" ]; then  # VMs through their agents, so that TAP devices and leases go too
    for port in $AGENT0 $AGENT1; do
      for uid in $(vm_uids 127.0.0.1:$port); do timeout 60 "$lmctl" delete --host 127.0.0.1:$port --wait "$uid" >/dev/null 2>&1 || true; done
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # VMMs run in their own sessions: anything left of the agents' VMs goes too.
  pkill -9 -f "$W/agent" 2>/dev/null || true
  for b in lme2e0 lme2e1; do ip link del $b 2>/dev/null || true; done
  # containerd and the registries stay if they ran before; started here, they stop here.
  [ "$started_test_env" = 1 ] && "$repo/scripts/test-env.sh" stop >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

stage "setting up $W"
for p in "$W"/*.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
pkill -9 -f "$W/agent" 2>/dev/null || true
rm -rf "$W"; mkdir -p "$W/certs" "$W/crds" "$W/home"
export HOME=$W/home XDG_CONFIG_HOME=$W/home/.config
# clusterctl asks GitHub for a newer release unless told not to (these machines reach no GitHub).
export CLUSTERCTL_DISABLE_VERSIONCHECK=true

stage "building flintlockd, capmvm and lmctl"
swift build --product flintlockd >/dev/null && swift build --product capmvm >/dev/null && swift build --product lmctl >/dev/null
bin=$(swift build --show-bin-path)
lmctl=$bin/lmctl

stage "certificates (one CA for the API server and the webhooks; serving certificates for 127.0.0.1)"
cd "$W/certs"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=lm-e2e-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 2 -extfile san.ext 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
cd "$repo"
CA_B64=$(base64 -w0 < "$W/certs/ca.crt")
ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
CAPMVM_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
{
  echo "$ADMIN_TOKEN,admin,uid-admin,system:masters"
  # capmvm authenticates as the ServiceAccount its RBAC (config/rbac/role.yaml) binds.
  echo "$CAPMVM_TOKEN,system:serviceaccount:capmvm-system:capmvm-manager,uid-capmvm,\"system:serviceaccounts,system:serviceaccounts:capmvm-system,system:authenticated\""
} > "$W/tokens.csv"
kubeconfig() {  # kubeconfig FILE TOKEN
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
current-context: e2e
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:$API", certificate-authority-data: "$CA_B64"}}]
users: [{name: e2e, user: {token: "$2"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: e2e, namespace: default}}]
EOF
}
kubeconfig "$W/admin.kubeconfig" "$ADMIN_TOKEN"
kubeconfig "$W/capmvm.kubeconfig" "$CAPMVM_TOKEN"
export KUBECONFIG=$W/admin.kubeconfig
kubectl() { "$K/kubectl" "$@"; }

stage "etcd and kube-apiserver $("$K/kube-apiserver" --version 2>/dev/null) on 127.0.0.1:$API"
spawn etcd "$K/etcd" --name e2e --data-dir "$W/etcd" --listen-client-urls http://127.0.0.1:$ETCD --advertise-client-urls http://127.0.0.1:$ETCD \
  --listen-peer-urls http://127.0.0.1:$ETCDPEER --initial-advertise-peer-urls http://127.0.0.1:$ETCDPEER --initial-cluster e2e=http://127.0.0.1:$ETCDPEER
spawn kube-apiserver "$K/kube-apiserver" --etcd-servers=http://127.0.0.1:$ETCD --bind-address=127.0.0.1 --secure-port=$API \
  --tls-cert-file="$W/certs/tls.crt" --tls-private-key-file="$W/certs/tls.key" --client-ca-file="$W/certs/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$W/certs/sa.pub" \
  --service-account-signing-key-file="$W/certs/sa.key" --token-auth-file="$W/tokens.csv" --authorization-mode=RBAC \
  --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none --advertise-address=127.0.0.1
wait_for 120 "kube-apiserver ready" kubectl get --raw /readyz || { tail -20 "$W/kube-apiserver.log"; exit 1; }
spawn kube-controller-manager "$K/kube-controller-manager" --kubeconfig="$W/admin.kubeconfig" --controllers='*' \
  --use-service-account-credentials=false --leader-elect=false --service-account-private-key-file="$W/certs/sa.key" \
  --root-ca-file="$W/certs/ca.crt" --bind-address=127.0.0.1 --secure-port=0

stage "Cluster API's CRDs (conversion by URL) and webhook configurations (by URL)"
# $W/crds/capi.yaml: every CRD of core, kubeadm bootstrap and control plane, each served in more
# than one version converting through its controller's webhook; the webhook configurations with
# url clientConfigs. The same wiring Cluster API's envtest does.
python3 - "$S" "$W/crds/capi.yaml" "$CA_B64" $CORE_WH $BOOT_WH $CP_WH <<'PY'
import glob, sys, yaml
src, out, ca, core, boot, cp = sys.argv[1:7]
providers = [("capi-", "", core), ("capi-kubeadm-bootstrap-", "bootstrap/kubeadm/", boot), ("capi-kubeadm-control-plane-", "controlplane/kubeadm/", cp)]
docs = []
for prefix, d, port in providers:
    base = f"https://127.0.0.1:{port}"
    # The labels kustomize would add: the contract labels (config/crd) and the provider's (config/default).
    labels = {}
    for k in (f"{src}/{d}config/default/kustomization.yaml", f"{src}/{d}config/crd/kustomization.yaml"):
        try:
            for entry in (yaml.safe_load(open(k)) or {}).get("labels", []):
                labels.update(entry.get("pairs", {}))
        except FileNotFoundError:
            pass
    for f in sorted(glob.glob(f"{src}/{d}config/crd/bases/*.yaml")):
        for crd in yaml.safe_load_all(open(f)):
            if not crd: continue
            crd["metadata"].setdefault("labels", {}).update(labels)
            if len(crd["spec"]["versions"]) > 1:
                crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1", "v1beta1"],
                                             "clientConfig": {"url": base + "/convert", "caBundle": ca}}}
            docs.append(crd)
    for w in yaml.safe_load_all(open(f"{src}/{d}config/webhook/manifests.yaml")):
        if not w: continue
        w["metadata"]["name"] = prefix + w["metadata"]["name"]
        for hook in w.get("webhooks", []):
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base + path, "caBundle": ca}
        docs.append(w)
yaml.safe_dump_all(docs, open(out, "w"), sort_keys=False)
print(f"{sum(1 for d in docs if d['kind'] == 'CustomResourceDefinition')} CRDs, {sum(1 for d in docs if d['kind'] != 'CustomResourceDefinition')} webhook configurations")
PY
kubectl apply --server-side --force-conflicts -f "$W/crds/capi.yaml" >/dev/null
info "applied"

stage "Cluster API $("$C/clusterctl" version -o short 2>/dev/null) controllers, webhooks on 127.0.0.1:$CORE_WH/$BOOT_WH/$CP_WH"
mkdir -p "$W/certs/webhook" && cp "$W/certs/tls.crt" "$W/certs/tls.key" "$W/certs/webhook/"
gates="ClusterTopology=true"
common=(--kubeconfig="$W/admin.kubeconfig" --webhook-cert-dir="$W/certs/webhook" --leader-elect=false --insecure-diagnostics)
spawn capi-manager "$C/capi-manager" "${common[@]}" --webhook-port=$CORE_WH --health-addr=127.0.0.1:29440 --diagnostics-address=127.0.0.1:29480 --feature-gates=$gates
spawn capi-kubeadm-bootstrap "$C/capi-kubeadm-bootstrap" "${common[@]}" --webhook-port=$BOOT_WH --health-addr=127.0.0.1:29441 --diagnostics-address=127.0.0.1:29481 --feature-gates=$gates
spawn capi-kubeadm-control-plane "$C/capi-kubeadm-control-plane" "${common[@]}" --webhook-port=$CP_WH --health-addr=127.0.0.1:29442 --diagnostics-address=127.0.0.1:29482 --feature-gates=$gates
for p in 29440 29441 29442; do wait_for 180 "controller on :$p ready" curl -sf http://127.0.0.1:$p/readyz || { tail -30 "$W"/capi-*.log; exit 1; }; done

stage "our CRDs and RBAC; capmvm (--leader-elect, as ServiceAccount capmvm-system/capmvm-manager)"
kubectl apply --server-side -f config/crd/bases/ >/dev/null
kubectl create namespace capmvm-system >/dev/null
kubectl apply -f config/rbac/role.yaml >/dev/null
spawn capmvm "$bin/capmvm" --kubeconfig "$W/capmvm.kubeconfig" --leader-elect --health-addr 127.0.0.1:29450 --metrics-bind-addr 127.0.0.1:29451 \
  --host-probe-interval 5
wait_for 60 "capmvm ready" curl -sf http://127.0.0.1:29450/readyz || { tail -30 "$W/capmvm.log"; exit 1; }
check "capmvm holds its Lease (MicroTime accepted by kube-apiserver)" \
  sh -c "\"$K/kubectl\" -n capmvm-system get lease capmvm-leader-election -o jsonpath='{.spec.holderIdentity} {.spec.renewTime}' | grep -E '^[^ ]+ [0-9T:-]+\.[0-9]{6}Z$'"
grep -q "serving Cluster API's v1beta2 contract" "$W/capmvm.log" && info "capmvm serves the v1beta2 contract" || info "capmvm log: $(grep -m1 contract "$W/capmvm.log" || true)"

stage "containerd, registry, two flintlockd agents"
./scripts/test-env.sh status >/dev/null 2>&1 || started_test_env=1
./scripts/test-env.sh start >/dev/null
eval "$(./scripts/test-env.sh env)"
for i in 0 1; do
  port=$((AGENT0 + i))
  mkdir -p "$W/agent$i"
  spawn agent$i "$bin/flintlockd" run --state-dir "$W/agent$i" --grpc-endpoint 127.0.0.1:$port --containerd-socket "$LM_CONTAINERD_SOCKET" \
    --containerd-ns lme2e --bridge-name lme2e$i --bridge-cidr 10.99.$((70 + i)).1/24 --bridge-nameservers 10.99.$((70 + i)).1
done
for port in $AGENT0 $AGENT1; do wait_for 60 "agent 127.0.0.1:$port answers" "$lmctl" list --host 127.0.0.1:$port; done

stage "images: kernel and cloud-init root (lmctl image build)"
"$lmctl" image build kernel --tag "$LM_REGISTRY/lm-e2e/kernel:latest" --push --cache-dir /var/cache/liquidmetal > "$W/image-kernel.log" 2>&1
"$lmctl" image build rootfs --preset cloud --tag "$LM_REGISTRY/lm-e2e/cloud:latest" --push --cache-dir /var/cache/liquidmetal > "$W/image-root.log" 2>&1
info "pushed $LM_REGISTRY/lm-e2e/kernel:latest and $LM_REGISTRY/lm-e2e/cloud:latest"

export CONTROL_PLANE_VIP=10.99.70.250 KUBERNETES_VERSION=$KVER MVM_ROOT_IMAGE=$LM_REGISTRY/lm-e2e/cloud:latest MVM_KERNEL_IMAGE=$LM_REGISTRY/lm-e2e/kernel:latest
export CONTROL_PLANE_MACHINE_COUNT=1 WORKER_MACHINE_COUNT=1 CONTROL_PLANE_MEMORY_MB=1024 WORKER_MEMORY_MB=1024 CONTROL_PLANE_VCPU=1 WORKER_VCPU=1
export MVM_HOST_POOL=e2e

# The checks of one cluster: every Machine Provisioned with its VM, whose user-data is its bootstrap
# Secret's and which cloud-init ran.
verify_cluster() {
  local cluster=$1 want=$2
  python3 - "$cluster" "$want" "$lmctl" "$K/kubectl" $AGENT0 $AGENT1 <<'PY'
import base64, json, subprocess, sys, time
cluster, want, lmctl, kubectl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
agents = [f"127.0.0.1:{p}" for p in sys.argv[5:]]
def k(*a): return json.loads(subprocess.check_output([kubectl, *a, "-o", "json"]))
machines = [m for m in k("get", "machines", "-l", f"cluster.x-k8s.io/cluster-name={cluster}")["items"]]
ok = len(machines) == want
print(f"       {len(machines)} Machines (want {want})")
vms = {}
for a in agents:
    d = json.loads(subprocess.run([lmctl, "list", "--host", a, "-o", "json"], capture_output=True, text=True).stdout.strip() or "{}")
    for vm in (d.get("microvm", []) if "microvm" in d or "spec" not in d else [d]):
        vms[vm["spec"]["uid"]] = (a, vm)
mvms = {x["metadata"]["name"]: x for x in k("get", "microvmmachines", "-l", f"cluster.x-k8s.io/cluster-name={cluster}")["items"]}
for m in machines:
    name, st, spec = m["metadata"]["name"], m.get("status", {}), m["spec"]
    cp = "cluster.x-k8s.io/control-plane" in m["metadata"].get("labels", {})
    secret = spec.get("bootstrap", {}).get("dataSecretName")
    infra = mvms.get(spec.get("infrastructureRef", {}).get("name", ""), {})
    reason = next((c.get("reason") for c in infra.get("status", {}).get("conditions", []) if c["type"] == "MicrovmReady"), None)
    role = "control plane" if cp else "worker"
    if not secret:
        # Cluster API's kubeadm bootstrap provider makes a join configuration only once the control
        # plane is initialized (kubeadm init ran in its VM): until then the machine waits, and so does capmvm.
        good = not cp and reason == "WaitingForBoostrapData" and not spec.get("providerID")
        print(("ok  " if good else "BAD ") + f"{name} ({role}): phase {st.get('phase')}, no bootstrap data yet (it waits for the control plane to initialize); MicrovmReady reason {reason}, no VM")
        ok = ok and good
        continue
    pid = spec.get("providerID", "")
    prov = st.get("initialization", {}).get("infrastructureProvisioned")
    addrs = [x["address"] for x in st.get("addresses", [])]
    uid = pid.rsplit("/", 1)[-1]
    host = pid[len("microvm://"):].rsplit("/", 1)[0] if pid.startswith("microvm://") else ""
    line = f"{name} ({role}): phase {st.get('phase')}, infrastructure provisioned {prov}, providerID {pid}, addresses {addrs}"
    good = st.get("phase") in ("Provisioned", "Running") and prov is True and uid in vms and vms[uid][0] == host and bool(addrs)
    if uid in vms:
        vm = vms[uid][1]
        value = base64.b64decode(k("get", "secret", secret)["data"]["value"])
        userdata = base64.b64decode(vm["spec"].get("metadata", {}).get("user-data", ""))
        same = value == userdata
        console = subprocess.run([lmctl, "logs", "--host", host, uid], capture_output=True, text=True).stdout
        ran = [l.strip() for l in console.splitlines() if "kubeadm" in l and "cloud-init" in l]
        line += f"\n         VM {uid} on {host}: state {vm.get('status', {}).get('state')}, its user-data is bootstrap Secret {secret}'s: {same}, cloud-init ran it: {ran[0][:160] if ran else 'not yet'}"
        good = good and same and bool(ran)
    print(("ok  " if good else "BAD ") + line)
    ok = ok and good
sys.exit(0 if ok else 1)
PY
}
cloud_init_ran() { verify_cluster "$@" >/dev/null 2>&1; }
no_vms_left() { [ "$(vms_total)" = 0 ]; }

# ---- flavor "nodes": a real cluster whose nodes are microVMs ----
# Samples the RSS of capmvm and the agents every 5 s (lines "NAME KiB" in $W/rss.samples).
sample_rss() {
  while :; do
    for n in capmvm agent0 agent1; do
      r=$(ps -o rss= -p "$(cat "$W/$n.pid")" 2>/dev/null | tr -d ' ')
      [ -n "$r" ] && echo "$n $r"
    done >> "$W/rss.samples"
    sleep 5
  done
}
wl() { "$K/kubectl" --kubeconfig "$W/$1.kubeconfig" --request-timeout=20s "${@:2}"; }  # wl CLUSTER kubectl-args...
nodes_ready() {  # nodes_ready CLUSTER N: at least N nodes Ready
  local n
  n=$(wl "$1" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$' || true)
  [ "$n" -ge "$2" ]
}
# Every Machine of the cluster Running, its node Ready with the Machine's spec.providerID; as many nodes as Machines.
verify_nodes() {
  python3 - "$1" "$2" "$K/kubectl" "$W/$1.kubeconfig" <<'PY'
import json, subprocess, sys
cluster, want, kubectl, wlconfig = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def k(*a, kubeconfig=None):
    extra = ["--kubeconfig", kubeconfig] if kubeconfig else []
    return json.loads(subprocess.check_output([kubectl, *extra, *a, "-o", "json"]))
machines = k("get", "machines", "-l", f"cluster.x-k8s.io/cluster-name={cluster}")["items"]
nodes = {n["metadata"]["name"]: n for n in k("get", "nodes", kubeconfig=wlconfig)["items"]}
ok = len(machines) == want and len(nodes) == want
print(f"       {len(machines)} Machines, {len(nodes)} nodes (want {want})")
for m in machines:
    name, pid = m["metadata"]["name"], m["spec"].get("providerID", "")
    ref = m.get("status", {}).get("nodeRef", {}).get("name", "")
    node = nodes.get(ref)
    ready = bool(node) and any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    npid = node["spec"].get("providerID", "") if node else ""
    ip = [a["address"] for a in node["status"].get("addresses", []) if a["type"] == "InternalIP"] if node else []
    role = "control plane" if "cluster.x-k8s.io/control-plane" in m["metadata"].get("labels", {}) else "worker"
    good = ready and npid == pid and pid.startswith("microvm://") and m.get("status", {}).get("phase") == "Running"
    print(("ok  " if good else "BAD ") + f"{name} ({role}): phase {m.get('status', {}).get('phase')}, node {ref or '-'} Ready {ready}, "
          f"node providerID {npid or '-'} {'==' if npid == pid else '!='} Machine's {pid or '-'}, InternalIP {ip}")
    ok = ok and good
sys.exit(0 if ok else 1)
PY
}
# What the guest's console says: when cloud-init's final stage (kubeadm) started and ended, the image import.
guest_times() {  # guest_times HOST UID
  "$lmctl" logs --host "$1" "$2" 2>/dev/null | python3 -c '
import re, sys
t = sys.stdin.read()
final = re.search(r"running .modules:final. at .*? Up ([0-9.]+) seconds", t)
done = re.search(r"Cloud-init v\. \S+ finished at .*? Up ([0-9.]+) seconds", t)
pre = re.search(r"lm-preload-images: (\d+) images imported in (\d+) s", t)
imported = f"{pre.group(1)} images imported in {pre.group(2)}s" if pre else "no image import seen"
if final and done:
    print(f"boot → kubeadm starts {float(final.group(1)):.0f}s ({imported}); kubeadm and the rest of cloud-init {float(done.group(1)) - float(final.group(1)):.0f}s")
else:
    print("cloud-init has not finished (console)")'
}
vm_of_machine() {  # "HOST UID" of a Machine's VM
  "$K/kubectl" get machine "$1" -o jsonpath='{.spec.providerID}' | sed -n 's#^microvm://\(.*\)/\([^/]*\)$#\1 \2#p'
}
qemu_rss_mib() {  # the RSS of the QEMU of VM UID
  local pid; pid=$(pgrep -f "qemu-system.*$1" | head -1)
  if [ -n "$pid" ]; then ps -o rss= -p "$pid" | awk '{printf "%.0f", $1/1024}'; else echo "?"; fi
}
qemu_cpu() {  # "CPU s over its life (share of one core)" of the QEMU of VM UID
  local pid; pid=$(pgrep -f "qemu-system.*$1" | head -1)
  [ -n "$pid" ] || { echo "?"; return; }
  awk -v hz="$(getconf CLK_TCK)" -v up="$(cut -d' ' -f1 /proc/uptime)" '{ cpu = ($14 + $15) / hz; life = up - $22 / hz;
    printf "%.0f CPU s in %.0f s (%.0f%% of a core)", cpu, life, 100 * cpu / life }' "/proc/$pid/stat"
}
save_consoles() {  # every VM's console, into $W/console-PORT-UID.log
  local port uid
  for port in $AGENT0 $AGENT1; do
    for uid in $(vm_uids 127.0.0.1:$port); do "$lmctl" logs --host 127.0.0.1:$port "$uid" > "$W/console-$port-$uid.log" 2>&1 || true; done
  done
}

run_nodes_flavor() {
  local name=e2e-nodes
  stage "nodes: Kubernetes $KVER packages and images from \$LM_K8S_BIN (the guests reach no registry)"
  local cni_version=${LM_CNI_VERSION:-1.9.1} etcd_bin=${LM_ETCD:-$K/etcd}
  ./scripts/k8s-apt-repo.sh --bin "$K" --cni "$LM_CNI_BIN" --cni-version "$cni_version" --version "$KVER" --out "$W/k8s-repo" > "$W/k8s-repo.log" 2>&1 \
    || { tail -5 "$W/k8s-repo.log"; return 1; }
  spawn k8s-repo python3 -m http.server --bind 127.0.0.1 --directory "$W/k8s-repo/repo" 28123
  wait_for 30 "package repository on 127.0.0.1:28123" curl -sf http://127.0.0.1:28123/Release || return 1
  # The image names kubeadm asks for, from kubeadm itself.
  local images ref base tag preload=()
  images=$("$K/kubeadm" config images list --kubernetes-version "$KVER" 2>/dev/null)
  mkdir -p "$W/images"
  for ref in $images; do
    base=${ref%:*}; base=${base##*/}; tag=${ref##*:}
    case $base in
      kube-apiserver|kube-controller-manager|kube-scheduler)
        "$lmctl" image build app --binary "$K/$base" --path /usr/local/bin/$base --user 0:0 --tag "$ref" --output "oci-layout:$W/images/$base" > "$W/image-$base.log" 2>&1 ;;
      etcd)
        # Named with the tag kubeadm asks for; the binary is $etcd_bin ($etcd_version).
        "$lmctl" image build app --binary "$etcd_bin" --path /usr/local/bin/etcd --user 0:0 --tag "$ref" --output "oci-layout:$W/images/$base" > "$W/image-$base.log" 2>&1 ;;
      pause)
        "$lmctl" image build app --binary "$K/pause" --path /pause --user 65535:65535 --tag "$ref" --output "oci-layout:$W/images/$base" > "$W/image-$base.log" 2>&1 ;;
      kube-proxy)
        # kube-proxy runs iptables in its container: a Debian image with iptables and the binary.
        printf '%s\n' "title: kube-proxy $KVER" "packages: [iptables, conntrack, kmod]" \
          "files:" "- {path: /usr/local/bin/kube-proxy, source: \"$K/kube-proxy\", mode: \"0755\"}" > "$W/kube-proxy-recipe.yaml"
        "$lmctl" image build rootfs --recipe "$W/kube-proxy-recipe.yaml" --tag "$ref" --output "oci-layout:$W/images/$base" --cache-dir /var/cache/liquidmetal > "$W/image-$base.log" 2>&1 ;;
      *) info "not built (no binary for it here): $ref"; continue ;;
    esac || { tail -5 "$W/image-$base.log"; return 1; }
    preload+=(--preload-image "$ref=$W/images/$base:$tag")
  done
  info "built $(( ${#preload[@]} / 2 )) images to preload: $(ls "$W/images" | tr '\n' ' ')"
  local t_img; t_img=$(date +%s)
  # A tag of this run's own: an agent uses the image containerd already has under a tag (as Flintlock does),
  # so a tag pushed again by an earlier run would not be pulled again.
  local node_image=$LM_REGISTRY/lm-e2e/k8s-node:$KVER-$t_img
  "$lmctl" image build rootfs --preset k8s-node --package-source "deb http://127.0.0.1:28123/ /" --package-source-key "$W/k8s-repo/Release.key" \
    "${preload[@]}" --tag "$node_image" --push --cache-dir /var/cache/liquidmetal > "$W/image-k8s-node.log" 2>&1 \
    || { tail -20 "$W/image-k8s-node.log"; return 1; }
  info "node image $node_image pushed in $(( $(date +%s) - t_img ))s: $(grep -m1 -o 'preloaded [0-9]* container images ([0-9]* MiB)' "$W/image-k8s-node.log" || true)"

  stage "nodes: MicrovmHosts of pool e2e-nodes (control planes only on host 0, whose bridge holds the control plane's address)"
  kubectl delete microvmhosts --all >/dev/null 2>&1 || true
  local i
  for i in 0 1; do
    kubectl apply -f - >/dev/null <<EOF
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: MicrovmHost
metadata: {name: e2e-nodes-host-$i, namespace: default, labels: {liquidmetal.io/pool: e2e-nodes}}
spec: {endpoint: "127.0.0.1:$((AGENT0 + i))", failureDomain: "fd-$i", controlplaneAllowed: $([ $i = 0 ] && echo true || echo false)}
EOF
  done
  # One control plane: no leader election (under TCG the controller manager's start starves its lease renewals).
  CONTROL_PLANE_VIP=10.99.70.250 MVM_HOST_POOL=e2e-nodes MVM_ROOT_IMAGE=$node_image CONTROL_PLANE_LEADER_ELECT=false \
    CONTROL_PLANE_VCPU=2 WORKER_VCPU=2 CONTROL_PLANE_MEMORY_MB=2048 WORKER_MEMORY_MB=2048 \
    "$C/clusterctl" generate cluster $name --from templates/cluster-template-airgapped.yaml --kubeconfig "$W/admin.kubeconfig" > "$W/$name.yaml"
  info "clusterctl generate cluster $name --from templates/cluster-template-airgapped.yaml: 1 control plane + 1 worker, 2 vCPUs and 2048 MiB each"
  sample_rss &
  local sampler=$!
  pids+=($sampler)
  local t0; t0=$(date +%s)
  kubectl apply -f "$W/$name.yaml" | sed 's/^/         /'
  local cpsel="cluster.x-k8s.io/cluster-name=$name,cluster.x-k8s.io/control-plane"
  wait_for 600 "the control-plane Machine has its VM" sh -c "\"$K/kubectl\" get machines -l $cpsel -o jsonpath='{.items[*].spec.providerID}' | grep -q microvm://" || return 1
  local t_vm=$(( $(date +%s) - t0 ))
  wait_for 1500 "the workload cluster's kubeconfig Secret" sh -c "\"$K/kubectl\" get secret $name-kubeconfig -o jsonpath='{.data.value}' | base64 -d > \"$W/$name.kubeconfig\" && [ -s \"$W/$name.kubeconfig\" ]" || return 1
  wait_for 1500 "the workload cluster's API answers on https://10.99.70.250:6443" wl $name get --raw /readyz || return 1
  local t_api=$(( $(date +%s) - t0 ))
  wait_for 900 "the control-plane Machine Running (its node registered)" sh -c "\"$K/kubectl\" get machines -l $cpsel -o jsonpath='{.items[*].status.phase}' | grep -q Running" || return 1
  local t_cprun=$(( $(date +%s) - t0 ))
  wait_for 900 "the control plane's node Ready" nodes_ready $name 1 || return 1
  local t_cpready=$(( $(date +%s) - t0 ))
  wait_for 1500 "2 nodes Ready" nodes_ready $name 2 || failures=$((failures + 1))
  local t_all2=$(( $(date +%s) - t0 ))
  check "$name: 2 nodes Ready, each with its Machine's providerID" verify_nodes $name 2
  wl $name get nodes -o wide 2>&1 | sed 's/^/         /'

  stage "nodes: scale the MachineDeployment to 2"
  local t1; t1=$(date +%s)
  kubectl scale machinedeployment $name-md-0 --replicas=2 >/dev/null
  wait_for "${LM_E2E_SCALE_TIMEOUT:-2400}" "3 nodes Ready" nodes_ready $name 3 || failures=$((failures + 1))
  local t_scale=$(( $(date +%s) - t1 ))
  check "$name: 3 nodes Ready, each with its Machine's providerID" verify_nodes $name 3
  wl $name get nodes -o wide 2>&1 | sed 's/^/         /'
  wl $name get pods -A -o wide 2>&1 | sed 's/^/         /'
  kubectl get cluster,machines -l cluster.x-k8s.io/cluster-name=$name 2>&1 | sed 's/^/         /'

  stage "nodes: figures (QEMU TCG on this machine's $(nproc) cores)"
  info "apply → control-plane VM created (Cluster API, capmvm, agent: image pull, volumes, VMM start): ${t_vm}s"
  info "apply → workload API answers: ${t_api}s; → control-plane Machine Running: ${t_cprun}s; → its node Ready: ${t_cpready}s; → 2 nodes Ready: ${t_all2}s"
  info "scale to 2 workers → 3 nodes Ready: ${t_scale}s"
  local m host uid
  for m in $("$K/kubectl" get machines -l cluster.x-k8s.io/cluster-name=$name -o jsonpath='{.items[*].metadata.name}'); do
    read -r host uid <<< "$(vm_of_machine "$m")"
    info "$m on $host: QEMU RSS $(qemu_rss_mib "$uid") MiB (guest 2048 MiB), $(qemu_cpu "$uid"); $(guest_times "$host" "$uid")"
  done
  info "host load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
  save_consoles
  info "the VMs' consoles: $W/console-*.log"
  kill $sampler 2>/dev/null || true
  local n
  for n in capmvm agent0 agent1; do
    info "$n RSS during the run: $(awk -v n=$n '$1 == n { if (!min || $2 < min) min = $2; if ($2 > max) max = $2; c++ } END { if (c) printf "min %.1f, max %.1f MiB (%d samples)", min/1024, max/1024, c }' "$W/rss.samples")"
  done

  stage "nodes: delete the Cluster"
  t1=$(date +%s)
  kubectl delete cluster $name --wait=false >/dev/null
  wait_for 600 "the Cluster is gone" sh -c "! \"$K/kubectl\" get cluster $name" || failures=$((failures + 1))
  wait_for 120 "every VM gone from the hosts" no_vms_left || true
  check "$name: no VM left on either host" no_vms_left
  check "$name: no Machine, MicrovmMachine, KubeadmConfig, KubeadmControlPlane or MicrovmCluster left (no finalizer holds one)" \
    sh -c "[ -z \"\$(\"$K/kubectl\" get machines,microvmmachines,kubeadmconfigs,kubeadmcontrolplanes,microvmclusters -l cluster.x-k8s.io/cluster-name=$name -o name 2>&1)\" ] && ! \"$K/kubectl\" get microvmcluster $name >/dev/null 2>&1"
  info "delete → all gone: $(( $(date +%s) - t1 ))s; VMs on the hosts: $(vms_total)"
}

for flavor in $FLAVORS; do
  case $flavor in
    nodes) run_nodes_flavor || { save_consoles; info "FAILED: the nodes flavor stopped (logs and the VMs' consoles in $W)"; failures=$((failures + 1)); }; continue ;;
    static)
      name=e2e-static
      stage "flavor cluster-template.yaml: clusterctl generate cluster $name (1 control plane + 1 worker on host 127.0.0.1:$AGENT0)"
      HOST_ENDPOINT=127.0.0.1:$AGENT0 "$C/clusterctl" generate cluster $name --from templates/cluster-template.yaml \
        --kubeconfig "$W/admin.kubeconfig" > "$W/$name.yaml"
      ;;
    topology)
      name=e2e-topology
      stage "flavor ClusterClass microvm (cluster-template-topology.yaml): MicrovmHosts for both agents, pool $MVM_HOST_POOL"
      for i in 0 1; do
        kubectl apply -f - >/dev/null <<EOF
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: MicrovmHost
metadata: {name: e2e-host-$i, namespace: default, labels: {liquidmetal.io/pool: "$MVM_HOST_POOL"}}
spec: {endpoint: "127.0.0.1:$((AGENT0 + i))", failureDomain: "fd-$i"}
EOF
      done
      "$C/clusterctl" generate yaml --from templates/clusterclass-microvm.yaml > "$W/clusterclass.yaml"
      kubectl apply -f "$W/clusterclass.yaml" >/dev/null
      "$C/clusterctl" generate cluster $name --from templates/cluster-template-topology.yaml --kubeconfig "$W/admin.kubeconfig" > "$W/$name.yaml"
      ;;
    *) echo "unknown flavor $flavor" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  kubectl apply -f "$W/$name.yaml" | sed 's/^/         /'
  wait_for 300 "the control-plane Machine has its VM (providerID)" sh -c "\"$K/kubectl\" get machines -l cluster.x-k8s.io/cluster-name=$name,cluster.x-k8s.io/control-plane -o jsonpath='{.items[*].spec.providerID}' | grep -q microvm://" || failures=$((failures + 1))
  info "apply → control-plane Machine's VM created: $(( $(date +%s) - t0 ))s"
  wait_for 300 "the control-plane Machine Provisioned" sh -c "\"$K/kubectl\" get machines -l cluster.x-k8s.io/cluster-name=$name,cluster.x-k8s.io/control-plane -o jsonpath='{.items[*].status.phase}' | grep -q Provisioned" || failures=$((failures + 1))
  info "apply → control-plane Machine Provisioned: $(( $(date +%s) - t0 ))s"
  wait_for 600 "cloud-init ran the bootstrap data in the VM" cloud_init_ran $name 2 || true
  info "apply → checks: $(( $(date +%s) - t0 ))s"
  check "$name: every Machine Provisioned, its VM from its bootstrap data, cloud-init ran it" verify_cluster $name 2
  kubectl get cluster,machines,microvmmachines -l cluster.x-k8s.io/cluster-name=$name 2>&1 | sed 's/^/         /'
  kubectl get cluster $name 2>&1 | sed 's/^/         /'
  stage "$name: delete the Cluster"
  t0=$(date +%s)
  kubectl delete cluster $name --wait=false >/dev/null
  wait_for 300 "the Cluster is gone" sh -c "! \"$K/kubectl\" get cluster $name" || failures=$((failures + 1))
  check "$name: no MicrovmMachine left" sh -c "[ -z \"\$(\"$K/kubectl\" get microvmmachines -l cluster.x-k8s.io/cluster-name=$name -o name)\" ]"
  wait_for 120 "every VM gone from the hosts" no_vms_left || true
  check "$name: no VM left on either host" no_vms_left
  info "delete → all gone: $(( $(date +%s) - t0 ))s; VMs on the hosts: $(vms_total)"
done

stage "capmvm and agents, at the end"
info "capmvm RSS: $(ps -o rss= -p "$(cat "$W/capmvm.pid")" | awk '{printf "%.1f MiB", $1/1024}')"
for i in 0 1; do info "agent$i RSS: $(ps -o rss= -p "$(cat "$W/agent$i.pid")" | awk '{printf "%.1f MiB", $1/1024}')"; done
info "capmvm warnings/errors: $(grep -cE ' (warning|error) ' "$W/capmvm.log" || true) (log $W/capmvm.log)"
if [ $failures -gt 0 ]; then stage "FAILED: $failures check(s)"; exit 1; fi
stage "PASSED"
