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

/// How much of the host the agent hands out: vCPUs up to `vcpuOvercommit` per host CPU (the same
/// default as a MicrovmHost's `vcpuOvercommit`), memory never overcommitted: the host's memory
/// less `memoryReserveMB` for the host itself, each VM counted at its memory plus
/// `vmmOverheadMB` for its VMM.
public struct AdmissionLimits: Sendable, Equatable {
    public var vcpuOvercommit = 4
    public var memoryReserveMB = 512
    public var vmmOverheadMB = 64

    public init(vcpuOvercommit: Int = 4, memoryReserveMB: Int = 512, vmmOverheadMB: Int = 64) {
        self.vcpuOvercommit = vcpuOvercommit
        self.memoryReserveMB = memoryReserveMB
        self.vmmOverheadMB = vmmOverheadMB
    }
}

/// What the host has and what its microVMs take.
public struct HostCapacityReport: Sendable, Equatable {
    public var vcpus: Int
    public var memoryMB: Int
    public var memoryAvailableMB: Int
    public var microVMs: Int
    public var allocatedVCPUs: Int
    public var allocatedMemoryMB: Int
    public var limits = AdmissionLimits()

    public init(vcpus: Int, memoryMB: Int, memoryAvailableMB: Int, microVMs: Int, allocatedVCPUs: Int, allocatedMemoryMB: Int, limits: AdmissionLimits = AdmissionLimits()) {
        self.vcpus = vcpus
        self.memoryMB = memoryMB
        self.memoryAvailableMB = memoryAvailableMB
        self.microVMs = microVMs
        self.allocatedVCPUs = allocatedVCPUs
        self.allocatedMemoryMB = allocatedMemoryMB
        self.limits = limits
    }

    /// Sums the specs of the VMs that are not being deleted (those still being created count);
    /// reads the host from sysconf and /proc/meminfo.
    public static func measure(vms: [MicroVM], limits: AdmissionLimits = AdmissionLimits()) -> HostCapacityReport {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let total = Int(sysconf(Int32(_SC_PHYS_PAGES))) * pageSize / (1 << 20)
        return tally(vms: vms, vcpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), memoryMB: total, memoryAvailableMB: memAvailableMB() ?? total, limits: limits)
    }

    /// The same sums over a given host (for tests and what-ifs).
    public static func tally(vms: [MicroVM], vcpus: Int, memoryMB: Int, memoryAvailableMB: Int, limits: AdmissionLimits) -> HostCapacityReport {
        let live = vms.filter { $0.status.state != .deleting }
        return HostCapacityReport(
            vcpus: vcpus, memoryMB: memoryMB, memoryAvailableMB: memoryAvailableMB,
            microVMs: live.count, allocatedVCPUs: live.reduce(0) { $0 + $1.spec.vcpu }, allocatedMemoryMB: live.reduce(0) { $0 + $1.spec.memoryInMB },
            limits: limits)
    }

    /// The most vCPUs one more VM may ask for.
    public var freeVCPUs: Int { max(0, vcpus * limits.vcpuOvercommit - allocatedVCPUs) }

    /// The most memory one more VM may ask for: the host's memory less the reserve, less every
    /// VM's memory and VMM overhead, including the new VM's overhead.
    public var freeMemoryMB: Int {
        max(0, memoryMB - limits.memoryReserveMB - allocatedMemoryMB - (microVMs + 1) * limits.vmmOverheadMB)
    }

    /// RESOURCE_EXHAUSTED, naming what is short, unless a VM of `vcpu` and `memoryMB` fits.
    /// Placement (capmvm) compares requests with the same `freeVCPUs` and `freeMemoryMB`.
    public func admit(vcpu: Int, memoryMB requested: Int) throws(AgentError) {
        if requested > freeMemoryMB {
            throw AgentError(.resourceExhausted, "memory: \(requested) MiB requested, \(freeMemoryMB) MiB free on this host (\(memoryMB) MiB, \(limits.memoryReserveMB) MiB kept for the host, \(allocatedMemoryMB) MiB for \(microVMs) microVM(s), \(limits.vmmOverheadMB) MiB per VMM)")
        }
        if vcpu > freeVCPUs {
            throw AgentError(.resourceExhausted, "vcpu: \(vcpu) requested, \(freeVCPUs) free on this host (\(vcpus) CPUs × overcommit \(limits.vcpuOvercommit), \(allocatedVCPUs) allocated to \(microVMs) microVM(s))")
        }
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
    let limits: AdmissionLimits

    func getCapacity(request: Liquidmetal_Agent_V1_GetCapacityRequest, context: ServerContext) async throws -> Liquidmetal_Agent_V1_HostCapacity {
        let vms = try await mapErrors {
            // Host-wide figures, no VM data: any caller that may read some namespace may ask.
            let principal = try AccessContext.principal(context)
            guard principal.readsAnything else { throw AgentError(.permissionDenied, "\(principal.name) may not read any namespace") }
            return try store.list(namespace: nil)
        }
        let r = HostCapacityReport.measure(vms: vms, limits: limits)
        return .with {
            $0.agentVersion = AgentVersion.current
            $0.hostname = ProcessInfo.processInfo.hostName
            $0.vcpus = Int32(r.vcpus)
            $0.memoryMb = Int64(r.memoryMB)
            $0.memoryAvailableMb = Int64(r.memoryAvailableMB)
            $0.microvms = Int32(r.microVMs)
            $0.allocatedVcpus = Int32(r.allocatedVCPUs)
            $0.allocatedMemoryMb = Int64(r.allocatedMemoryMB)
            $0.freeVcpus = Int32(r.freeVCPUs)
            $0.freeMemoryMb = Int64(r.freeMemoryMB)
            $0.providers = providers
            $0.accelerator = accelerator
        }
    }
}
