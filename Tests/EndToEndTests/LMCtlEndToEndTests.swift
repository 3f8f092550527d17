import AgentClient
import Foundation
import HostSystem
import Testing
import TestSupport

/// lmctl as a user runs it, against a real agent on TCP and on its Unix socket.
@Suite("lmctl end to end", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct LMCtlEndToEndTests {
    func lmctl(_ args: [String]) async throws -> String {
        try await HostProcess.run(["\(TestEnvironment.productsDirectory)/lmctl"] + args)
    }

    @Test("create -f YAML, list (table/json/yaml), get, logs, watch, delete --wait; the Unix socket serves the same API")
    func lmctlLifecycle() async throws {
        let env = try await TestEnvironment.shared()
        let socket = "/tmp/lm-e2e-\(UUID().uuidString.prefix(6)).sock"
        try await withAgent(env, ["--grpc-socket", socket]) { agent in
            let host = ["--host", agent.address]
            let specFile = "/tmp/lm-e2e-spec-\(UUID().uuidString.prefix(6)).yaml"
            try Data("""
                id: cli
                namespace: e2e
                vcpu: 1
                memory_in_mb: 256
                labels: {via: lmctl}
                kernel: {image: "\(env.kernelImage)", filename: boot/vmlinuz, cmdline: {lm_ip: 10.97.0.21/24}}
                initrd: {image: "\(env.kernelImage)", filename: boot/initrd}
                root_volume: {id: root, source: {container_source: "\(env.rootImage)"}}
                interfaces: [{device_id: eth0, type: TAP}]
                """.utf8).write(to: URL(fileURLWithPath: specFile))
            defer { try? FileManager.default.removeItem(atPath: specFile) }

            let created = try await lmctl(["create", "-f", specFile, "-o", "json"] + host)
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any])
            let spec = try #require(obj["spec"] as? [String: Any])
            let uid = try #require(spec["uid"] as? String)
            #expect((spec["labels"] as? [String: String]) == ["via": "lmctl"])
            #expect(spec["memory_in_mb"] as? Int == 256, "JSON uses the API's field names")

            let client = try agent.client()
            defer { client.close() }
            _ = try await client.wait(uid: uid, timeout: .seconds(90)) { $0.status.state == .created }
            let table = try await lmctl(["list"] + host)
            #expect(table.contains("NAMESPACE") && table.contains("cli") && table.contains("CREATED"))
            let yaml = try await lmctl(["get", uid] + host)
            #expect(yaml.contains("state: CREATED"))
            #expect(yaml.contains("memory_in_mb: 256"), "whole numbers stay integers in YAML")

            // The Unix socket serves the same API.
            let viaSocket = try await lmctl(["list", "--host", "unix://\(socket)", "-o", "json"])
            #expect(viaSocket.contains(uid))

            var logs = ""
            for _ in 0..<120 where !logs.contains("LIQUIDMETAL-GUEST-READY") {
                logs = try await lmctl(["logs", uid] + host)
                if !logs.contains("LIQUIDMETAL-GUEST-READY") { try await Task.sleep(for: .milliseconds(500)) }
            }
            #expect(logs.contains("LIQUIDMETAL-GUEST-READY"))
            let tail = try await lmctl(["logs", uid, "--tail", "100"] + host)
            #expect(tail.utf8.count <= 100 && !tail.isEmpty)

            // Errors read as errors, with a non-zero exit.
            let (status, out) = try await HostProcess.runCapturing(["\(TestEnvironment.productsDirectory)/lmctl", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"] + host)
            #expect(status != .exited(0))
            #expect(out.contains("notFound") || out.contains("not found"))

            // A name works where a uid does, in --namespace (default "default").
            #expect(try await lmctl(["get", "cli", "--namespace", "e2e", "-o", "json"] + host).contains(uid))
            #expect(!(try await lmctl(["logs", "cli", "--namespace", "e2e", "--tail", "100"] + host)).isEmpty)
            let (wrongNS, wrongOut) = try await HostProcess.runCapturing(["\(TestEnvironment.productsDirectory)/lmctl", "get", "cli"] + host)
            #expect(wrongNS != .exited(0) && wrongOut.contains("microVM \"cli\" not found in namespace \"default\""), "\(wrongOut)")

            let deleted = try await lmctl(["delete", "--wait", "cli", "--namespace", "e2e"] + host)
            #expect(deleted.contains("deleted \(uid)"))
            #expect(try await lmctl(["list", "-o", "json"] + host).contains(uid) == false)
        }
    }

    @Test("capacity: the host's CPUs and memory, and what its microVMs take (API and lmctl capacity)")
    func capacity() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env) { agent in
            let client = try agent.client()
            defer { client.close() }
            let empty = try await client.capacity()
            #expect(empty.vcpus == Int32(ProcessInfo.processInfo.activeProcessorCount))
            #expect(empty.memoryMb > 0 && empty.memoryAvailableMb > 0 && empty.memoryAvailableMb <= empty.memoryMb)
            #expect(empty.microvms == 0 && empty.allocatedVcpus == 0 && empty.freeVcpus == 4 * empty.vcpus, "default vcpu-overcommit 4")
            #expect(empty.providers == ["qemu"] && !empty.agentVersion.isEmpty && ["kvm", "tcg"].contains(empty.accelerator))
            _ = try await client.create(fixtureSpec(env, name: "cap-a"))
            let b = try await client.create({ var s = fixtureSpec(env, name: "cap-b"); s.vcpu = 2; s.memoryInMb = 512; return s }())
            let json = try await lmctl(["capacity", "--host", agent.address, "-o", "json"])
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            #expect(obj["microvms"] as? Int == 2 && obj["allocated_vcpus"] as? Int == 3, "\(json)")
            #expect((obj["allocated_memory_mb"] as? NSNumber)?.intValue == 768 || obj["allocated_memory_mb"] as? String == "768", "\(json)")
            try await client.delete(uid: b.spec.uid)
            #expect(try await client.capacity().allocatedVcpus == 1, "a VM being deleted no longer counts")
            #expect(try await lmctl(["capacity", "--host", agent.address]).contains("vCPUs"))
        }
    }
}
