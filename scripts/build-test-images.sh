#!/usr/bin/env bash
# build-test-images.sh — builds the two OCI test images a microVM boots from:
#
#   lm-test/kernel   boot/vmlinuz   Debian cloud kernel (bzImage, QEMU -kernel)
#                    boot/initrd    gzip newc cpio: busybox + virtio modules; mounts
#                                   /dev/vda (ext4) and switch_roots to its /sbin/init
#                    boot/config-<version>  the kernel's build config
#                    lib/modules/<version>/  only with --with-modules (~90 MB)
#   lm-test/root     busybox root filesystem whose /sbin/init (a shell script, PID 1):
#                      - mounts proc, sys, devtmpfs (if not yet), tmpfs on /run
#                      - sets the hostname (lm_hostname=NAME, else /etc/hostname)
#                      - prints the line  LIQUIDMETAL-GUEST-READY  on /dev/console
#                      - lm_ip=ADDR/PREFIX [lm_gw=GW]: configures eth0, then prints
#                        LIQUIDMETAL-NET-READY ADDR   (or LIQUIDMETAL-NET-FAILED REASON)
#                      - lm_panic=1: kernel panic (sysrq c) after the markers
#                      - lm_poweroff=1: poweroff -f after the markers
#                      - otherwise stays alive forever, reaping orphans; busybox
#                        poweroff/halt/reboot inside the guest work (signals to PID 1)
#                    It quiets kernel console messages (dmesg -n 1) before printing the
#                    markers so they are never interleaved, unless the command line has
#                    loglevel=, debug or ignore_loglevel.
#   Initrd options on the kernel command line: lm_root=DEV (default /dev/vda).
#
# Usage: scripts/build-test-images.sh [--out DIR] [--push REGISTRY [--creds USER:PASS]]
#                                     [--with-modules] [--force]
#   --out DIR        output directory, default ${LM_TEST_IMAGES:-/tmp/lm-test-images}:
#                      DIR/kernel, DIR/root   OCI image layouts, tag "latest"
#                      DIR/cache              downloaded kernel .deb (kept between runs)
#                      DIR/stage/{kernel,root} the file trees that went into the images
#                      DIR/*.stamp            input hashes; unchanged inputs = no rebuild
#   --push REGISTRY  also copy both images to docker://REGISTRY/lm-test/{kernel,root}:latest
#                    (plain HTTP / no TLS verification: meant for loopback test registries)
#   --creds U:P      credentials for --push (e.g. the auth registry of test-env.sh)
#   --with-modules   also put the kernel's whole lib/modules/<version>/ in the kernel image
#   --force          rebuild even if the stamps say the images are current
# Prints the final image references (with digests, after --push) on stdout.
#
# Environment:
#   LM_KERNEL_DEB=path.deb  use this kernel package instead of the newest
#                           linux-image-6.1.0-*-cloud-amd64 from apt (apt-get download)
#   SOURCE_DATE_EPOCH       timestamp for every file, the image config and history
#                           (default 1700000000); same inputs give the same digests.
#
# Needs (Debian 12 packages; this script installs nothing): apt (apt-cache, apt-get
# download; only when LM_KERNEL_DEB is unset and the .deb is not cached yet), dpkg
# (dpkg-deb), busybox-static (/bin/busybox is copied into both images), cpio, gzip,
# umoci, skopeo (only for --push), xz-utils / zstd (only if the kernel's modules are
# compressed), util-linux (flock). Run as root (files in the images must be owned by root).
set -euo pipefail

prog=$(basename "$0")
die() { echo "$prog: error: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

out=${LM_TEST_IMAGES:-/tmp/lm-test-images}
push="" creds="" with_modules=0 force=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --push) [ $# -ge 2 ] || die "--push needs a registry (host:port)"; push=$2; shift 2 ;;
    --push=*) push=${1#*=}; shift ;;
    --creds) [ $# -ge 2 ] || die "--creds needs USER:PASS"; creds=$2; shift 2 ;;
    --creds=*) creds=${1#*=}; shift ;;
    --with-modules) with_modules=1; shift ;;
    --force) force=1; shift ;;
    *) echo "$prog: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ -z "$creds" ] || [ -n "$push" ] || die "--creds only makes sense with --push"
[ "$(id -u)" = 0 ] || die "must run as root (image files must be owned by root, device node for the initrd)"

need() { command -v "$1" >/dev/null || die "'$1' not found: apt-get install -y $2"; }
need umoci umoci
need cpio cpio
need gzip gzip
need dpkg-deb dpkg
need flock util-linux
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found: apt-get install -y busybox-static"
# A dynamically linked busybox (Debian "busybox") would not run in the images.
! ldd "$busybox" >/dev/null 2>&1 || die "$busybox is dynamically linked: apt-get install -y busybox-static"
[ -z "$push" ] || need skopeo skopeo

sde=${SOURCE_DATE_EPOCH:-1700000000}
[[ "$sde" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be a number of seconds"
sde_iso=$(date -u -d "@$sde" +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=$out/cache
mkdir -p "$cache" "$out/stage"

# One build at a time per output directory (tests may run in parallel).
exec 9>"$out/.lock"
flock 9 || die "cannot lock $out/.lock"

self_sha=$(sha256sum "$0" | cut -d' ' -f1)
busybox_sha=$(sha256sum "$busybox" | cut -d' ' -f1)

# --- kernel package --------------------------------------------------------------------

# Prints the path of the kernel .deb to use, downloading it into the cache if needed.
find_kernel_deb() {
  if [ -n "${LM_KERNEL_DEB:-}" ]; then
    [ -f "$LM_KERNEL_DEB" ] || die "LM_KERNEL_DEB=$LM_KERNEL_DEB: no such file"
    (cd "$(dirname "$LM_KERNEL_DEB")" && echo "$PWD/$(basename "$LM_KERNEL_DEB")")
    return 0
  fi
  local name ver file
  name=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' 2>/dev/null |
         awk '{print $1}' | sort -V | tail -n 1)
  if [ -z "$name" ]; then
    # No apt lists (offline?): fall back to the newest cached package.
    file=$(find "$cache" -maxdepth 1 -name 'linux-image-6.1.0-*-cloud-amd64_*.deb' | sort -V | tail -n 1)
    [ -n "$file" ] || die "apt-cache knows no linux-image-6.1.0-*-cloud-amd64 package and none is cached (run apt-get update, or set LM_KERNEL_DEB)"
    say "apt-cache found no cloud kernel; using cached $file"
    echo "$file"; return 0
  fi
  ver=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then die "no installable version of $name"; fi
  file=$cache/${name}_${ver//:/%3a}_amd64.deb
  if [ ! -s "$file" ]; then
    say "downloading $name $ver into $cache"
    # apt-get download as root warns that _apt cannot write here; harmless.
    (cd "$cache" && apt-get download -q "$name=$ver" 2>&1 | { grep -v 'unsandboxed as root' || true; } >&2) ||
      die "apt-get download $name=$ver failed"
    [ -s "$file" ] || die "apt-get download did not produce $file"
  fi
  echo "$file"
}

# --- helpers ---------------------------------------------------------------------------

# normalize DIR: root ownership and SOURCE_DATE_EPOCH mtimes for everything in DIR.
normalize() {
  chown -hR 0:0 "$1"
  find "$1" -depth -exec touch -h -d "@$sde" {} +
}

# install_busybox ROOT LAYOUT: /bin/busybox plus one symlink per applet.
#   LAYOUT=flat: everything in /bin (initrd);  LAYOUT=full: the usual
#   bin, sbin, usr/bin, usr/sbin paths from `busybox --list-full` (root image).
install_busybox() {
  local root=$1 layout=$2 path dir rel
  mkdir -p "$root/bin"
  cp "$busybox" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  if [ "$layout" = flat ]; then
    for path in $("$busybox" --list); do
      [ "$path" = busybox ] || ln -sf busybox "$root/bin/$path"
    done
    return 0
  fi
  while read -r path; do
    case "$path" in
      sbin/init|linuxrc|bin/busybox) continue ;;   # our own /sbin/init; no linuxrc
    esac
    dir=$(dirname "$path")
    mkdir -p "$root/$dir"
    case "$dir" in */*) rel=../.. ;; *) rel=.. ;; esac   # usr/bin -> ../.., bin -> ..
    ln -sf "$rel/bin/busybox" "$root/$path"
  done < <("$busybox" --list-full)
}

# --- initrd ----------------------------------------------------------------------------

# Modules the initrd loads, in this order (dependencies are added in front automatically).
initrd_modules=(virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net)

# build_initrd PKGROOT KVER OUTFILE: PKGROOT is the dpkg -x of the kernel package.
build_initrd() {
  local pkg=$1 kver=$2 outfile=$3
  local mdir=$pkg/lib/modules/$kver
  local ird=$work/initrd
  rm -rf "$ird"
  mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules/"$kver"}
  ln -s bin "$ird/sbin"
  install_busybox "$ird" flat
  # The kernel opens /dev/console before running /init; devtmpfs is not mounted yet.
  mknod -m 0600 "$ird/dev/console" c 5 1
  mknod -m 0666 "$ird/dev/null" c 1 3

  # ext4 must be in the kernel or the initrd.
  local want=("${initrd_modules[@]}")
  if grep -q '^CONFIG_EXT4_FS=m' "$pkg/boot/config-$kver"; then
    want+=(crc32c_generic ext4)   # ext4 has only a soft dependency on crc32c
    say "ext4 is a module: adding it to the initrd"
  fi

  # Index the package's modules by name (dashes and underscores are the same).
  local -A file_of=()
  local f n
  while IFS= read -r f; do
    n=$(basename "$f"); n=${n%%.ko*}; n=${n//-/_}
    file_of[$n]=$f
  done < <(find "$mdir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
  local builtin
  builtin=" $(sed 's#.*/##; s#\.ko.*##; s#-#_#g' "$mdir/modules.builtin" | tr '\n' ' ') "

  # add_module NAME: copy NAME (decompressed) after its dependencies; record the order.
  local -A added=()
  local order=()
  add_module() {
    local name=${1//-/_} src dst deps d
    [ -z "${added[$name]:-}" ] || return 0
    added[$name]=1
    if [[ "$builtin" == *" $name "* ]]; then return 0; fi
    src=${file_of[$name]:-}
    [ -n "$src" ] || die "module $name is neither built into $kver nor in the package"
    dst=$ird/lib/modules/$kver/$name.ko
    case "$src" in
      *.ko.xz)  need xz xz-utils; xz -dc "$src" >"$dst" ;;
      *.ko.zst) need zstd zstd; zstd -qdc "$src" >"$dst" ;;
      *.ko.gz)  gzip -dc "$src" >"$dst" ;;
      *)        cp "$src" "$dst" ;;
    esac
    # "depends=a,b" from the .modinfo section (NUL-separated key=value strings).
    deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -n 1)
    for d in ${deps//,/ }; do add_module "$d"; done
    order+=("$name")
  }
  for n in "${want[@]}"; do add_module "$n"; done
  say "initrd modules ($kver): ${order[*]}"

  # /init of the initrd. Module list and kernel version are baked in at build time.
  cat >"$ird/init" <<EOF
#!/bin/busybox sh
# initrd /init, generated by scripts/build-test-images.sh for kernel $kver.
# Loads the virtio drivers, mounts the root disk (ext4, read-write) and switch_roots
# to its /sbin/init. Kernel command line: lm_root=DEV (default /dev/vda).
export PATH=/bin
kver=$kver
modules="${order[*]}"
EOF
  cat >>"$ird/init" <<'EOF'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

log() { echo "lm-initrd: $*"; }
fail() {
  log "$*"
  log "powering off"
  sync
  poweroff -f
  while :; do sleep 1; done   # never let PID 1 exit
}

for m in $modules; do
  insmod "/lib/modules/$kver/$m.ko" || log "insmod $m failed"
done

root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in lm_root=*) root=${arg#lm_root=} ;; esac
done

# Wait up to 10 s for the root disk (virtio-blk probes asynchronously).
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -le 100 ] || fail "root disk $root did not appear within 10 s (no virtio-blk-device attached?)"
  sleep 0.1
done

mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root (ext4) on /newroot"
[ -e /newroot/sbin/init ] || fail "$root has no /sbin/init"
for d in dev proc sys; do
  mkdir -p "/newroot/$d"
  mount --move "/$d" "/newroot/$d" || fail "cannot move /$d to the new root"
done
exec switch_root /newroot /sbin/init
EOF
  chmod 0755 "$ird/init"

  normalize "$ird"
  # Sorted names, no inode/device numbers, root owner, no gzip name/time: reproducible.
  (cd "$ird" && find . -mindepth 1 | LC_ALL=C sort |
     cpio --quiet -o -H newc --reproducible --owner=0:0) | gzip -9 -n >"$outfile"
}

# --- root filesystem -------------------------------------------------------------------

build_root_tree() {
  local r=$1
  rm -rf "$r"
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,run,root,var/log,newroot}
  rmdir "$r/newroot"
  chmod 1777 "$r/tmp"
  chmod 0700 "$r/root"
  install_busybox "$r" full
  ln -s ../run "$r/var/run"

  echo lm-guest >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$r/etc/hosts"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
  printf 'root:x:0:\n' >"$r/etc/group"
  printf 'NAME="LiquidMetal test guest"\nID=lm-test\nPRETTY_NAME="LiquidMetal test guest (busybox)"\n' >"$r/etc/os-release"
  : >"$r/etc/resolv.conf"

  cat >"$r/sbin/init" <<'EOF'
#!/bin/sh
# /sbin/init (PID 1) of the lm-test/root image, generated by scripts/build-test-images.sh.
# Prints the readiness markers the host agent's tests wait for. It must never exit:
# PID 1 exiting panics the kernel. Kernel command line options:
#   lm_ip=ADDR/PREFIX [lm_gw=GW]  configure eth0, then print "LIQUIDMETAL-NET-READY ADDR"
#   lm_hostname=NAME              hostname (default: /etc/hostname)
#   lm_panic=1                    kernel panic after the markers
#   lm_poweroff=1                 poweroff -f after the markers
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH

[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
grep -q '^[^ ]* /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
exec </dev/console >/dev/console 2>&1

log() { echo "lm-init: $*"; }

lm_ip='' lm_gw='' lm_hostname='' lm_panic='' lm_poweroff='' quiet_console=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lm_ip=*) lm_ip=${arg#*=} ;;
    lm_gw=*) lm_gw=${arg#*=} ;;
    lm_hostname=*) lm_hostname=${arg#*=} ;;
    lm_panic=1) lm_panic=1 ;;
    lm_poweroff=1) lm_poweroff=1 ;;
    loglevel=*|debug|ignore_loglevel) quiet_console= ;;
  esac
done

# Keep kernel messages from splitting our marker lines on the serial console.
[ -z "$quiet_console" ] || dmesg -n 1

[ -n "$lm_hostname" ] || lm_hostname=$(cat /etc/hostname 2>/dev/null)
hostname "${lm_hostname:-lm-guest}"
ip link set lo up 2>/dev/null

echo "LIQUIDMETAL-GUEST-READY"

if [ -n "$lm_ip" ]; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
  if [ ! -e /sys/class/net/eth0 ]; then
    echo "LIQUIDMETAL-NET-FAILED no eth0"
  elif ! ip link set eth0 up || ! ip addr add "$lm_ip" dev eth0; then
    echo "LIQUIDMETAL-NET-FAILED cannot configure eth0 with $lm_ip"
  elif [ -n "$lm_gw" ] && ! ip route add default via "$lm_gw" dev eth0; then
    echo "LIQUIDMETAL-NET-FAILED cannot add default route via $lm_gw"
  else
    echo "LIQUIDMETAL-NET-READY ${lm_ip%/*}"
  fi
fi

if [ -n "$lm_panic" ]; then
  log "lm_panic=1: triggering a kernel panic"
  echo 1 >/proc/sys/kernel/sysrq
  echo c >/proc/sysrq-trigger
fi
if [ -n "$lm_poweroff" ]; then
  log "lm_poweroff=1: powering off"
  sync
  poweroff -f
fi

# busybox halt/poweroff/reboot (without -f) signal PID 1: USR1, USR2, TERM.
trap 'sync; halt -f' USR1
trap 'sync; poweroff -f' USR2
trap 'sync; reboot -f' TERM
trap '' INT HUP

# Stay alive. `wait` also reaps orphans re-parented to PID 1.
while :; do
  sleep 3600 &
  wait
done
EOF
  chmod 0755 "$r/sbin/init"
  normalize "$r"
}

# --- OCI packing -----------------------------------------------------------------------

# pack_image NAME TREE LAYOUT [LABEL...]: a one-layer OCI image (tag latest) of TREE.
pack_image() {
  local name=$1 tree=$2 layout=$3; shift 3
  local tmp=$work/oci-$name bundle=$work/bundle-$name label labels=()
  for label in "$@"; do labels+=(--config.label "$label"); done
  rm -rf "$tmp" "$bundle"
  umoci init --layout "$tmp"
  umoci new --image "$tmp:latest"
  umoci unpack --image "$tmp:latest" "$bundle" >/dev/null
  cp -a "$tree/." "$bundle/rootfs/"
  normalize "$bundle/rootfs"
  umoci repack --image "$tmp:latest" \
    --history.created "$sde_iso" --history.created_by "scripts/build-test-images.sh" \
    --history.comment "lm-test/$name" "$bundle"
  umoci config --image "$tmp:latest" --no-history \
    --created "$sde_iso" --author "scripts/build-test-images.sh" \
    --os linux --architecture amd64 \
    --config.label "org.opencontainers.image.title=lm-test/$name" "${labels[@]}"
  umoci gc --layout "$tmp"
  chmod -R a+rX "$tmp"   # umoci writes blobs 0600; let non-root readers use the layout
  rm -rf "$bundle" "$layout"
  mv "$tmp" "$layout"
}

# manifest_digest LAYOUT: digest of the manifest in a one-tag OCI layout.
manifest_digest() {
  grep -o '"digest":"sha256:[0-9a-f]*"' "$1/index.json" | head -n 1 | cut -d'"' -f4
}

# --- main ------------------------------------------------------------------------------

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

t0=$EPOCHREALTIME
deb=$(find_kernel_deb)
deb_sha=$(sha256sum "$deb" | cut -d' ' -f1)
# Kernel version from the package name (linux-image-<version>[-unsigned]); checked
# against boot/vmlinuz-<version> when the package is unpacked.
kver=$(dpkg-deb -f "$deb" Package) || die "$deb is not a Debian package"
kver=${kver#linux-image-}; kver=${kver%-unsigned}
[[ "$kver" =~ ^[0-9]+\.[0-9]+ ]] || die "$deb is not a linux-image-<version> package"
say "kernel package: $(basename "$deb") (kernel $kver)"

kernel_inputs="deb=$deb_sha busybox=$busybox_sha script=$self_sha sde=$sde modules=$with_modules"
root_inputs="busybox=$busybox_sha script=$self_sha sde=$sde"

if [ "$force" = 0 ] && [ -f "$out/kernel/index.json" ] && [ "$(cat "$out/kernel.stamp" 2>/dev/null)" = "$kernel_inputs" ]; then
  say "lm-test/kernel: up to date ($out/kernel)"
else
  say "lm-test/kernel: building"
  rm -f "$out/kernel.stamp"
  pkg=$work/pkg
  dpkg-deb -x "$deb" "$pkg"
  [ -f "$pkg/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
  [ -f "$pkg/boot/config-$kver" ] || die "$deb has no boot/config-$kver"
  for opt in EXT4_FS VIRTIO VIRTIO_MMIO VIRTIO_BLK VIRTIO_NET; do
    say "  CONFIG_$opt=$(sed -n "s/^CONFIG_$opt=//p" "$pkg/boot/config-$kver")"
  done
  stage=$out/stage/kernel
  rm -rf "$stage"
  mkdir -p "$stage/boot"
  cp "$pkg/boot/vmlinuz-$kver" "$stage/boot/vmlinuz"
  cp "$pkg/boot/config-$kver" "$stage/boot/config-$kver"
  build_initrd "$pkg" "$kver" "$stage/boot/initrd"
  if [ "$with_modules" = 1 ]; then
    mkdir -p "$stage/lib/modules"
    cp -a "$pkg/lib/modules/$kver" "$stage/lib/modules/"
  fi
  normalize "$stage"
  pack_image kernel "$stage" "$out/kernel" "org.opencontainers.image.version=$kver"
  echo "$kernel_inputs" >"$out/kernel.stamp"
  echo "$kver" >"$out/kernel-version"
  say "lm-test/kernel: built (vmlinuz $(du -h "$stage/boot/vmlinuz" | cut -f1), initrd $(du -h "$stage/boot/initrd" | cut -f1))"
fi

if [ "$force" = 0 ] && [ -f "$out/root/index.json" ] && [ "$(cat "$out/root.stamp" 2>/dev/null)" = "$root_inputs" ]; then
  say "lm-test/root: up to date ($out/root)"
else
  say "lm-test/root: building"
  rm -f "$out/root.stamp"
  build_root_tree "$out/stage/root"
  pack_image root "$out/stage/root" "$out/root"
  echo "$root_inputs" >"$out/root.stamp"
  say "lm-test/root: built"
fi

say "done in $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }") s; sizes: kernel $(du -sh "$out/kernel" | cut -f1), root $(du -sh "$out/root" | cut -f1)"

if [ -z "$push" ]; then
  for n in kernel root; do echo "oci:$out/$n:latest@$(manifest_digest "$out/$n")"; done
  exit 0
fi

# Own signature policy: accept anything (local test images), independent of /etc/containers.
policy=$out/policy.json
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
for n in kernel root; do
  ref=$push/lm-test/$n:latest
  say "pushing oci:$out/$n:latest -> docker://$ref"
  skopeo --policy "$policy" copy --quiet --dest-tls-verify=false ${creds:+--dest-creds "$creds"} \
    --digestfile "$work/digest-$n" "oci:$out/$n:latest" "docker://$ref" ||
    die "push of $ref failed (registry not running: scripts/test-env.sh start? needs --creds?)"
  echo "$ref@$(cat "$work/digest-$n")"
done
