#if canImport(Glibc)
import Glibc
#endif
import FlintlockAPI
import Foundation
import GRPCCore
import MicroVMCore

/// The agent's version, reported by `flintlockd version` and the capacity RPC.
public enum AgentVersion {
    public static let current = "0.2.0"
}

/// What the host has and what its microVMs take.
public struct HostCapacityReport: Sendable, Equatable {
    public var vcpus: Int
    public var memoryMB: Int
    public var memoryAvailableMB: Int
    public var microVMs: Int
    public var allocatedVCPUs: Int
    public var allocatedMemoryMB: Int

    /// Sums the specs of the VMs that are not being deleted; reads the host from sysconf and /proc/meminfo.
    public static func measure(vms: [MicroVM]) -> HostCapacityReport {
        let live = vms.filter { $0.status.state != .deleting }
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let total = Int(sysconf(Int32(_SC_PHYS_PAGES))) * pageSize / (1 << 20)
        return HostCapacityReport(
            vcpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), memoryMB: total, memoryAvailableMB: memAvailableMB() ?? total,
            microVMs: live.count, allocatedVCPUs: live.reduce(0) { $0 + $1.spec.vcpu }, allocatedMemoryMB: live.reduce(0) { $0 + $1.spec.memoryInMB })
    }

    static func memAvailableMB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kb / 1024
    }
}

struct HostInfoGRPCService: Liquidmetal_Agent_V1_HostInfo.SimpleServiceProtocol {
    let store: StateStore
    let providers: [String]
    let accelerator: String

    func getCapacity(request: Liquidmetal_Agent_V1_GetCapacityRequest, context: ServerContext) async throws -> Liquidmetal_Agent_V1_HostCapacity {
        let vms = try await mapErrors { try store.list(namespace: nil) }
        let r = HostCapacityReport.measure(vms: vms)
        return .with {
            $0.agentVersion = AgentVersion.current
            $0.hostname = ProcessInfo.processInfo.hostName
            $0.vcpus = Int32(r.vcpus)
            $0.memoryMb = Int64(r.memoryMB)
            $0.memoryAvailableMb = Int64(r.memoryAvailableMB)
            $0.microvms = Int32(r.microVMs)
            $0.allocatedVcpus = Int32(r.allocatedVCPUs)
            $0.allocatedMemoryMb = Int64(r.allocatedMemoryMB)
            $0.freeVcpus = Int32(max(0, r.vcpus - r.allocatedVCPUs))
            $0.freeMemoryMb = Int64(max(0, r.memoryMB - r.allocatedMemoryMB))
            $0.providers = providers
            $0.accelerator = accelerator
        }
    }
}
