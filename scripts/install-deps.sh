#!/usr/bin/env bash
# Installs the Debian 12 packages Liquid Metal needs to build, run and test (as root).
# The Swift toolchain itself is expected to be installed already.
set -euo pipefail
packages=(
  qemu-system-x86 qemu-utils      # the VMM and qemu-img (qcow2 overlays)
  containerd                      # image store: content, snapshots, leases
  docker-registry                 # loopback registry for the quickstart and tests
  skopeo umoci                    # tests check our OCI layouts and pushes with them
  e2fsprogs                       # mkfs.ext4 -d: volume images from snapshots
  dosfstools mtools               # cloud-init seed disks (FAT, label CIDATA) without mounting
  nftables                        # NAT for guests on the agent-owned bridge
  openssh-client                  # the cloud-init end-to-end test logs in to its guest
  tinyproxy                       # an HTTP CONNECT proxy for the tests of agents behind a proxy
  busybox-static cpio             # busybox in initrds and the minimal root; cpio reads initrds in tests
  mmdebstrap libcap2-bin          # Debian root filesystems (rootfs --preset cloud, --recipe); getcap in tests
  iproute2 iputils-ping           # TAP devices and bridges; ping in tests
  curl ca-certificates openssl    # registry readiness probes; certificates in the TLS tests
  python3 python3-cryptography    # the token server of the bearer-token test registry
  python3-yaml                    # scripts/e2e-cluster.sh rewrites Cluster API's CRDs and webhook configurations
  apt-utils gnupg                 # apt-ftparchive, gpg: the signed package repository double (k8s-node test)
  libsqlite3-dev zlib1g-dev       # SQLite for the state database (GRDB); zlib for gzip layers
  util-linux procps kmod xz-utils zstd lz4 bzip2   # lz4 etc.: unpacking kernel payloads (vmlinux)
)
if [ "$(id -u)" != 0 ]; then echo "install-deps.sh: run as root (apt-get install)" >&2; exit 1; fi
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
# apt lists are needed anyway: lmctl image build kernel downloads the Debian cloud kernel package.
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The tests run their own tinyproxy; Debian's starts one as a service.
  if [[ " ${missing[*]} " == *" tinyproxy "* ]]; then service tinyproxy stop >/dev/null 2>&1 || true; fi
fi
