import AgentClient
import FlintlockAPI
import Foundation
import HostSystem
import Testing
import TestSupport

/// `lmctl image build` as a user runs it: reproducible digests, and images that boot through the agent.
@Suite("lmctl image build", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, apt, containerd, a registry and QEMU (always runs in CI)"))
struct ImageBuildEndToEndTests {
    /// Runs lmctl; kernel builds share one package cache so apt downloads the .deb once.
    func lmctl(_ args: [String]) async throws -> String {
        let cache = args.contains("kernel") || args.contains("kernel-modules") ? ["--cache-dir", "/tmp/lm-kernel-cache"] : []
        return try await HostProcess.run(["\(TestEnvironment.productsDirectory)/lmctl"] + args + cache)
    }

    /// The manifest digest lmctl prints last (`REF@sha256:...`).
    func digest(_ out: String) -> String { String(out.split(separator: "@").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }

    @Test("the same build twice gives the same digest (kernel, kernel-modules, minimal rootfs)", arguments: [["kernel"], ["kernel-modules"], ["rootfs", "--preset", "minimal"]])
    func reproducible(kind: [String]) async throws {
        _ = try await TestEnvironment.shared()
        let dir = "/tmp/lm-repro-\(UUID().uuidString.prefix(6))"
        defer { try? HostFiles.remove(dir) }
        let a = try await lmctl(["image", "build"] + kind + ["--tag", "x/y:a", "--output", "oci-layout:\(dir)/a"])
        let b = try await lmctl(["image", "build"] + kind + ["--tag", "x/y:a", "--output", "oci-layout:\(dir)/b"])
        #expect(digest(a).hasPrefix("sha256:"))
        #expect(digest(a) == digest(b), "\(a) vs \(b)")
        let inspected = try await HostProcess.run(["skopeo", "inspect", "--format", "{{.Digest}}", "oci:\(dir)/a:a"])
        #expect(inspected.trimmingCharacters(in: .whitespacesAndNewlines) == digest(a))
    }

    @Test("a kernel and a minimal rootfs built and pushed by lmctl pull through containerd and boot to userspace")
    func builtImagesBoot() async throws {
        let env = try await TestEnvironment.shared()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let kernel = "\(env.registry)/lm-built/kernel:\(tag)", root = "\(env.registry)/lm-built/minimal:\(tag)"
        _ = try await lmctl(["image", "build", "kernel", "--tag", kernel, "--push"])
        _ = try await lmctl(["image", "build", "rootfs", "--preset", "minimal", "--tag", root, "--push"])
        try await withAgent(env) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(.with {
                $0.id = "built"
                $0.namespace = "e2e"
                $0.vcpu = 1
                $0.memoryInMb = 256
                $0.kernel = .with { $0.image = kernel; $0.filename = "boot/vmlinuz"; $0.cmdline = ["lm_ip": "10.97.0.41/24"] }
                $0.initrd = .with { $0.image = kernel; $0.filename = "boot/initrd" }
                $0.rootVolume = .with { $0.id = "root"; $0.source.containerSource = root }
                $0.interfaces = [.with { $0.deviceID = "eth0"; $0.type = .tap }]
            })
            _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(90)) { $0.status.state == .created }
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "LIQUIDMETAL-NET-READY", timeout: .seconds(90))
            #expect(await ping("10.97.0.41"))
        }
    }

    @Test("bad inputs fail fast with a message that names them")
    func badInputs() async throws {
        _ = try await TestEnvironment.shared()
        let bin = "\(TestEnvironment.productsDirectory)/lmctl"
        let cases: [([String], String)] = [
            (["image", "build", "kernel", "--package", "linux-image-no-such-kernel", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "linux-image-no-such-kernel"),
            (["image", "build", "kernel", "--deb", "/tmp/no-such.deb", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "/tmp/no-such.deb"),
            (["image", "build", "rootfs", "--preset", "fedora", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "--preset"),
            (["image", "build", "rootfs", "--tag", "Bad//Ref", "--push"], "--tag"),
            (["image", "build", "rootfs", "--tag", "x/y:z"], "--push"),
        ]
        for (args, needle) in cases {
            let start = ContinuousClock.now
            let (status, out) = try await HostProcess.runCapturing([bin] + args)
            #expect(status != .exited(0), "\(args) should fail")
            #expect(out.contains(needle), "\(args): \(out)")
            #expect(ContinuousClock.now - start < .seconds(30), "fails fast")
        }
    }
}
