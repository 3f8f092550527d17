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
/// `status.addresses`, `failureReason` and `failureMessage` are filled in. Only hosts of the
/// cluster's placement are ever contacted (a host named by a field any user can edit is checked
/// first); a VM that vanished after its providerID was recorded is a terminal failure, never recreated;
/// a paused cluster or machine is left alone. Status serves both of Cluster API's contracts.
public struct MachineReconciler: Sendable {
    public var kube: KubernetesClient
    public var agents: AgentConnections
    public var logger: Logger
    /// How soon a machine whose VM is still PENDING is looked at again.
    public var pendingRequeue: Duration = .seconds(30)
    /// Capacity held for machines placed by the scheduler until their hosts' next probe.
    public var reservations = PlacementReservations()

    public init(kube: KubernetesClient, agents: AgentConnections, logger: Logger) {
        self.kube = kube
        self.agents = agents
        self.logger = logger
    }

    public static let readyCondition = "MicrovmReady"
    /// The reason of a terminal failure: the machine's microVM is gone from its host after its
    /// providerID was recorded. Cluster API's v1beta1 contract reads `failureReason` (UpdateError) from
    /// it; under v1beta2 the `Ready` condition says it. Either way the machine is to be replaced.
    public static let lostReason = "MicrovmLost"

    /// The hosts a cluster's machines may use and how each is reached.
    struct HostPool {
        var endpoints: [String]
        var dynamicHosts: [MicrovmHost]
        var isDynamic: Bool
        var staticHosts: [MicrovmCluster.Host]
        var tokens: [String: String]
        var clusterTLS: AgentClient.TLSOptions?
        var clusterProxy: HTTPConnectProxy?
        var hostCredentials: [String: AgentCredentials]

        func contains(_ endpoint: String) -> Bool { endpoints.contains(endpoint) }

        /// Credentials for a host of the pool (nil for any other: nothing is ever sent elsewhere).
        func credentials(_ endpoint: String) -> AgentCredentials? {
            guard contains(endpoint) else { return nil }
            let hostName = staticHosts.first { $0.endpoint == endpoint }?.name
            let own = hostCredentials[endpoint]
            return AgentCredentials(token: own?.token ?? tokens[endpoint] ?? hostName.flatMap { tokens[$0] } ?? tokens["token"],
                                    tls: own?.tls ?? clusterTLS, proxy: own?.proxy ?? clusterProxy)
        }
    }

    public func reconcile(namespace: String, name: String) async throws -> ReconcileResult {
        var m: MicrovmMachine
        do { m = try await kube.get(MicrovmMachine.self, name: name, namespace: namespace) } catch let e as KubernetesAPIError where e.isNotFound {
            return .done
        }
        let deleting = m.metadata.deletionTimestamp != nil
        // The owner Machine (it may be gone when the MicrovmMachine is deleted after it); the cluster
        // from the Machine, else from the cluster-name label Cluster API puts on both.
        let machine: Machine? = try await optional {
            guard let owner = m.metadata.ownerReferences?.first(where: { $0.kind == "Machine" })?.name else { return nil }
            return try await kube.get(Machine.self, name: owner, namespace: namespace)
        }
        guard let clusterName = machine?.spec.clusterName ?? m.metadata.labels?[ClusterAPIGroup.clusterNameLabel] else {
            if deleting { return try await deleteWithoutCluster(m, why: "it names no cluster") }
            logger.debug("waiting for the owner Machine", metadata: ["microvmmachine": "\(namespace)/\(name)"])
            return .done
        }
        let cluster = try await optional { try await kube.get(Cluster.self, name: clusterName, namespace: namespace) }
        if let cluster, cluster.pauses(m.metadata) {
            try await setStatus(m, paused: true) { _ in }
            logger.debug("paused", metadata: ["microvmmachine": "\(namespace)/\(name)"])
            return .done  // an unpause (a Cluster or MicrovmMachine change) brings it back
        }
        let mvmCluster = try await microvmCluster(of: cluster, named: clusterName, namespace: namespace)
        guard let mvmCluster else {
            if deleting { return try await deleteWithoutCluster(m, why: "the MicrovmCluster of cluster \(clusterName) is gone") }
            return .requeue(after: .seconds(10))
        }
        let pool: HostPool
        do { pool = try await hostPool(mvmCluster, namespace: namespace) } catch let e as CredentialsError {
            return try await credentialsProblem(m, e.description)
        } catch let e as KubernetesAPIError where e.isNotFound {
            // A Secret the cluster or a host names is missing: say so on the machine, look again later.
            return try await credentialsProblem(m, e.message)
        }
        if deleting {
            return try await reconcileDelete(m, pool: pool)
        }
        guard let machine, let cluster else {
            logger.debug("waiting for the owner Machine and its Cluster", metadata: ["microvmmachine": "\(namespace)/\(name)"])
            return .done
        }
        guard cluster.status?.infrastructureProvisioned == true else {
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
        // Where: the providerID's host; else the host recorded before an earlier create; else a VM
        // already made for this machine on any pool host (its providerID was not recorded); else the
        // static pool's choice or the scheduler's. Every one of these must be a host of the pool: the
        // providerID, the annotation and the failure domain are fields a user can edit, and the
        // cluster's credentials go wherever the host is.
        let existing = m.spec.providerID.flatMap(ProviderID.init)
        var host = existing?.host ?? m.metadata.annotations?[placementAnnotation]
        if let named = host, !pool.contains(named) {
            return try await hostOutsidePool(m, named, deleting: false)
        }
        var vm: AgentClient.MicroVM?
        if host == nil {
            for endpoint in pool.endpoints {
                guard let creds = pool.credentials(endpoint), let client = try? agents.client(endpoint: endpoint, credentials: creds),
                      let found = try? await findVM(client, machine: m, namespace: namespace, uid: nil) else { continue }
                (host, vm) = (endpoint, found)
                break
            }
        }
        if host == nil {
            if pool.isDynamic {
                switch try await schedule(m, machine: machine, hosts: pool.dynamicHosts, namespace: namespace) {
                case .host(let h): host = h.endpoint
                case .unschedulable(let why):
                    try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Warning", reason: "NoHostAvailable", message: why.joined(separator: "; "))) }
                    return .requeue(after: pendingRequeue)
                }
            } else {
                if let fd = machine.spec.failureDomain, !fd.isEmpty, !pool.contains(fd) {
                    return try await fail(m, reason: "InvalidConfiguration", message: "the Machine's failure domain \(fd) is not a host of the MicrovmCluster's placement")
                }
                host = StaticPool.failureDomain(machineName: name, failureDomains: pool.endpoints, requested: machine.spec.failureDomain, providerID: nil)
            }
        }
        guard let host, let credentials = pool.credentials(host) else {
            return try await fail(m, reason: "InvalidConfiguration", message: "the MicrovmCluster's placement has no hosts")
        }
        if m.metadata.annotations?[placementAnnotation] != host {
            let patch = try JSONSerialization.data(withJSONObject: ["metadata": ["annotations": [placementAnnotation: host]]])
            m = try await kube.mergePatch(MicrovmMachine.self, name: name, namespace: namespace, patch: patch)
        }
        let agent = try agents.client(endpoint: host, credentials: credentials)
        if vm == nil {
            do { vm = try await findVM(agent, machine: m, namespace: namespace, uid: existing?.uid) } catch let e as RPCError where e.code == .unavailable {
                // The host is down: say so, keep the machine as it is, look again later.
                try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "Unknown", severity: "Warning", reason: "HostUnreachable", message: "host \(host): \(e.message)")) }
                return .requeue(after: pendingRequeue)
            }
        }
        if let existing, vm?.spec.uid != existing.uid {
            // The VM the providerID names is gone. The providerID cannot change (the CRD forbids it, and
            // the Node carries it), so the machine is lost for good: say so, and let it be replaced.
            return try await lost(m, existing)
        }
        let uid = m.metadata.uid ?? ""
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
                reservations.release(machine: uid)
                return try await fail(m, reason: "MicrovmProvisionFailed", message: "\(e.code): \(e.message)")
            }
        }
        guard let vm else { return .requeue(after: .seconds(5)) }
        reservations.created(machine: uid)
        if m.spec.providerID == nil {
            let providerID = ProviderID(host: host, uid: vm.spec.uid).description
            m = try await kube.mergePatch(MicrovmMachine.self, name: name, namespace: namespace, patch: try JSONSerialization.data(withJSONObject: ["spec": ["providerID": providerID]]))
        }
        return try await reportState(m, vm: vm)
    }

    /// `fetch`'s object, or nil when it is not found.
    func optional<T>(_ fetch: () async throws -> T?) async throws -> T? {
        do { return try await fetch() } catch let e as KubernetesAPIError where e.isNotFound { return nil }
    }

    /// The MicrovmCluster of a cluster: the Cluster's infrastructureRef; without the Cluster (deleted
    /// first), the MicrovmCluster it owned, else one of the cluster's name (as the templates name it).
    func microvmCluster(of cluster: Cluster?, named clusterName: String, namespace: String) async throws -> MicrovmCluster? {
        if let cluster {
            guard let ref = cluster.spec?.infrastructureRef, ref.kind == "MicrovmCluster", let infra = ref.name else { return nil }
            return try await optional { try await kube.get(MicrovmCluster.self, name: infra, namespace: namespace) }
        }
        let all = try await kube.list(MicrovmCluster.self, namespace: namespace).items
        return all.first { $0.metadata.ownerReferences?.contains { $0.kind == "Cluster" && $0.name == clusterName } == true }
            ?? all.first { $0.metadata.name == clusterName }
    }

    /// The cluster's hosts and how each is reached: the cluster's basic-auth tokens, TLS Secret and
    /// proxy; in a dynamic pool, a MicrovmHost's own credentials and proxy come first.
    func hostPool(_ c: MicrovmCluster, namespace: String) async throws -> HostPool {
        let staticHosts = c.spec.placement.staticPool?.hosts ?? []
        var pool = HostPool(endpoints: staticHosts.map(\.endpoint), dynamicHosts: [], isDynamic: c.spec.placement.dynamicPool != nil, staticHosts: staticHosts,
                            tokens: try await basicAuthTokens(c, namespace: namespace),
                            clusterTLS: try await tlsSecret(c.spec.tlsSecretRef, namespace: namespace),
                            clusterProxy: try AgentCredentials.proxy(c.spec.microvmProxy), hostCredentials: [:])
        if let dynamic = c.spec.placement.dynamicPool {
            let selector = (dynamic.hostSelector ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            pool.dynamicHosts = try await kube.list(MicrovmHost.self, namespace: namespace, labelSelector: selector).items
            pool.endpoints = pool.dynamicHosts.map(\.spec.endpoint)
            for h in pool.dynamicHosts { pool.hostCredentials[h.spec.endpoint] = try await HostReconciler.credentials(kube, host: h) }
        }
        return pool
    }

    /// A host named by the machine's providerID or annotation is not in the cluster's placement: it is
    /// not contacted (nor given the cluster's credentials). Fixing the placement or the field lets the
    /// machine go on.
    func hostOutsidePool(_ m: MicrovmMachine, _ host: String, deleting: Bool) async throws -> ReconcileResult {
        let message = "host \(host), named by the machine's providerID or \(placementAnnotation) annotation, is not in the MicrovmCluster's placement: it is not contacted"
        logger.warning("host outside the cluster's placement", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")", "host": "\(host)"])
        try await setStatus(m) {
            $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Error",
                                                            reason: deleting ? "MicrovmDeleteFailed" : "HostNotInPlacement", message: message))
        }
        return .requeue(after: .seconds(60))
    }

    /// The recorded VM is gone: a terminal failure (v1beta1: failureReason; v1beta2: the Ready condition).
    func lost(_ m: MicrovmMachine, _ providerID: ProviderID) async throws -> ReconcileResult {
        let message = "microVM \(providerID.uid) is gone from host \(providerID.host); it is not recreated (the providerID cannot change): delete the Machine, or let a MachineHealthCheck replace it"
        if m.status?.conditions?.first(where: { $0.type == Self.readyCondition })?.reason != Self.lostReason {
            logger.error("microVM lost", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")", "providerID": "\(providerID)"])
        }
        try await setStatus(m) { st in
            st.ready = false
            st.vmState = "failed"
            st.failureReason = "UpdateError"
            st.failureMessage = message
            st.conditions = upsert(st.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Error", reason: Self.lostReason, message: message))
        }
        return .done
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
        return reservations.place(request, machine: m.metadata.uid ?? "", on: hosts.map(HostReconciler.candidate))
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
                st.initialization = Initialization(provisioned: true)
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

    func reconcileDelete(_ m: MicrovmMachine, pool: HostPool) async throws -> ReconcileResult {
        let namespace = m.metadata.namespace ?? "default"
        let known = m.spec.providerID.flatMap(ProviderID.init)
        // Where the VM may be: its providerID's host, else the host recorded before the create, else
        // every host of the pool; never a host outside the pool.
        let recorded = m.metadata.annotations?[placementAnnotation].map { [$0] }
        for host in known.map({ [$0.host] }) ?? recorded ?? pool.endpoints {
            guard let credentials = pool.credentials(host) else { return try await hostOutsidePool(m, host, deleting: true) }
            let agent = try agents.client(endpoint: host, credentials: credentials)
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

    /// Deleting a machine whose cluster objects are gone, so that the hosts and credentials its VM
    /// needs are not known: a machine whose VM was never placed just lets go; otherwise it says why it
    /// cannot delete and waits (the finalizer is never dropped while a VM may be left behind).
    func deleteWithoutCluster(_ m: MicrovmMachine, why: String) async throws -> ReconcileResult {
        let host = m.spec.providerID.flatMap(ProviderID.init)?.host ?? m.metadata.annotations?[placementAnnotation]
        guard let host else { return try await finishDelete(m) }
        let message = "cannot delete the microVM on host \(host): \(why), and with it the cluster's placement and credentials; restore it, or delete the VM by hand and then remove the finalizer \(InfrastructureGroup.machineFinalizer)"
        logger.warning("cannot delete microVM", metadata: ["microvmmachine": "\(m.metadata.namespace ?? "")/\(m.metadata.name ?? "")", "reason": "\(why)"])
        try await setStatus(m) { $0.conditions = upsert($0.conditions, Condition(type: Self.readyCondition, status: "False", severity: "Error", reason: "MicrovmDeleteFailed", message: message)) }
        return .requeue(after: .seconds(60))
    }

    /// The VM is gone (or never existed): drop the finalizer.
    func finishDelete(_ m: MicrovmMachine) async throws -> ReconcileResult {
        reservations.release(machine: m.metadata.uid ?? "")
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

    /// Changes the status; then `Ready` mirrors `MicrovmReady` (Cluster API's v1beta2 contract reads
    /// `Ready`), `Paused` says whether the machine is paused, and every condition carries the
    /// generation it was set for.
    func setStatus(_ m: MicrovmMachine, paused: Bool = false, _ change: @escaping (inout MicrovmMachine.Status) -> Void) async throws {
        try await kube.update(MicrovmMachine.self, name: m.metadata.name ?? "", namespace: m.metadata.namespace, status: true) { o in
            var st = o.status ?? MicrovmMachine.Status()
            change(&st)
            st.conditions = summarized(st.conditions, from: Self.readyCondition, paused: paused, generation: o.metadata.generation)
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

/// `conditions` with `Ready` copied from the condition `source` (when there is one), `Paused` True or
/// False (reason `Paused` or `NotPaused`), and each condition's `observedGeneration` set.
func summarized(_ conditions: [Condition]?, from source: String?, paused: Bool, generation: Int64?) -> [Condition] {
    var list = conditions ?? []
    if let source, let c = list.first(where: { $0.type == source }) {
        list = upsert(list, Condition(type: "Ready", status: c.status, severity: c.severity, reason: c.reason ?? (c.status == "True" ? "Ready" : nil), message: c.message))
    }
    list = upsert(list, Condition(type: "Paused", status: paused ? "True" : "False", reason: paused ? "Paused" : "NotPaused"))
    return list.map { c in
        var c = c
        c.observedGeneration = generation
        return c
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

func timestamp() -> String { KubernetesTime.time(Date()) }
