#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem
import Logging
import MicroVMCore

/// Runs microVMs with QEMU's `microvm` machine: virtio-mmio disks and NICs, the serial console
/// appended to `<dir>/console.log`, QMP sockets for state and shutdown. QEMU runs in a session of
/// its own so it outlives an agent restart; the agent re-adopts it by pid file and command line.
public final class QEMUVMM: VMMProvider {
    public let name = "qemu"
    public let binary: String
    public let accelerator: String
    /// How long a guest gets to power off after an ACPI request before SIGTERM, and SIGTERM before SIGKILL.
    public let shutdownTimeout: Duration
    let logger: Logger
    let reaper = ChildReaper()

    public init(binary: String, accelerator: String, shutdownTimeout: Duration = .seconds(10), logger: Logger) {
        self.binary = binary
        self.accelerator = accelerator
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
    }

    public var defaultCmdline: [(String, String)] {
        // reboot=t (triple fault): with -no-reboot QEMU then exits; reboot=k on microvm rebooted once in place (measured).
        var c: [(String, String)] = [("console", "ttyS0"), ("reboot", "t"), ("panic", "-1"), ("root", "/dev/vda"), ("rw", "")]
        // The microvm machine has no HPET or PM timer; under TCG the TSC must be trusted or the
        // guest may hang calibrating it (see shared/notes/microvms-on-these-machines.md).
        if accelerator == "tcg" { c += [("tsc_early_khz", "2000000"), ("tsc", "reliable")] }
        return c
    }

    // Files in a VM's directory.
    public static func pidFile(_ dir: String) -> String { "\(dir)/qemu.pid" }
    public static func consoleLog(_ dir: String) -> String { "\(dir)/console.log" }
    public static func vmmLog(_ dir: String) -> String { "\(dir)/qemu.log" }
    public static func exitFile(_ dir: String) -> String { "\(dir)/qemu.exit" }
    /// QMP sockets; Unix socket paths are limited to 107 bytes, so long directories use /run.
    public static func qmpSocket(_ dir: String, uid: String, events: Bool = false) -> String {
        let file = events ? "qmp-events.sock" : "qmp.sock"
        let p = "\(dir)/\(file)"
        return p.utf8.count < 100 ? p : "/run/liquidmetal/\(uid)-\(file)"
    }

    /// The full QEMU command line for a VM.
    public func arguments(for s: VMLaunchSpec) -> [String] {
        let dir = s.directory
        var a = [
            binary, "-name", "lm-\(s.ref.namespace)-\(s.ref.name),process=lm-\(s.ref.uid.suffix(8).lowercased())",
            "-uuid", Self.uuid(from: s.ref.uid),
            "-M", "microvm,x-option-roms=off,rtc=on", "-accel", accelerator,
            "-cpu", accelerator == "kvm" ? "host" : "max",
            "-m", "\(s.memoryInMB)", "-smp", "\(s.vcpu)",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", "file,id=console,path=\(Self.consoleLog(dir)),append=on", "-serial", "chardev:console",
            "-kernel", s.kernelPath,
        ]
        if let initrd = s.initrdPath { a += ["-initrd", initrd] }
        a += ["-append", s.kernelCmdline]
        for (i, d) in s.disks.enumerated() {
            a += ["-drive", "id=disk\(i),file=\(d.path),format=\(d.format),if=none\(d.readOnly ? ",readonly=on" : "")",
                  "-device", "virtio-blk-device,drive=disk\(i)"]
        }
        var passedFD: Int32 = 3  // macvtap devices arrive as descriptors 3, 4, ... (see start)
        for (i, n) in s.nics.enumerated() {
            if n.isMacvtap {
                a += ["-netdev", "tap,id=net\(i),fd=\(passedFD)"]
                passedFD += 1
            } else {
                a += ["-netdev", "tap,id=net\(i),ifname=\(n.tapName),script=no,downscript=no"]
            }
            a += ["-device", "virtio-net-device,netdev=net\(i),mac=\(n.mac)"]
        }
        a += ["-qmp", "unix:\(Self.qmpSocket(dir, uid: s.ref.uid)),server=on,wait=off",
              "-qmp", "unix:\(Self.qmpSocket(dir, uid: s.ref.uid, events: true)),server=on,wait=off",
              "-pidfile", Self.pidFile(dir)]
        return a
    }

    /// A stable UUID for the VM (QEMU's `-uuid`), from its ULID.
    static func uuid(from uid: String) -> String {
        var h: [UInt8] = Array(repeating: 0, count: 16)
        for (i, b) in uid.utf8.enumerated() { h[i % 16] = h[i % 16] &* 31 &+ b }
        let hex = h.map { String(format: "%02x", $0) }.joined()
        let c = Array(hex)
        return "\(String(c[0..<8]))-\(String(c[8..<12]))-\(String(c[12..<16]))-\(String(c[16..<20]))-\(String(c[20..<32]))"
    }

    public func start(_ s: VMLaunchSpec) async throws -> Int32 {
        let dir = s.directory
        for sock in [Self.qmpSocket(dir, uid: s.ref.uid), Self.qmpSocket(dir, uid: s.ref.uid, events: true)] {
            try HostFiles.createDirectory((sock as NSString).deletingLastPathComponent)
            try HostFiles.remove(sock)
        }
        try HostFiles.remove(Self.pidFile(dir))
        try HostFiles.remove(Self.exitFile(dir))
        let logFD = open(Self.vmmLog(dir), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else { throw AgentError(.internalError, "cannot open \(Self.vmmLog(dir))") }
        defer { close(logFD) }
        // A macvtap is handed over open: its character device /dev/tap<ifindex>.
        var tapFDs: [Int32] = []
        defer { for fd in tapFDs { close(fd) } }
        for n in s.nics where n.isMacvtap {
            let index = (try? String(contentsOfFile: "/sys/class/net/\(n.tapName)/ifindex", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            let fd = open("/dev/tap\(index)", O_RDWR | O_CLOEXEC)
            guard !index.isEmpty, fd >= 0 else {
                throw AgentError(.failedPrecondition, "cannot open the macvtap \(n.tapName) (/dev/tap\(index)): errno \(errno)")
            }
            tapFDs.append(fd)
        }
        let argv = arguments(for: s)
        let pid = try HostProcess.spawn(argv, stdout: logFD, stderr: logFD, newSession: true, passing: tapFDs)
        reaper.watch(pid: pid, exitFile: Self.exitFile(dir))
        logger.info("started qemu", metadata: ["uid": "\(s.ref.uid)", "pid": "\(pid)", "accel": "\(accelerator)"])
        // QEMU writes its pid file and opens its sockets once the machine is set up; an early
        // exit (bad arguments, missing file) is reported with QEMU's own words.
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if HostFiles.exists(Self.qmpSocket(dir, uid: s.ref.uid)) && HostFiles.exists(Self.pidFile(dir)) { return pid }
            if let t = reaper.termination(of: pid) {
                let log = String(decoding: HostFiles.tail(Self.vmmLog(dir), maxBytes: 2000) ?? Data(), as: UTF8.self)
                throw AgentError(.failedPrecondition, "qemu \(t) before the VM started: \(log.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        kill(pid, SIGKILL)
        throw AgentError(.internalError, "qemu did not come up within 30 s")
    }

    /// The recorded pid, if that process is alive and really this VM's QEMU.
    /// Falls back to scanning /proc, so a QEMU started just before an agent crash (before it
    /// wrote its pid file) is found rather than started twice.
    public func livePID(directory dir: String) -> Int32? {
        let pidFile = Self.pidFile(dir)
        if let s = try? String(contentsOfFile: pidFile, encoding: .utf8),
           let pid = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)), HostProcess.isAlive(pid),
           let cmd = HostProcess.commandLine(of: pid), cmd.contains(pidFile) {
            return pid
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for e in entries {
            guard let pid = Int32(e), let cmd = HostProcess.commandLine(of: pid), cmd.contains(pidFile), HostProcess.isAlive(pid) else { continue }
            return pid
        }
        return nil
    }

    public func state(of ref: MicroVMRef, directory dir: String) async -> VMMRunState {
        guard let pid = livePID(directory: dir) else {
            if let reason = exitReason(directory: dir) { return .exited(reason: reason) }
            return .notRunning
        }
        do {
            let r = try await QMP.execute(socket: Self.qmpSocket(dir, uid: ref.uid), command: "query-status", timeout: 3) as? [String: Any]
            if (r?["running"] as? Bool) == true { return .running(pid: pid) }
            return .starting(pid: pid)
        } catch {
            return .starting(pid: pid)
        }
    }

    /// Why the VM's QEMU ended, if it did: a guest kernel panic found on the console, the
    /// guest's own power-off, or QEMU's exit status.
    public func exitReason(directory dir: String) -> String? {
        let exit = (try? String(contentsOfFile: Self.exitFile(dir), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if let line = Self.lastBootPanic(consoleTail: HostFiles.tail(Self.consoleLog(dir), maxBytes: 65536) ?? Data()) {
            return "guest kernel panic: \(line)"
        }
        if let exit, !exit.isEmpty {
            let log = String(decoding: HostFiles.tail(Self.vmmLog(dir), maxBytes: 500) ?? Data(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return "qemu \(exit)" + (log.isEmpty ? "" : ": \(log.split(separator: "\n").last ?? "")")
        }
        return nil
    }

    /// The kernel's panic line from the last boot on a console log, if it panicked. Serial lines end
    /// in CR LF (one Character in Swift), so lines are split on both.
    static func lastBootPanic(consoleTail: Data) -> String? {
        let lines = String(decoding: consoleTail, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
        let lastBoot = lines.lastIndex(where: { $0.contains("Linux version") }) ?? lines.startIndex
        return lines[lastBoot...].last(where: { $0.contains("Kernel panic") }).map { $0.trimmingCharacters(in: .whitespaces) }
    }

    public func stop(_ ref: MicroVMRef, directory dir: String) async throws {
        guard let pid = livePID(directory: dir) else { return }
        logger.info("stopping qemu", metadata: ["uid": "\(ref.uid)", "pid": "\(pid)"])
        _ = try? await QMP.execute(socket: Self.qmpSocket(dir, uid: ref.uid), command: "system_powerdown", timeout: 2)
        if await waitGone(pid, for: shutdownTimeout) { return }
        kill(pid, SIGTERM)
        if await waitGone(pid, for: shutdownTimeout) { return }
        logger.warning("qemu ignored SIGTERM; killing it", metadata: ["uid": "\(ref.uid)", "pid": "\(pid)"])
        kill(pid, SIGKILL)
        guard await waitGone(pid, for: .seconds(10)) else {
            throw AgentError(.internalError, "qemu pid \(pid) of \(ref) survived SIGKILL")
        }
    }

    func waitGone(_ pid: Int32, for d: Duration) async -> Bool {
        let deadline = ContinuousClock.now + d
        while ContinuousClock.now < deadline {
            if !HostProcess.isAlive(pid) { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return !HostProcess.isAlive(pid)
    }

    /// Follows the VM's QMP event socket; `onExit` runs as soon as QEMU goes away.
    public func watchExit(of ref: MicroVMRef, directory dir: String, onExit: @escaping @Sendable () -> Void) -> Bool {
        QMP.follow(socket: Self.qmpSocket(dir, uid: ref.uid, events: true), onEvent: { [logger] event, data in
            let notable: Set<String> = ["SHUTDOWN", "POWERDOWN", "RESET", "STOP", "GUEST_PANICKED", "BLOCK_IO_ERROR"]
            logger.log(level: notable.contains(event) ? .info : .debug, "qemu event \(event)", metadata: ["uid": "\(ref.uid)", "data": "\(data)"])
        }, onClose: onExit)
    }

    public var writableLayerFormat: String { "qcow2" }
    public func consoleLogPath(directory: String) -> String { Self.consoleLog(directory) }

    /// Creates the VM's writable layer over a shared base image: a qcow2 overlay.
    @discardableResult
    public func createWritableLayer(base: String, at path: String, sizeInMB: Int?) async throws -> Int64 {
        var st = stat()
        guard stat(base, &st) == 0 else { throw AgentError(.internalError, "volume image \(base) is missing") }
        // A size below the image's is not a shrink: the disk stays as large as the image.
        let size = (max(Int64(st.st_size), Int64(sizeInMB ?? 0) << 20) + 511) / 512 * 512  // qcow2 sizes are whole sectors
        if HostFiles.exists(path) { return size }
        let tmp = path + ".partial"
        try HostFiles.remove(tmp)
        try await HostProcess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, tmp, String(size)])
        guard rename(tmp, path) == 0 else { throw AgentError(.internalError, "cannot move \(tmp) to \(path)") }
        return size
    }
}

/// Reaps the QEMU processes this agent started, as soon as they end, and writes how each ended
/// next to it (so the reason survives an agent restart).
final class ChildReaper: Sendable {
    private let ended = LockedDictionary<Int32, HostProcess.Termination>()

    func watch(pid: Int32, exitFile: String) {
        Thread.detachNewThread { [ended] in
            let t = HostProcess.waitFor(pid)
            try? HostFiles.writeAtomically(Data(t.description.utf8), to: exitFile)
            ended.set(pid, t)
        }
    }

    func termination(of pid: Int32) -> HostProcess.Termination? { ended.get(pid) }
}

final class LockedDictionary<K: Hashable & Sendable, V: Sendable>: @unchecked Sendable {
    private var values: [K: V] = [:]
    private let lock = NSLock()
    func get(_ k: K) -> V? { lock.withLock { values[k] } }
    func set(_ k: K, _ v: V) { lock.withLock { values[k] = v } }
}
