import AgentClient
import CAPMVMAPI
import FlintlockAPI
import Foundation
import KubernetesClient
import Logging
import Placement

/// Keeps each MicrovmHost's status current from its agent's capacity RPC: reachable or not, agent
/// version, vCPUs, memory, microVMs and what they take.
public struct HostReconciler: Sendable {
    public var kube: KubernetesClient
    public var agents: AgentConnections
    public var logger: Logger
    /// How often a host is probed.
    public var probeInterval: Duration = .seconds(30)
    /// Capacity held for machines placed on hosts since their last probe (shared with the machine reconciler).
    public var reservations = PlacementReservations()

    public init(kube: KubernetesClient, agents: AgentConnections, logger: Logger) {
        self.kube = kube
        self.agents = agents
        self.logger = logger
    }

    public func reconcile(namespace: String, name: String) async throws -> ReconcileResult {
        let host: MicrovmHost
        do { host = try await kube.get(MicrovmHost.self, name: name, namespace: namespace) } catch let e as KubernetesAPIError where e.isNotFound {
            return .done
        }
        if host.metadata.deletionTimestamp != nil { return .done }
        var probe: (capacity: Liquidmetal_Agent_V1_HostCapacity?, error: String?)
        let started = ContinuousClock.now
        do {
            let client = try agents.client(endpoint: host.spec.endpoint, credentials: try await Self.credentials(kube, host: host))
            probe = (try await client.capacity(), nil)
        } catch {
            probe = (nil, "\(error)")
        }
        try await kube.update(MicrovmHost.self, name: name, namespace: namespace, status: true) { o in
            var st = o.status ?? MicrovmHost.Status()
            st.lastProbeTime = timestamp()
            if let c = probe.capacity {
                st.reachable = true
                st.agentVersion = c.agentVersion
                st.vcpus = Int(c.vcpus)
                st.memoryMb = Int(c.memoryMb)
                st.microvms = Int(c.microvms)
                st.allocatedVcpus = Int(c.allocatedVcpus)
                st.allocatedMemoryMb = Int(c.allocatedMemoryMb)
                // The host's own overcommit, capped by what the agent admits (it refuses creates beyond its free_vcpus).
                st.freeVcpus = min(max(0, o.spec.schedulableVCPUs(cpus: Int(c.vcpus)) - Int(c.allocatedVcpus)), Int(c.freeVcpus))
                st.freeMemoryMb = Int(c.freeMemoryMb)
                st.conditions = upsert(st.conditions, Condition(type: "Reachable", status: "True"))
            } else {
                st.reachable = false
                st.conditions = upsert(st.conditions, Condition(type: "Reachable", status: "False", severity: "Warning", reason: "AgentUnreachable", message: probe.error))
            }
            o.status = st
        }
        if probe.capacity != nil { reservations.probed(host: name, startedAt: started) }
        if probe.capacity == nil { logger.warning("host unreachable", metadata: ["microvmhost": "\(namespace)/\(name)", "endpoint": "\(host.spec.endpoint)"]) }
        return .requeue(after: probeInterval)
    }

    /// How a host's agent is reached: its credentials Secret (`token`; `ca.crt`, `tls.crt`, `tls.key`)
    /// and its `microvmProxy`.
    static func credentials(_ kube: KubernetesClient, host: MicrovmHost) async throws -> AgentCredentials {
        var c = AgentCredentials(proxy: try AgentCredentials.proxy(host.spec.microvmProxy))
        guard let ref = host.spec.credentialsRef?.name else { return c }
        let s = try await kube.get(Secret.self, name: ref, namespace: host.metadata.namespace)
        c.token = s.data?["token"].map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        c.tls = try AgentCredentials.tls(from: s)
        return c
    }

    /// A MicrovmHost as the scheduler sees it: capacity from its status (unknown capacity: not
    /// placeable), vCPUs overcommitted as its spec says.
    public static func candidate(_ h: MicrovmHost) -> HostCandidate {
        let st = h.status
        return HostCandidate(
            name: h.metadata.name ?? h.spec.endpoint, endpoint: h.spec.endpoint, labels: h.metadata.labels ?? [:],
            failureDomain: h.spec.failureDomain, controlPlaneAllowed: h.spec.controlplaneAllowed ?? true, reachable: st?.reachable == true,
            capacity: Resources(vcpu: h.spec.schedulableVCPUs(cpus: st?.vcpus ?? 0), memoryMB: st?.memoryMb ?? 0, microVMs: 1_000_000),
            allocated: Resources(vcpu: st?.allocatedVcpus ?? 0, memoryMB: st?.allocatedMemoryMb ?? 0, microVMs: st?.microvms ?? 0))
    }
}
