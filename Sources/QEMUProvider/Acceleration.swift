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
        // Software-based nested KVM (PVM) offers /dev/kvm without vmx/svm: small probe guests run
        // there but Linux guests hang after real-mode setup (measured; see
        // shared/notes/microvms-on-these-machines.md). Real KVM needs hardware virtualization.
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
        guard flags.contains("vmx") || flags.contains("svm") else {
            logger.info("acceleration: tcg (/dev/kvm exists but the CPU has no vmx/svm: nested software KVM does not boot Linux guests)")
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

    /// A flat multiboot (a.out kludge) image loaded at 1 MiB: from 32-bit protected mode it builds
    /// identity page tables, enables PAE, long mode and paging, jumps to 64-bit code and writes
    /// 0x31 to the isa-debug-exit port (QEMU then exits with status 0x63). Assembled from
    /// scripts/kvm-probe.S (`as --32` then `ld -m elf_i386 -Ttext=0x100000 --oformat binary`).
    static func probeImage() -> Data {
        Data([
            0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00,
            0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x10, 0x00,
            0xc7, 0x05, 0x00, 0x00, 0x18, 0x00, 0x03, 0x10, 0x18, 0x00, 0xc7, 0x05, 0x04, 0x00, 0x18, 0x00,
            0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x10, 0x18, 0x00, 0x03, 0x20, 0x18, 0x00, 0xc7, 0x05,
            0x04, 0x10, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x20, 0x18, 0x00, 0x83, 0x00,
            0x00, 0x00, 0xc7, 0x05, 0x04, 0x20, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x00, 0x18,
            0x00, 0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb9, 0x80, 0x00,
            0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x01,
            0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0x0f, 0x01, 0x15, 0xb8, 0x00, 0x10, 0x00, 0xea, 0x94, 0x00,
            0x10, 0x00, 0x08, 0x00, 0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x8d, 0x74, 0x26, 0x00, 0x90,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x20, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x92, 0x00, 0x00, 0x17, 0x00, 0xa0, 0x00, 0x10, 0x00,
        ])
    }
}
