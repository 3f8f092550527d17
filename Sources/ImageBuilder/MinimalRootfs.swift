import Foundation
import HostSystem

/// The `minimal` root filesystem: busybox (static) with its applets, a few files under /etc and an
/// /sbin/init that prints readiness markers on the console and can configure eth0 from the kernel
/// command line (`lm_ip=ADDR/PREFIX`, `lm_gw=GW`, `lm_hostname=NAME`; `lm_panic=1` and
/// `lm_poweroff=1` for tests).
public struct MinimalRootfs: Sendable {
    public var busybox: String
    public init(busybox: String = "/bin/busybox") { self.busybox = busybox }

    /// Writes the tree into `directory` (created; must not exist or be empty).
    public func write(to directory: String) async throws {
        guard HostFiles.exists(busybox) else { throw ImageBuildError("\(busybox) not found: install busybox-static") }
        let fm = FileManager.default
        try HostFiles.remove(directory)
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "run", "root", "var/log"] {
            try HostFiles.createDirectory("\(directory)/\(d)")
        }
        try fm.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: "\(directory)/tmp")
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: "\(directory)/root")
        try fm.copyItem(atPath: busybox, toPath: "\(directory)/bin/busybox")
        try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: "\(directory)/bin/busybox")
        for path in try await HostProcess.run([busybox, "--list-full"]).split(separator: "\n").map(String.init) {
            guard !["sbin/init", "linuxrc", "bin/busybox"].contains(path) else { continue }
            let depth = path.split(separator: "/").count - 1
            let target = String(repeating: "../", count: depth) + "bin/busybox"
            try? fm.removeItem(atPath: "\(directory)/\(path)")
            try fm.createSymbolicLink(atPath: "\(directory)/\(path)", withDestinationPath: target)
        }
        try fm.createSymbolicLink(atPath: "\(directory)/var/run", withDestinationPath: "../run")
        let files: [(String, String, Int)] = [
            ("etc/hostname", "lm-guest\n", 0o644),
            ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/group", "root:x:0:\n", 0o644),
            ("etc/os-release", "NAME=\"Liquid Metal minimal\"\nID=lm-minimal\nPRETTY_NAME=\"Liquid Metal minimal (busybox)\"\n", 0o644),
            ("etc/resolv.conf", "", 0o644),
            ("sbin/init", Self.initScript, 0o755),
        ]
        for (path, text, mode) in files {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory)/\(path)"))
            try fm.setAttributes([.posixPermissions: mode], ofItemAtPath: "\(directory)/\(path)")
        }
    }

    static let initScript = #"""
#!/bin/sh
# /sbin/init (PID 1) of the minimal image, written by lmctl image build rootfs --preset minimal.
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
"""# + "\n"
}
