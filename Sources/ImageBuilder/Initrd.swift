import Foundation
import HostSystem

/// Builds the microVM initrd: busybox, the kernel modules a guest needs for virtio disks and
/// network and for cloud-init seed filesystems (vfat, iso9660), and an /init that loads them,
/// mounts the root disk and switches to its /sbin/init.
public struct InitrdBuilder: Sendable {
    /// Modules loaded in this order when they are modules of the kernel (built-ins are skipped).
    public static let defaultModules = [
        "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net",
        "crc32c_generic", "ext4", "fat", "vfat", "nls_cp437", "nls_iso8859_1", "nls_ascii", "nls_utf8", "isofs",
    ]

    public var kernel: KernelPackage
    public var busybox: String
    public var modules: [String]
    public var mtime: Int

    public init(kernel: KernelPackage, busybox: String = "/bin/busybox", modules: [String] = InitrdBuilder.defaultModules, mtime: Int) {
        self.kernel = kernel
        self.busybox = busybox
        self.modules = modules
        self.mtime = mtime
    }

    /// Resolves modules and their dependencies: (load order, files by module name).
    func resolveModules() throws -> ([String], [String: String]) {
        let dir = kernel.modulesDirectory
        var files: [String: String] = [:]
        let walker = FileManager.default.enumerator(atPath: "\(dir)/kernel")
        while let rel = walker?.nextObject() as? String {
            guard rel.hasSuffix(".ko") || rel.contains(".ko.") else { continue }
            let base = (rel as NSString).lastPathComponent
            let name = String(base[..<base.range(of: ".ko")!.lowerBound]).replacingOccurrences(of: "-", with: "_")
            files[name] = "\(dir)/kernel/\(rel)"
        }
        let builtin = Set(((try? String(contentsOfFile: "\(dir)/modules.builtin", encoding: .utf8)) ?? "")
            .split(separator: "\n").map { line -> String in
                let base = (String(line) as NSString).lastPathComponent
                return String(base[..<(base.range(of: ".ko")?.lowerBound ?? base.endIndex)]).replacingOccurrences(of: "-", with: "_")
            })
        var order: [String] = []
        var seen: Set<String> = []
        func add(_ raw: String, required: Bool) throws {
            let name = raw.replacingOccurrences(of: "-", with: "_")
            guard seen.insert(name).inserted, !builtin.contains(name) else { return }
            guard let file = files[name] else {
                if required { throw ImageBuildError("module \(name) is neither built into \(kernel.release) nor in the package") }
                return
            }
            for dep in try Self.dependencies(of: file) { try add(dep, required: true) }
            order.append(name)
        }
        for m in modules { try add(m, required: false) }
        return (order, files)
    }

    /// The `depends=` entry of a module's .modinfo section.
    static func dependencies(of file: String) throws -> [String] {
        let data = try moduleData(file)
        guard let r = data.range(of: Data("depends=".utf8)) else { return [] }
        let end = data[r.upperBound...].firstIndex(of: 0) ?? data.endIndex
        return String(decoding: data[r.upperBound..<end], as: UTF8.self).split(separator: ",").map(String.init).filter { !$0.isEmpty }
    }

    /// A module's bytes, decompressed when the package ships .ko.xz / .ko.zst / .ko.gz.
    static func moduleData(_ file: String) throws -> Data {
        if file.hasSuffix(".ko") { return try Data(contentsOf: URL(fileURLWithPath: file)) }
        throw ImageBuildError("compressed module \(file): unpack the package's modules first")
    }

    /// The initrd as a newc cpio archive (not yet compressed).
    public func archive() throws -> CpioArchive {
        let (order, files) = try resolveModules()
        var a = CpioArchive(mtime: mtime)
        for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "lib/modules/\(kernel.release)"] {
            a.add(.init(path: d, mode: 0o755, kind: .directory))
        }
        a.add(.init(path: "sbin", mode: 0o777, kind: .symlink("bin")))
        a.add(.init(path: "dev/console", mode: 0o600, kind: .characterDevice(major: 5, minor: 1)))
        a.add(.init(path: "dev/null", mode: 0o666, kind: .characterDevice(major: 1, minor: 3)))
        guard let bb = FileManager.default.contents(atPath: busybox) else {
            throw ImageBuildError("\(busybox) not found: install busybox-static")
        }
        a.add(.init(path: "bin/busybox", mode: 0o755, kind: .file(bb)))
        for applet in ["sh", "mount", "insmod", "switch_root", "sleep", "cat", "mkdir", "poweroff", "sync", "echo"] {
            a.add(.init(path: "bin/\(applet)", mode: 0o777, kind: .symlink("busybox")))
        }
        for m in order {
            a.add(.init(path: "lib/modules/\(kernel.release)/\(m).ko", mode: 0o644, kind: .file(try Self.moduleData(files[m]!))))
        }
        a.add(.init(path: "init", mode: 0o755, kind: .file(Data(Self.initScript(release: kernel.release, modules: order).utf8))))
        return a
    }

    static func initScript(release: String, modules: [String]) -> String {
        """
        #!/bin/busybox sh
        # initrd /init, written by lmctl image build kernel for kernel \(release).
        # Loads the virtio drivers, mounts the root disk (ext4, read-write) and switches to its
        # /sbin/init. Kernel command line: lm_root=DEV (default /dev/vda).
        export PATH=/bin
        kver=\(release)
        modules="\(modules.joined(separator: " "))"
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        exec </dev/console >/dev/console 2>&1
        log() { echo "lm-initrd: $*"; }
        fail() { log "$*"; log "powering off"; sync; poweroff -f; while :; do sleep 1; done; }
        for m in $modules; do insmod "/lib/modules/$kver/$m.ko" || log "insmod $m failed"; done
        root=/dev/vda
        for arg in $(cat /proc/cmdline); do case "$arg" in lm_root=*) root=${arg#lm_root=} ;; esac; done
        i=0
        while [ ! -b "$root" ]; do
          i=$((i + 1)); [ "$i" -le 100 ] || fail "root disk $root did not appear within 10 s"
          sleep 0.1
        done
        mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root (ext4) on /newroot"
        # /sbin/init may be an absolute symlink (Debian: /lib/systemd/systemd), which only resolves inside the new root.
        [ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || fail "$root has no /sbin/init"
        for d in dev proc sys; do mkdir -p "/newroot/$d"; mount --move "/$d" "/newroot/$d" || fail "cannot move /$d"; done
        exec switch_root /newroot /sbin/init

        """
    }
}
