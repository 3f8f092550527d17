/// The commands the `k8s-node` preset puts in /usr/local/sbin for cluster templates to call (from
/// KubeadmConfig's `preKubeadmCommands` and `postKubeadmCommands`), so that a template names what it wants
/// in one line and needs no image from any registry for it.
enum NodeScripts {
    /// `lm-registry-mirror MIRROR [CA_BASE64] [REGISTRY...]`: containerd pulls the registries' images (default
    /// registry.k8s.io, docker.io, ghcr.io, quay.io) through MIRROR, a URL (`http://` for plain HTTP) or
    /// host:port (HTTPS), trusting the base64 PEM CA if given; the registries themselves are the fallback. MIRROR
    /// empty or `none` does nothing, and CA `none` is none, so that a template can pass its variables' defaults.
    static let registryMirror = #"""
        #!/bin/sh
        # lm-registry-mirror MIRROR [CA_BASE64] [REGISTRY...]  (written by lmctl image build --preset k8s-node)
        # containerd then pulls REGISTRY's images (default: registry.k8s.io docker.io ghcr.io quay.io) through
        # MIRROR (http://host:port for plain HTTP; host:port or https://... for HTTPS, trusting CA_BASE64, a
        # base64-encoded PEM, if given), falling back to the registry itself. MIRROR empty or "none" changes
        # nothing; CA "none" is no CA (cluster templates pass their variables' defaults).
        # LM_CONTAINERD_CERTS_D: another directory than /etc/containerd/certs.d (tests).
        set -eu
        mirror=${1:-}
        ca=${2:-}
        [ "$mirror" = none ] && mirror=
        [ "$ca" = none ] && ca=
        [ $# -ge 2 ] && shift 2 || shift $#
        [ -n "$mirror" ] || { echo "lm-registry-mirror: no mirror named; registries are used directly"; exit 0; }
        case $mirror in http://*|https://*) ;; *) mirror=https://$mirror ;; esac
        registries=${*:-registry.k8s.io docker.io ghcr.io quay.io}
        for r in $registries; do
          dir=${LM_CONTAINERD_CERTS_D:-/etc/containerd/certs.d}/$r
          mkdir -p "$dir"
          server=https://$r
          [ "$r" = docker.io ] && server=https://registry-1.docker.io
          {
            echo "# Written by lm-registry-mirror."
            echo "server = \"$server\""
            echo "[host.\"$mirror\"]"
            echo "  capabilities = [\"pull\", \"resolve\"]"
            if [ -n "$ca" ]; then echo "  ca = \"$dir/mirror-ca.crt\""; fi
          } > "$dir/hosts.toml"
          if [ -n "$ca" ]; then echo "$ca" | base64 -d > "$dir/mirror-ca.crt"; fi
        done
        echo "lm-registry-mirror: $registries through $mirror${ca:+ (CA given)}"
        """#

    /// `lm-kubeadm-timeouts DURATION [FILE...]`: every timeout of kubeadm's v1beta4 InitConfiguration and
    /// JoinConfiguration in the files Cluster API's bootstrap writes (default /run/kubeadm/kubeadm.yaml and
    /// kubeadm-join-config.yaml) set to DURATION. Cluster API's v1beta1 KubeadmConfig can set only two of them
    /// (`timeoutForControlPlane`, `discovery.timeout`); under TCG `kubernetesAPICall` (1 min) is too short too.
    static let kubeadmTimeouts = #"""
        #!/bin/sh
        # lm-kubeadm-timeouts DURATION [FILE...]  (written by lmctl image build --preset k8s-node)
        # Sets every timeout of kubeadm's v1beta4 InitConfiguration and JoinConfiguration (the "timeouts"
        # field: controlPlaneComponentHealthCheck, kubeletHealthCheck, kubernetesAPICall, etcdAPICall,
        # tlsBootstrap, discovery) to DURATION (e.g. 20m0s) in FILE (default: the kubeadm configurations
        # Cluster API's bootstrap writes, /run/kubeadm/kubeadm.yaml and /run/kubeadm/kubeadm-join-config.yaml).
        # Run it from preKubeadmCommands. v1beta3 files (Kubernetes before v1.31) have no such field and
        # are left as they are.
        set -eu
        d=${1:?usage: lm-kubeadm-timeouts DURATION [FILE...]}
        shift
        files=${*:-/run/kubeadm/kubeadm.yaml /run/kubeadm/kubeadm-join-config.yaml}
        for f in $files; do
          [ -f "$f" ] || continue
          if ! grep -q '^apiVersion: kubeadm.k8s.io/v1beta4' "$f"; then
            echo "lm-kubeadm-timeouts: $f is not kubeadm v1beta4; left as it is"
            continue
          fi
          awk -v d="$d" '
            function flush() {
              if (target) { print "timeouts:"; for (i = 1; i <= n; i++) print "  " keys[i] ": " d }
              target = 0
            }
            BEGIN { n = split("controlPlaneComponentHealthCheck kubeletHealthCheck kubernetesAPICall etcdAPICall tlsBootstrap discovery", keys, " ") }
            /^---/ { flush(); skipping = 0; print; next }
            skipping && /^[ 	]/ { next }
            { skipping = 0 }
            /^kind: (InitConfiguration|JoinConfiguration)[ 	]*$/ { target = 1 }
            /^timeouts:/ { skipping = 1; next }
            { print }
            END { flush() }' "$f" > "$f.lm-tmp"
          cat "$f.lm-tmp" > "$f" && rm -f "$f.lm-tmp"
          echo "lm-kubeadm-timeouts: kubeadm's timeouts in $f set to $d"
        done
        """#

    /// `lm-control-plane-address ADDRESS [ROUTER_ID]`: keepalived (VRRP) holds ADDRESS on one control-plane
    /// node's interface of the default route; on the node that runs `kubeadm init` it waits until the address is here.
    static let controlPlaneAddress = #"""
        #!/bin/sh
        # lm-control-plane-address ADDRESS [ROUTER_ID]  (written by lmctl image build --preset k8s-node)
        # The control plane's address without kube-vip: keepalived (VRRP, router id ROUTER_ID, default 51) holds
        # ADDRESS on this node's interface of the default route, on one control-plane node at a time (all in
        # state BACKUP with nopreempt: the first one up keeps it until its node or keepalived goes). The control-plane
        # nodes must share a layer-2 network. On the node that runs kubeadm init, waits for the address (60 s).
        set -eu
        address=${1:?usage: lm-control-plane-address ADDRESS [ROUTER_ID]}
        id=${2:-51}
        dev=$(ip -o -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')
        [ -n "$dev" ] || dev=eth0
        mkdir -p /etc/keepalived
        cat > /etc/keepalived/keepalived.conf <<CONF
        # Written by lm-control-plane-address.
        global_defs {
          script_user root
          enable_script_security
        }
        vrrp_instance lm_control_plane {
          state BACKUP
          nopreempt
          interface $dev
          virtual_router_id $id
          priority 100
          advert_int 1
          virtual_ipaddress {
            $address/32 dev $dev
          }
        }
        CONF
        systemctl enable keepalived >/dev/null 2>&1 || true
        systemctl restart keepalived
        echo "lm-control-plane-address: keepalived holds $address on $dev (VRRP router id $id) on one control-plane node"
        if [ -f /run/kubeadm/kubeadm.yaml ]; then
          i=0
          until ip -o -4 addr show dev "$dev" | grep -q " $address/"; do
            i=$((i + 1)); [ $i -le 60 ] || { echo "lm-control-plane-address: $address not on $dev after 60 s" >&2; exit 1; }
            sleep 1
          done
          echo "lm-control-plane-address: $address is on $dev"
        fi
        """#

    /// `lm-kubeadm-retry [ATTEMPTS] [PAUSE]` (a postKubeadmCommand): Cluster API's bootstrap runs `kubeadm join` once, and
    /// one API call that outlasts one of kubeadm's fixed request timeouts (10 s; under TCG a busy control plane takes
    /// longer) fails the join for good. When Cluster API's success sentinel is missing, this resets what the
    /// attempt left and joins again, with the same configuration, up to ATTEMPTS (5) times PAUSE (30) seconds apart.
    static let kubeadmRetry = #"""
        #!/bin/sh
        # lm-kubeadm-retry [ATTEMPTS] [PAUSE]  (written by lmctl image build --preset k8s-node; a postKubeadmCommand)
        # Cluster API runs "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml && echo success >
        # /run/cluster-api/bootstrap-success.complete" once; cloud-init goes on to the next command either way. When
        # that sentinel is missing, this runs "kubeadm reset -f" and the same join again, up to ATTEMPTS (5) times,
        # PAUSE (30) seconds apart, and writes the sentinel when one succeeds. Nothing to do after a success or
        # for kubeadm init (no join configuration). LM_KUBEADM, LM_KUBEADM_RUN, LM_CLUSTER_API_RUN: tests.
        set -u
        attempts=${1:-5} pause=${2:-30}
        kubeadm=${LM_KUBEADM:-kubeadm}
        sentinel=${LM_CLUSTER_API_RUN:-/run/cluster-api}/bootstrap-success.complete
        config=${LM_KUBEADM_RUN:-/run/kubeadm}/kubeadm-join-config.yaml
        [ -f "$sentinel" ] && exit 0
        if [ ! -f "$config" ]; then
          echo "lm-kubeadm-retry: kubeadm failed and there is no $config (kubeadm init is not retried)" >&2
          exit 1
        fi
        i=1
        while [ "$i" -le "$attempts" ]; do
          echo "lm-kubeadm-retry: kubeadm join did not succeed; attempt $i of $attempts in ${pause}s"
          sleep "$pause"
          $kubeadm reset -f >/dev/null 2>&1 || :
          if $kubeadm join --config "$config"; then
            mkdir -p "$(dirname "$sentinel")" && echo success > "$sentinel"
            echo "lm-kubeadm-retry: joined on attempt $i"
            exit 0
          fi
          i=$((i + 1))
        done
        echo "lm-kubeadm-retry: kubeadm join failed $attempts more times; giving up" >&2
        exit 1
        """#

    /// `lm-bridge-cni`: the pod network of CNI's bridge plugin (kubernetes-cni's, in /opt/cni/bin), for clusters
    /// whose nodes share a network: writes /etc/cni/net.d/10-lm-bridge.conflist with this node's podCIDR (the
    /// kubelet then reports the node Ready) and keeps routes to the other nodes' pod CIDRs via their InternalIP
    /// when that address is on this node's network.
    static let bridgeCNI = #"""
        #!/bin/sh
        # lm-bridge-cni  (written by lmctl image build --preset k8s-node; run by lm-bridge-cni.service)
        # The pod network of the CNI bridge plugin: /etc/cni/net.d/10-lm-bridge.conflist with this node's
        # spec.podCIDR (allocated by kube-controller-manager from the cluster's pod network), and a route to
        # each other node's podCIDR via its InternalIP when that address is on this node's network (nodes on
        # one host's bridge). Pods on nodes of different hosts reach each other only if the hosts route pod CIDRs.
        # On a control-plane node it lets nodes list nodes (ClusterRole lm-bridge-cni; kubelets may read only
        # their own Node otherwise).
        set -u
        conf=/etc/cni/net.d/10-lm-bridge.conflist
        kc=/etc/kubernetes/kubelet.conf
        k() { kubectl --kubeconfig "$kc" "$@"; }
        rbac_done=
        while :; do
          # Started before kubeadm (cluster templates do, so that the node is Ready as soon as it has a podCIDR):
          # nothing to ask until kubeadm has written the kubelet's kubeconfig.
          [ -f "$kc" ] || { sleep 5; continue; }
          if [ -z "$rbac_done" ] && [ -f /etc/kubernetes/admin.conf ] && [ -f /etc/kubernetes/manifests/kube-apiserver.yaml ]; then
            a="kubectl --kubeconfig /etc/kubernetes/admin.conf"
            { $a get clusterrole lm-bridge-cni >/dev/null 2>&1 || $a create clusterrole lm-bridge-cni --verb=get,list --resource=nodes >/dev/null 2>&1; } &&
            { $a get clusterrolebinding lm-bridge-cni >/dev/null 2>&1 || $a create clusterrolebinding lm-bridge-cni --clusterrole=lm-bridge-cni --group=system:nodes >/dev/null 2>&1; } &&
            rbac_done=1 && echo "lm-bridge-cni: nodes may list nodes (ClusterRole lm-bridge-cni)"
          fi
          mine=$(ip -o -4 addr show | awk '{split($4, a, "/"); print a[1]}')
          k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null > /run/lm-bridge-cni.nodes || :
          while read -r name cidr address; do
            [ -n "$cidr" ] && [ -n "$address" ] || continue
            if echo "$mine" | grep -qx "$address"; then
              if ! grep -qs "\"$cidr\"" "$conf"; then
                mkdir -p /etc/cni/net.d
                cat > "$conf.tmp" <<CONF
        {
          "cniVersion": "1.0.0",
          "name": "lm-bridge",
          "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
          ]
        }
        CONF
                mv "$conf.tmp" "$conf"
                echo "lm-bridge-cni: node $name: pods in $cidr ($conf)"
              fi
            elif ! ip route get "$address" 2>/dev/null | grep -q " via "; then
              ip route replace "$cidr" via "$address" 2>/dev/null && ! grep -qsx "$cidr $address" /run/lm-bridge-cni.routes &&
                echo "$cidr $address" >> /run/lm-bridge-cni.routes && echo "lm-bridge-cni: pods of node $name ($cidr) via $address"
            fi
          done < /run/lm-bridge-cni.nodes
          # Every kubectl costs a TCG guest seconds of CPU: poll often only until this node has its pod network.
          if [ -f "$conf" ] && { [ -n "$rbac_done" ] || [ ! -f /etc/kubernetes/manifests/kube-apiserver.yaml ]; }; then
            sleep 30
          else
            sleep 10
          fi
        done
        """#

    static let bridgeCNIUnit = """
        # Written by lmctl image build --preset k8s-node. Enabled by cluster templates that use the bridge CNI.
        [Unit]
        Description=Pod network of the CNI bridge plugin (Liquid Metal)
        After=kubelet.service

        [Service]
        ExecStart=/usr/local/sbin/lm-bridge-cni
        Restart=always
        RestartSec=5
        StandardOutput=journal+console

        [Install]
        WantedBy=multi-user.target

        """
}
