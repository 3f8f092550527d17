#!/usr/bin/env bash
# boot-fixture-by-hand.sh — smoke check of the test images without containerd or the agent:
# boots lm-test/kernel + lm-test/root directly with QEMU (microvm, TCG) and checks that
#   1. the guest prints LIQUIDMETAL-GUEST-READY and lm_poweroff=1 ends QEMU   (boot)
#   2. with a TAP on a bridge and lm_ip=..., the guest prints LIQUIDMETAL-NET-READY
#      and answers ping from the host                                          (net)
#   3. lm_panic=1 panics the guest after the marker and ends QEMU (-no-reboot) (panic)
# and reports how long each boot took to its marker.
#
# Usage: scripts/boot-fixture-by-hand.sh [--out DIR] [--work DIR] [--timeout SECS]
#                                        [--no-net] [--no-panic]
#   --out DIR       where build-test-images.sh put the images
#                   (default ${LM_TEST_IMAGES:-/tmp/lm-test-images})
#   --work DIR      scratch space: unpacked images, root.ext4, serial logs
#                   (default OUT/boot-check; kept after the run for inspection)
#   --timeout SECS  how long to wait for a marker (default 60)
#   --no-net        skip the network check (needs no bridge/TAP then)
#   --no-panic      skip the panic check
#
# The network check creates bridge lmtestbr0 (10.99.0.1/24, IPv6 off) and TAP lmtesttap0
# in the host namespace and removes both at the end (also on failure or Ctrl-C). Nothing
# else is attached to the bridge, so guest traffic cannot leave it.
#
# Needs (Debian 12 packages; this script installs nothing): qemu-system-x86
# (qemu-system-x86_64), umoci, e2fsprogs (mkfs.ext4), iproute2 (ip), iputils-ping
# (ping; busybox ping is used if missing), util-linux (flock). Run as root (TAP and bridge).
set -euo pipefail

prog=$(basename "$0")
die() { echo "$prog: error: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

out=${LM_TEST_IMAGES:-/tmp/lm-test-images}
work="" timeout=60 do_net=1 do_panic=1
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --work) [ $# -ge 2 ] || die "--work needs a directory"; work=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
    --no-net) do_net=0; shift ;;
    --no-panic) do_panic=0; shift ;;
    *) echo "$prog: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds"
[ "$(id -u)" = 0 ] || die "must run as root (TAP/bridge, root-owned image files)"

need() { command -v "$1" >/dev/null || die "'$1' not found: apt-get install -y $2"; }
need qemu-system-x86_64 qemu-system-x86
need umoci umoci
need mkfs.ext4 e2fsprogs
need ip iproute2
need flock util-linux
ping=(ping)
command -v ping >/dev/null || ping=(busybox ping)

if [ ! -f "$out/kernel/index.json" ] || [ ! -f "$out/root/index.json" ]; then
  die "no images in $out (run scripts/build-test-images.sh --out $out first)"
fi
out=$(cd "$out" && pwd)
work=${work:-$out/boot-check}
mkdir -p "$work"
work=$(cd "$work" && pwd)

# One run at a time on this machine: the bridge and TAP names are fixed.
mkdir -p /run/lock
exec 9>/run/lock/lm-boot-fixture-by-hand.lock
flock -n 9 || die "another $prog is running (lock /run/lock/lm-boot-fixture-by-hand.lock)"

bridge=lmtestbr0 tap=lmtesttap0
host_ip=10.99.0.1 guest_ip=10.99.0.2 prefix=24 mac=02:00:00:00:00:01
cr=$'\r'   # the serial console ends lines with CR LF
base_cmdline="console=ttyS0 panic=-1 quiet tsc_early_khz=2000000 tsc=reliable"

qemu_pid=""
net_created=0

# --- cleanup -----------------------------------------------------------------------------

stop_qemu() {
  [ -n "$qemu_pid" ] || return 0
  if kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$qemu_pid" 2>/dev/null || true
  fi
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
}

net_down() {
  ip link del "$tap" 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
}

cleanup() {
  stop_qemu
  [ "$net_created" = 0 ] || net_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -----------------------------------------------------------------------------

elapsed() { awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $1 }"; }

# boot NAME EXTRA_CMDLINE [QEMU_ARGS...]: start QEMU in the background; serial console
# goes to $work/NAME.log, QEMU's own output to $work/NAME.qemu.log. Sets qemu_pid, t_start.
boot() {
  local name=$1 extra=$2; shift 2
  rm -f "$work/$name.log" "$work/$name.qemu.log"
  t_start=$EPOCHREALTIME
  qemu-system-x86_64 \
    -M microvm,x-option-roms=off,rtc=on -accel tcg -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -monitor none \
    -serial "file:$work/$name.log" -no-reboot \
    -kernel "$kernel_dir/boot/vmlinuz" -initrd "$kernel_dir/boot/initrd" \
    -append "$base_cmdline $extra" \
    -drive "id=root,file=$work/root.ext4,format=raw,if=none" \
    -device virtio-blk-device,drive=root \
    "$@" </dev/null >"$work/$name.qemu.log" 2>&1 &
  qemu_pid=$!
}

# wait_marker NAME REGEX: wait (up to --timeout) for a serial console line matching REGEX.
wait_marker() {
  local name=$1 re=$2 deadline=$((SECONDS + timeout))
  while ! grep -qE "$re" "$work/$name.log" 2>/dev/null; do
    if ! kill -0 "$qemu_pid" 2>/dev/null; then
      grep -qE "$re" "$work/$name.log" 2>/dev/null && break   # printed just before exiting
      fail_boot "$name" "QEMU exited before the guest printed /$re/"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail_boot "$name" "no /$re/ within $timeout s"
    sleep 0.05
  done
}

# wait_exit NAME SECS: wait for QEMU to exit on its own (guest poweroff or panic).
wait_exit() {
  local name=$1 deadline=$((SECONDS + $2))
  while kill -0 "$qemu_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail_boot "$name" "QEMU still runs $2 s after the marker"
    sleep 0.05
  done
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
}

fail_boot() {
  say "$1: FAILED: $2"
  say "--- serial console ($work/$1.log), last lines:"
  tail -n 30 "$work/$1.log" >&2 2>/dev/null || true
  say "--- QEMU output ($work/$1.qemu.log):"
  tail -n 10 "$work/$1.qemu.log" >&2 2>/dev/null || true
  exit 1
}

# --- prepare: unpack the images, make the root disk ---------------------------------------

kernel_dir=$work/kernel-bundle/rootfs
say "unpacking images from $out into $work"
rm -rf "$work/kernel-bundle" "$work/root-bundle"
umoci unpack --image "$out/kernel:latest" "$work/kernel-bundle" >/dev/null
umoci unpack --image "$out/root:latest" "$work/root-bundle" >/dev/null
if [ ! -f "$kernel_dir/boot/vmlinuz" ] || [ ! -f "$kernel_dir/boot/initrd" ]; then
  die "the kernel image has no boot/vmlinuz or boot/initrd"
fi
[ -e "$work/root-bundle/rootfs/sbin/init" ] || die "the root image has no /sbin/init"

rm -f "$work/root.ext4"
mkfs.ext4 -q -F -L lmroot -d "$work/root-bundle/rootfs" "$work/root.ext4" 64M >/dev/null
say "root disk: $work/root.ext4 (64M ext4)"

results=()

# --- 1. boot to the marker, then poweroff ------------------------------------------------

say "boot: booting (lm_poweroff=1), waiting up to $timeout s for LIQUIDMETAL-GUEST-READY"
boot boot "lm_poweroff=1"
wait_marker boot "^LIQUIDMETAL-GUEST-READY$cr?\$"
t_ready=$(elapsed "$t_start")
wait_exit boot 30
t_exit=$(elapsed "$t_start")
say "boot: OK: marker after ${t_ready} s, QEMU exited (poweroff) after ${t_exit} s"
results+=("boot:  GUEST-READY after ${t_ready} s, poweroff/QEMU exit after ${t_exit} s")

# --- 2. network: TAP on a bridge, static IP from the command line, ping -------------------

if [ "$do_net" = 1 ]; then
  [ -c /dev/net/tun ] || die "/dev/net/tun missing (modprobe tun)"
  net_down                                   # leftovers of an interrupted run
  net_created=1
  ip link add "$bridge" type bridge
  echo 1 >"/proc/sys/net/ipv6/conf/$bridge/disable_ipv6" 2>/dev/null || true
  ip addr add "$host_ip/$prefix" dev "$bridge"
  ip link set "$bridge" up
  ip tuntap add dev "$tap" mode tap
  ip link set "$tap" master "$bridge"
  ip link set "$tap" up
  say "net: $tap on $bridge ($host_ip/$prefix); booting with lm_ip=$guest_ip/$prefix"
  boot net "lm_ip=$guest_ip/$prefix lm_gw=$host_ip" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-device,netdev=n0,mac=$mac"
  wait_marker net "^LIQUIDMETAL-NET-(READY|FAILED)"
  t_ready=$(elapsed "$t_start")
  grep -qE "^LIQUIDMETAL-NET-READY $guest_ip$cr?\$" "$work/net.log" ||
    fail_boot net "guest reported: $(grep -E '^LIQUIDMETAL-NET-' "$work/net.log" | tr -d '\r')"
  ok=0
  for try in 1 2 3; do
    if "${ping[@]}" -c 1 -W 2 "$guest_ip" >/dev/null 2>&1; then ok=1; break; fi
    say "net: ping $guest_ip: try $try failed"
  done
  [ "$ok" = 1 ] || fail_boot net "no ping reply from $guest_ip in 3 tries"
  say "net: OK: NET-READY after ${t_ready} s, ping $guest_ip answered (try $try)"
  results+=("net:   NET-READY after ${t_ready} s, ping answered on try $try")
  stop_qemu
  net_down
  net_created=0
fi

# --- 3. lm_panic=1 ends the VM -----------------------------------------------------------

if [ "$do_panic" = 1 ]; then
  say "panic: booting with lm_panic=1"
  boot panic "lm_panic=1"
  wait_marker panic "^LIQUIDMETAL-GUEST-READY$cr?\$"
  t_ready=$(elapsed "$t_start")
  wait_exit panic 30
  t_exit=$(elapsed "$t_start")
  grep -q 'Kernel panic' "$work/panic.log" || fail_boot panic "QEMU exited but the console shows no kernel panic"
  say "panic: OK: marker after ${t_ready} s, kernel panic ended QEMU after ${t_exit} s"
  results+=("panic: GUEST-READY after ${t_ready} s, panic/QEMU exit after ${t_exit} s")
fi

echo "boot-fixture-by-hand: all checks passed (kernel $(cat "$out/kernel-version" 2>/dev/null || echo '?'))"
printf '  %s\n' "${results[@]}"
echo "  serial logs: $work/*.log"
