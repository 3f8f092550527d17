import AgentClient
import Foundation
import GRPCCore
import Testing
import TestSupport

/// Creates the host has no room for are refused, not queued to fail later or to starve the host.
@Suite("Admission end to end", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct AdmissionEndToEndTests {
    @Test("RESOURCE_EXHAUSTED naming memory or vcpu once the host is full; concurrent creates cannot both take the last room")
    func refusesBeyondCapacity() async throws {
        let env = try await TestEnvironment.shared()
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        try #require(cpus >= 2, "needs two CPUs to leave one vCPU free")
        let totalMB = Int(ProcessInfo.processInfo.physicalMemory >> 20)
        // Room for two 256 MiB guests and their 64 MiB VMMs, not three.
        let room = 700
        try await withAgent(env, ["--vcpu-overcommit", "1", "--memory-reserve-mb", "\(totalMB - room)", "--vmm-overhead-mb", "64"]) { agent in
            let client = try agent.client()
            defer { client.close() }
            let empty = try await client.capacity()
            #expect(empty.freeVcpus == Int32(cpus), "overcommit 1")
            #expect(empty.freeMemoryMb == Int64(Int(empty.memoryMb) - (totalMB - room) - 64), "\(empty)")

            let a = try await client.create(fixtureSpec(env, name: "adm-a"))
            let tooManyCPUs = await rpcError {
                _ = try await client.create({ var s = fixtureSpec(env, name: "adm-cpu"); s.vcpu = Int32(cpus); s.memoryInMb = 128; return s }())
            }
            #expect(tooManyCPUs?.code == .resourceExhausted, "\(String(describing: tooManyCPUs))")
            #expect(tooManyCPUs?.message.hasPrefix("vcpu: \(cpus) requested, \(cpus - 1) free") == true, "\(String(describing: tooManyCPUs))")

            let b = try await client.create(fixtureSpec(env, name: "adm-b"))
            let full = try await client.capacity()
            #expect(full.microvms == 2 && full.freeMemoryMb < 128, "\(full)")
            let tooMuchMemory = await rpcError {
                _ = try await client.create({ var s = fixtureSpec(env, name: "adm-mem"); s.memoryInMb = 128; return s }())
            }
            #expect(tooMuchMemory?.code == .resourceExhausted, "\(String(describing: tooMuchMemory))")
            #expect(tooMuchMemory?.message.hasPrefix("memory: 128 MiB requested, \(full.freeMemoryMb) MiB free") == true, "\(String(describing: tooMuchMemory))")
            #expect(try await client.list(namespace: "e2e").count == 2, "refused creates leave no record")

            // Deleting frees the room at once; three creates racing for room for two: exactly two win.
            try await client.delete(uid: a.spec.uid)
            try await client.delete(uid: b.spec.uid)
            let outcomes = await withTaskGroup(of: RPCError.Code?.self) { group in
                for i in 0..<3 {
                    group.addTask { await rpcCode { _ = try await client.create(fixtureSpec(env, name: "adm-race-\(i)")) } }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 == nil }.count == 2, "\(outcomes)")
            #expect(outcomes.filter { $0 == .resourceExhausted }.count == 1, "\(outcomes)")
            for vm in try await client.list(namespace: "e2e") where vm.spec.id.hasPrefix("adm-race-") {
                try await client.delete(uid: vm.spec.uid)
            }
        }
    }
}
