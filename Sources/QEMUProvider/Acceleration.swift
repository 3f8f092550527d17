#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem
import Logging

/// Chooses QEMU's accelerator: KVM only where a guest really runs under it, else TCG.
public enum QEMUAcceleration {
    /// `requested` is `auto`, `kvm` or `tcg`. For `auto`, boots a tiny multiboot guest under KVM that
    /// reports through the isa-debug-exit port; KVM is used only when that guest's exit code arrives.
    public static func choose(requested: String, binary: String, workDirectory: String, logger: Logger) async -> String {
        switch requested {
        case "kvm", "tcg": return requested
        default: break
        }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else {
            logger.info("acceleration: tcg (/dev/kvm is not usable)")
            return "tcg"
        }
        let probe = "\(workDirectory)/kvm-probe.bin"
        do {
            try HostFiles.createDirectory(workDirectory)
            try HostFiles.writeAtomically(probeImage(), to: probe)
            let ok = try await runProbe(binary: binary, image: probe, accel: "kvm")
            logger.info("acceleration: \(ok ? "kvm (probe guest ran)" : "tcg (probe guest did not run under KVM)")")
            return ok ? "kvm" : "tcg"
        } catch {
            logger.info("acceleration: tcg (KVM probe failed: \(error))")
            return "tcg"
        }
    }

    /// Runs the probe; true when the guest wrote its code to the debug-exit port.
    static func runProbe(binary: String, image: String, accel: String) async throws -> Bool {
        let pid = try HostProcess.spawn([
            binary, "-M", "pc", "-accel", accel, "-nodefaults", "-no-user-config", "-display", "none",
            "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01", "-kernel", image,
        ])
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let t = HostProcess.reapIfExited(pid) { return t == .exited(0x31 << 1 | 1) }
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(pid, SIGKILL)
        _ = HostProcess.waitFor(pid)
        return false
    }

    /// A flat multiboot (a.out kludge) image loaded at 1 MiB whose code writes 0x31 to port 0xf4.
    static func probeImage() -> Data {
        func le(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)] }
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0000
        let checksum = UInt32(bitPattern: -Int32(bitPattern: magic &+ flags))
        let load: UInt32 = 0x0010_0000, entry: UInt32 = load + 0x20
        var b = le(magic) + le(flags) + le(checksum) + le(load) + le(load) + le(0) + le(0) + le(entry)
        b += [0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]  // mov al,0x31; out 0xf4,al; hlt; jmp $-1
        b += [UInt8](repeating: 0, count: 64)
        return Data(b)
    }
}
