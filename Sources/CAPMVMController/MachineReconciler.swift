import AgentClient
import CAPMVMAPI
import FlintlockAPI
import Foundation
import GRPCCore
import KubernetesClient
import Logging
import Placement
import Synchronization

/// What a reconcile asks of its caller.
public enum ReconcileResult: Sendable, Equatable {
    case done
    case requeue(after: Duration)
}

/// MicrovmMachine reconciler with CAPMVM's behaviour (conditions, reasons, finalizer, providerID
/// `microvm://<endpoint>/<uid>`, create-request metadata), without CAPMVM's defects: before creating, the
/// VM is looked up on the host by namespace, name and the machine's uid label, so a create whose
/// providerID patch failed is not repeated; a machine whose VM never existed deletes cleanly;
/// `status.addresses`, `failureReason` and `failureMessage` are filled in.
public struct MachineReconciler: Sendable {
    public var kube: KubernetesClient
    public var agents: AgentConnections
    public var logger: Logger
    /// How soon a machine whose VM is still PENDING is looked at again.
    public var pendingRequeue: Duration = .seconds(30)

    public init(kube: KubernetesClient, agents: AgentConnections, logger: Logger) {
        self.kube = kube
        self.agents = agents
        self.logger = logger
    }

    public static let readyCondition = "MicrovmReady"

    public func reconcile(namespace: String, name: String) async throws -> ReconcileResult {
        var m: MicrovmMachine
        do { m = try await kube.get(MicrovmMachine.self, name: name, namespace: namespace) } catch let e as KubernetesAPIError where e.isNotFound {
            return .done
        }
        guard let ownerName = m.metadata.ownerReferences?.first(where: { $0.kind == "Machine" })?.name else {
            logger.debug("waiting for the owner Machine", metadata: ["microvmmachine": "\(namespace)/\(name)"])
            return m.metadata.deletionTimestamp != nil ? try await finishDelete(m) : .done
        }
        let machine: Machine, cluster: Cluster, mvmCluster: MicrovmCluster
        do {
            machine = try await kube.get(Machine.self, name: ownerName, namespace: namespace)
            cluster = try await kube.get(Cluster.self, name: machine.spec.clusterName, namespace: namespace)
            if cluster.spec?.paused == true { return .done }
            guard let infraName = cluster.spec?.infrastructureRef?.name else { return .requeue(after: .seconds(10)) }
            mvmCluster = try await kube.get(MicrovmCluster.self, name: infraName, namespace: namespace)
        } catch let e as KubernetesAPIError where e.isNotFound && m.metadata.deletionTimestamp != nil {
            // Being deleted after its Machine or cluster objects went: remove the VM its providerID
            // names (without the cluster's credentials), then the finalizer.
            return try await reconcileDelete(m, hosts: [], credentials: { _ in AgentCredentials() })
        }
        let hosts = mvmCluster.spec.placement.staticPool?.hosts ?? []
        // How each host is reached: the cluster's basic-auth tokens, TLS Secret and proxy; in a
        // dynamic pool, a MicrovmHost's own credentials and proxy come first.
        let tokens: [String: String], clusterTLS: AgentClient.TLSOptions?, clusterProxy: HTTPConnectProxy?
        var poolHosts: [MicrovmHost] = []
        var hostCredentials: [String: AgentCredentials] = [:]
        do {
            tokens = try await basicAuthTokens(mvmCluster, namespace: namespace)
            clusterTLS = try await tlsSecret(mvmCluster.spec.tlsSecretRef, namespace: namespace)
            clusterProxy = try AgentCredentials.proxy(mvmCluster.spec.microvmProxy)
            if let dynamic = mvmCluster.spec.placement.dynamicPool {
                let selector = (dynamic.hostSelector ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                poolHosts = try await kube.list(MicrovmHost.self, namespace: namespace, labelSelector: selector).items
                for h in poolHosts { hostCredentials[h.spec.endpoint] = try await HostReconciler.credentials(kube, host: h) }
            }
        } catch let e as CredentialsError {
            return try await credentialsProblem(m, e.description)
        } catch let e as KubernetesAPIError where e.isNotFound {
            // A Secret the cluster or a host names is missing: say so on the machine, look again later.
            return try await credentialsProblem(m, e.message)
        }
        let poolEndpoints = mvmCluster.spec.placement.dynamicPool != nil ? poolHosts.map(\.spec.endpoint) : hosts.map(\.endpoint)
        func credentials(_ endpoint: String) -> AgentCredentials {
            let hostName = hosts.first { $0.endpoint == endpoint }?.name
            let own = hostCredentials[endpoint]
            return AgentCredentials(token: own?.token ?? tokens[endpoint] ?? hostName.flatMap { tokens[$0] } ?? tokens["token"],
                                    tls: own?.tls ?? clusterTLS, proxy: own?.proxy ?? clusterProxy)
        }

        if m.metadata.deletionTimestamp != nil {
            return try await reconcileDelete(m, hosts: poolEndpoints, credentials: credentials)
        }
        guard cluster.status?.infrastructureReady == true else {
            try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Info", reason: "WaitingForClusterInfra")) }
            return .done  // a Cluster change brings it back
        }
        guard let secretName = machine.spec.bootstrap.dataSecretName else {
            try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Info", reason: "WaitingForBoostrapData")) }
            return .done
        }
        if !(m.metadata.finalizers ?? []).contains(InfrastructureGroup.machineFinalizer) {
            m = try await kube.updateFinalizers(MicrovmMachine.self, name: name, namespace: namespace) { current in
                current.contains(InfrastructureGroup.machineFinalizer) ? current : current + [InfrastructureGroup.machineFinalizer]
            }
        }
        // Where: the providerID's host; else a VM already made for this machine on any pool host (its
        // providerID was not recorded); else the static pool's choice or the scheduler's.
        // The host chosen earlier is recorded (annotation) before the VM is created there, so that a
        // crash or a lost providerID patch never leads to a second VM on another host, even when the
        // first host does not answer right now.
        let existing = m.spec.providerID.flatMap(ProviderID.init)
        var host = existing?.host ?? m.metadata.annotations?[placementAnnotation]
        var vm: AgentClient.MicroVM?
        if host == nil {
            for endpoint in poolEndpoints {
                guard let client = try? agents.client(endpoint: endpoint, credentials: credentials(endpoint)),
                      let found = try? await findVM(client, machine: m, namespace: namespace, uid: nil) else { continue }
                (host, vm) = (endpoint, found)
                break
            }
        }
        if host == nil {
            if mvmCluster.spec.placement.dynamicPool != nil {
                switch try await schedule(m, machine: machine, hosts: poolHosts, namespace: namespace) {
                case .host(let h): host = h.endpoint
                case .unschedulable(let why):
                    try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "NoHostAvailable", message: why.joined(separator: "; "))) }
                    return .requeue(after: pendingRequeue)
                }
            } else {
                host = StaticPool.failureDomain(machineName: name, failureDomains: hosts.map(\.endpoint), requested: machine.spec.failureDomain, providerID: nil)
            }
        }
        guard let host else {
            return try await fail(m, reason: "InvalidConfiguration", message: "the MicrovmCluster's placement has no hosts")
        }
        if m.metadata.annotations?[placementAnnotation] != host {
            let patch = try JSONSerialization.data(withJSONObject: ["metadata": ["annotations": [placementAnnotation: host]]])
            m = try await kube.mergePatch(MicrovmMachine.self, name: name, namespace: namespace, patch: patch)
        }
        let agent = try agents.client(endpoint: host, credentials: credentials(host))
        if vm == nil {
            do { vm = try await findVM(agent, machine: m, namespace: namespace, uid: existing?.uid) } catch let e as RPCError where e.code == .unavailable {
                // The host is down: say so, keep the machine as it is, look again later.
                try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "Unknown", severity: "Warning", reason: "HostUnreachable", message: "host \(host): \(e.message)")) }
                return .requeue(after: pendingRequeue)
            }
        }
        if vm == nil {
            let secret = try await kube.get(Secret.self, name: secretName, namespace: namespace)
            guard let data = secret.data?["value"] else {
                return try await fail(m, reason: "MicrovmProvisionFailed", message: "bootstrap Secret \(secretName) has no data.value")
            }
            let spec = try MicrovmRequest.spec(machine: machine, microvmMachine: m, cluster: mvmCluster, bootstrapData: data, hostEndpoint: host)
            do {
                vm = try await agent.create(spec)
                logger.info("created microVM", metadata: ["microvmmachine": "\(namespace)/\(name)", "host": "\(host)", "uid": "\(vm?.spec.uid ?? "")"])
            } catch let e as RPCError where e.code == .invalidArgument || e.code == .failedPrecondition {
                return try await fail(m, reason: "MicrovmProvisionFailed", message: "\(e.code): \(e.message)")
            }
        }
        guard let vm else { return .requeue(after: .seconds(5)) }
        let providerID = ProviderID(host: host, uid: vm.spec.uid).description
        if m.spec.providerID != providerID {
            m = try await kube.mergePatch(MicrovmMachine.self, name: name, namespace: namespace, patch: try JSONSerialization.data(withJSONObject: ["spec": ["providerID": providerID]]))
        }
        return try await reportState(m, vm: vm)
    }

    /// Dynamic placement: the scheduler over the pool's hosts, spreading the cluster's machines
    /// (control-plane machines over failure domains) and preferring the least-loaded host.
    func schedule(_ m: MicrovmMachine, machine: Machine, hosts: [MicrovmHost], namespace: String) async throws -> PlacementDecision {
        let clusterLabel = "\(ClusterAPIGroup.clusterNameLabel)=\(machine.spec.clusterName)"
        let controlPlaneMachines = Set(try await kube.list(Machine.self, namespace: namespace, labelSelector: clusterLabel).items
            .filter(\.isControlPlane).compactMap { $0.spec.infrastructureRef?.name ?? $0.metadata.name })
        let byEndpoint = Dictionary(hosts.map { ($0.spec.endpoint, $0.metadata.name ?? $0.spec.endpoint) }, uniquingKeysWith: { a, _ in a })
        let placed = try await kube.list(MicrovmMachine.self, namespace: namespace, labelSelector: clusterLabel).items.compactMap { other -> PlacedMachine? in
            // Placed: by providerID, or by the host recorded before its VM was created.
            guard other.metadata.uid != m.metadata.uid,
                  let host = other.spec.providerID.flatMap(ProviderID.init)?.host ?? other.metadata.annotations?[placementAnnotation],
                  let name = byEndpoint[host] else { return nil }
            return PlacedMachine(host: name, isControlPlane: controlPlaneMachines.contains(other.metadata.name ?? ""))
        }
        let request = PlacementRequest(machineName: m.metadata.name ?? "", isControlPlane: machine.isControlPlane, vcpu: m.spec.vcpu, memoryMB: m.spec.memoryMb, placed: placed)
        return Scheduler.place(request, on: hosts.map(HostReconciler.candidate))
    }

    /// The machine's VM on `agent`: by uid when known, else the VM in the namespace carrying the
    /// machine's uid label (the VM is named after the Machine, which need not share the
    /// MicrovmMachine's name, so the label is what identifies it).
    func findVM(_ agent: AgentClient, machine m: MicrovmMachine, namespace: String, uid: String?) async throws -> AgentClient.MicroVM? {
        if let uid {
            do { return try await agent.get(uid: uid) } catch let e as RPCError where e.code == .notFound {}
        }
        guard let machineUID = m.metadata.uid, !machineUID.isEmpty else { return nil }
        return try await agent.list(namespace: namespace).first { $0.spec.labels[machineUIDLabel] == machineUID }
    }

    func reportState(_ m: MicrovmMachine, vm: AgentClient.MicroVM) async throws -> ReconcileResult {
        var requeue: ReconcileResult = .done
        try await setStatus(m) { st in
            switch vm.status.state {
            case .created:
                st.vmState = "running"
                st.ready = true
                st.failureReason = nil
                st.failureMessage = nil
                st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "True"))
            case .pending:
                st.vmState = "pending"
                st.ready = false
                st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Info", reason: "MicrovmPending", message: vm.status.failureReason.isEmpty ? nil : vm.status.failureReason))
                requeue = .requeue(after: pendingRequeue)
            case .failed:
                st.vmState = "failed"
                st.ready = false
                st.failureReason = "MicrovmProvisionFailed"
                st.failureMessage = vm.status.failureReason.isEmpty ? "the microVM failed" : vm.status.failureReason
                st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Error", reason: "MicrovmProvisionFailed", message: st.failureMessage))
            case .deleting:
                st.vmState = "deleted"
                st.ready = false
                st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "MicrovmDeleting"))
                requeue = .requeue(after: pendingRequeue)
            default:
                st.vmState = "unknown"
                st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "MicrovmUnknownState"))
                requeue = .requeue(after: pendingRequeue)
            }
            // Addresses the agent knows (static or allocated), and the hostname.
            var addresses = [MachineAddress(type: "Hostname", address: vm.spec.id)]
            for (_, iface) in vm.status.networkInterfaces.sorted(by: { $0.key < $1.key }) where !iface.address.isEmpty {
                addresses.append(MachineAddress(type: "InternalIP", address: String(iface.address.split(separator: "/").first ?? "")))
            }
            st.addresses = addresses
        }
        return requeue
    }

    func reconcileDelete(_ m: MicrovmMachine, hosts: [String], credentials: (String) -> AgentCredentials) async throws -> ReconcileResult {
        let namespace = m.metadata.namespace ?? "default"
        let known = m.spec.providerID.flatMap(ProviderID.init)
        // Where the VM may be: its providerID's host, else the host recorded before the create, else
        // every host of the pool.
        let recorded = m.metadata.annotations?[placementAnnotation].map { [$0] }
        for host in known.map({ [$0.host] }) ?? recorded ?? hosts {
            let agent = try agents.client(endpoint: host, credentials: credentials(host))
            let vm: AgentClient.MicroVM?
            do { vm = try await findVM(agent, machine: m, namespace: namespace, uid: known?.uid) } catch let e as RPCError where e.code == .unavailable {
                try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "MicrovmDeleteFailed", message: "host \(host) unreachable: \(e.message)")) }
                return .requeue(after: .seconds(10))
            }
            guard let vm else { continue }
            if vm.status.state != .deleting { try await agent.delete(uid: vm.spec.uid) }
            try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Info", reason: "MicrovmDeleting")) }
            return .requeue(after: .seconds(2))
        }
        return try await finishDelete(m)
    }

    /// The VM is gone (or never existed): drop the finalizer.
    func finishDelete(_ m: MicrovmMachine) async throws -> ReconcileResult {
        guard (m.metadata.finalizers ?? []).contains(InfrastructureGroup.machineFinalizer) else { return .done }
        do {
            try await kube.updateFinalizers(MicrovmMachine.self, name: m.metadata.name ?? "", namespace: m.metadata.namespace) { current in
                current.filter { $0 != InfrastructureGroup.machineFinalizer }
            }
        } catch let e as KubernetesAPIError where e.isNotFound {}
        logger.info("microVM gone; finalizer removed", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")"])
        return .done
    }

    func fail(_ m: MicrovmMachine, reason: String, message: String) async throws -> ReconcileResult {
        logger.error("machine failed: \(message)", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")"])
        try await setStatus(m) { st in
            st.ready = false
            st.vmState = "failed"
            st.failureReason = reason
            st.failureMessage = message
            st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Error", reason: reason, message: message))
        }
        return .done
    }

    func setStatus(_ m: MicrovmMachine, _ change: @escaping (inout MicrovmMachine.Status) -> Void) async throws {
        try await kube.update(MicrovmMachine.self, name: m.metadata.name ?? "", namespace: m.metadata.namespace, status: true) { o in
            var st = o.status ?? MicrovmMachine.Status()
            change(&st)
            o.status = st
        }
    }

    /// The agents' credentials cannot be read: the machine says why (it is not a terminal failure:
    /// fixing the Secret or the field lets it go on).
    func credentialsProblem(_ m: MicrovmMachine, _ message: String) async throws -> ReconcileResult {
        logger.warning("agent credentials unusable", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")", "error": "\(message)"])
        try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "AgentCredentialsInvalid", message: message)) }
        return .requeue(after: pendingRequeue)
    }

    /// The TLS settings of a `tlsSecretRef` Secret (nil when none is named).
    func tlsSecret(_ name: String?, namespace: String) async throws -> AgentClient.TLSOptions? {
        guard let name, !name.isEmpty else { return nil }
        return try AgentCredentials.tls(from: try await kube.get(Secret.self, name: name, namespace: namespace))
    }

    /// The cluster's basic-auth tokens (CAPMVM: the Secret named by `basicAuthSecret`, keyed by host
    /// endpoint or name; a `token` key serves every host).
    func basicAuthTokens(_ c: MicrovmCluster, namespace: String) async throws -> [String: String] {
        guard let name = c.spec.placement.staticPool?.basicAuthSecret, !name.isEmpty else { return [:] }
        let s = try await kube.get(Secret.self, name: name, namespace: namespace)
        return (s.data ?? [:]).mapValues { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
    }
}

/// Sets a condition by type, stamping the transition time when its status changes.
func upsert(_ conditions: [Condition]?, _ c: Condition) -> [Condition] {
    var list = conditions ?? []
    var next = c
    if let i = list.firstIndex(where: { $0.type == c.type }) {
        next.lastTransitionTime = list[i].status == c.status ? list[i].lastTransitionTime : timestamp()
        list[i] = next
    } else {
        next.lastTransitionTime = timestamp()
        list.append(next)
    }
    return list
}

func timestamp() -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime]
    return f.string(from: Date())
}
