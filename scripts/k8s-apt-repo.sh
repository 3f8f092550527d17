#!/usr/bin/env bash
# k8s-apt-repo.sh — a signed flat apt repository shaped like pkgs.k8s.io, from Kubernetes binaries.
#
# Usage: scripts/k8s-apt-repo.sh --bin DIR --version 1.36.2 --out DIR [--cni DIR --cni-version 1.9.1]
#
# Packages, with pkgs.k8s.io's names, files and dependencies (kubernetes/release's package templates):
#   kubelet         /usr/bin/kubelet, /usr/lib/systemd/system/kubelet.service, /etc/default/kubelet;
#                   Depends: iptables (>= 1.4.21), kubernetes-cni (>= 1.2.0), mount, util-linux
#   kubeadm         /usr/bin/kubeadm, /usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf
#                   (Depends: cri-tools (>= 1.30.0) below v1.32, nothing from v1.32 on)
#   kubectl         /usr/bin/kubectl
#   cri-tools       /usr/bin/crictl, when DIR has crictl (its version from `crictl --version`)
#   kubernetes-cni  /opt/cni/bin/*, from --cni DIR (the CNI plugins, version --cni-version), else
#                   /usr/lib/cni/* of Debian's containernetworking-plugins (with its version)
# DIR holds the programs (kubelet, kubeadm, kubectl, and optionally crictl); the repository goes
# to OUT/repo (`deb http://HOST:PORT/ /`, as pkgs.k8s.io: `deb https://pkgs.k8s.io/core:/stable:/v1.36/deb/ /`),
# signed by a key made for it whose armored public half is OUT/Release.key (give it to
# `lmctl image build rootfs --package-source-key`). Serve OUT/repo with any HTTP server.
# Prints the repository directory and key path. Used by the tests (with stand-in programs) and by
# scripts/e2e-cluster.sh (with real ones).
set -euo pipefail

bin="" version="" out="" cni="" cniversion=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --version) version=${2#v}; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cni) cni=$2; shift 2 ;;
    --cni-version) cniversion=${2#v}; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "k8s-apt-repo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$bin" ] && [ -n "$version" ] && [ -n "$out" ] || { echo "k8s-apt-repo.sh: --bin, --version and --out are required (see --help)" >&2; exit 2; }
for p in kubelet kubeadm kubectl; do [ -x "$bin/$p" ] || { echo "k8s-apt-repo.sh: $bin/$p is missing or not executable" >&2; exit 2; }; done
[[ $version =~ ^([0-9]+)\.([0-9]+)\.[0-9]+ ]] || { echo "k8s-apt-repo.sh: --version $version is not MAJOR.MINOR.PATCH" >&2; exit 2; }
minor=${BASH_REMATCH[2]}
if [ -z "$cni" ] && [ -d /usr/lib/cni ]; then
  cni=/usr/lib/cni
  cniversion=$(dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null | sed 's/^[0-9]*://; s/[-+~].*//')
fi
[ -n "$cniversion" ] || { echo "k8s-apt-repo.sh: --cni-version is needed with --cni" >&2; exit 2; }
[ -n "$cni" ] && [ -x "$cni/loopback" ] || { echo "k8s-apt-repo.sh: no CNI plugins (--cni DIR with loopback, bridge, host-local, ...; or install containernetworking-plugins)" >&2; exit 2; }
for t in dpkg-deb apt-ftparchive gpg; do command -v $t >/dev/null || { echo "k8s-apt-repo.sh: needs $t (apt-utils, gnupg)" >&2; exit 2; }; done

rm -rf "$out/repo" "$out/stage" "$out/gnupg" "$out/Release.key"  # only what this script writes
mkdir -p "$out/repo" "$out/stage"
debversion="$version-1.1"  # pkgs.k8s.io's revision scheme

# deb NAME DEPENDS DESCRIPTION [VERSION]: builds $out/stage/NAME into the repository.
deb() {
  local name=$1 depends=$2 description=$3 stage=$out/stage/$1 debversion=${4:-$debversion}
  mkdir -p "$stage/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $debversion"
    echo "Architecture: amd64"
    echo "Maintainer: Liquid Metal (built from local binaries) <liquidmetal@invalid>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Description: $description"
  } > "$stage/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip --build "$stage" "$out/repo/${name}_${debversion}_amd64.deb" >/dev/null
}
install_file() {  # install_file MODE SOURCE TARGET (TARGET under a stage)
  mkdir -p "$(dirname "$3")" && cp "$2" "$3" && chmod "$1" "$3"
}

s=$out/stage/kubelet
install_file 755 "$bin/kubelet" "$s/usr/bin/kubelet"
mkdir -p "$s/usr/lib/systemd/system" "$s/etc/default"
cat > "$s/usr/lib/systemd/system/kubelet.service" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
echo "KUBELET_EXTRA_ARGS=" > "$s/etc/default/kubelet"
deb kubelet "iptables (>= 1.4.21), kubernetes-cni (>= 1.2.0), mount, util-linux" "Kubernetes node agent"

s=$out/stage/kubeadm
install_file 755 "$bin/kubeadm" "$s/usr/bin/kubeadm"
mkdir -p "$s/usr/lib/systemd/system/kubelet.service.d"
cat > "$s/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'EOF'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
kubeadm_depends=""
[ "$minor" -lt 32 ] && kubeadm_depends="cri-tools (>= 1.30.0)"
deb kubeadm "$kubeadm_depends" "Kubernetes cluster bootstrapping tool"

install_file 755 "$bin/kubectl" "$out/stage/kubectl/usr/bin/kubectl"
deb kubectl "" "Kubernetes command line tool"

if [ -x "$bin/crictl" ]; then
  install_file 755 "$bin/crictl" "$out/stage/cri-tools/usr/bin/crictl"
  crictlversion=$("$bin/crictl" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1 || true)
  deb cri-tools "" "Command-line utility for interacting with a container runtime" "${crictlversion:-$version}-1.1"
elif [ "$minor" -lt 32 ]; then
  echo "k8s-apt-repo.sh: kubeadm $version depends on cri-tools: put crictl in $bin" >&2; exit 2
fi

mkdir -p "$out/stage/kubernetes-cni/opt/cni/bin"
cp -a "$cni"/. "$out/stage/kubernetes-cni/opt/cni/bin/"
deb kubernetes-cni "" "Binaries required to provision kubernetes container networking" "$cniversion-1.1"

(cd "$out/repo" && apt-ftparchive packages . > Packages && gzip -9kn Packages \
  && apt-ftparchive -o APT::FTPArchive::Release::Origin=liquidmetal-k8s release . > Release)
gnupg=$out/gnupg
mkdir -p "$gnupg" && chmod 700 "$gnupg"
gpg=(gpg --homedir "$gnupg" --batch --quiet --pinentry-mode loopback --passphrase "")
"${gpg[@]}" --quick-gen-key "Liquid Metal local Kubernetes packages <liquidmetal@invalid>" ed25519 sign 30d 2>/dev/null
"${gpg[@]}" --armor --output "$out/Release.key" --export liquidmetal@invalid
"${gpg[@]}" --clearsign --output "$out/repo/InRelease" "$out/repo/Release"
"${gpg[@]}" --armor --detach-sign --output "$out/repo/Release.gpg" "$out/repo/Release"
gpgconf --homedir "$gnupg" --kill gpg-agent 2>/dev/null || true
rm -rf "$out/stage"
echo "$out/repo"
echo "$out/Release.key"
