import CAPMVMAPI
import Foundation
import KubernetesClient
import Logging
import Metrics
import Placement
import ReconcileQueue
import Synchronization

/// Settings of the controller manager, as CAPMVM's flags name them.
public struct ControllerSettings: Sendable {
    /// Only this namespace (nil: all).
    public var namespace: String?
    /// Only objects labelled `cluster.x-k8s.io/watch-filter=<value>`.
    public var watchFilter: String?
    /// Every object is reconciled again at least this often.
    public var syncPeriod: Duration = .seconds(600)
    public var machineConcurrency = 10
    public var clusterConcurrency = 10
    public var hostConcurrency = 4
    /// How soon a machine waiting on its VM (or on a host) is looked at again.
    public var pendingRequeue: Duration = .seconds(30)
    /// How often each MicrovmHost's agent is probed for capacity and health.
    public var hostProbeInterval: Duration = .seconds(30)
    /// The Cluster API contract to serve; nil: the one the API server's `cluster.x-k8s.io` group
    /// speaks (v1beta2 when it serves that version, which capmvm then reads Cluster API's objects in).
    public var contract: ClusterAPIContract?
    public init() {}
}

/// Runs the MicrovmMachine, MicrovmCluster and MicrovmHost reconcilers: list and watch their objects
/// (and the Cluster API objects that affect them), queue keys, and reconcile with bounded concurrency.
public final class ControllerManager: Sendable {
    let kube: KubernetesClient
    let machines: MachineReconciler
    let clusters: ClusterReconciler
    let hosts: HostReconciler
    let settings: ControllerSettings
    let logger: Logger
    public let machineQueue = WorkQueue()
    public let clusterQueue = WorkQueue()
    public let hostQueue = WorkQueue()
    /// Kinds whose first list succeeded; the manager is ready once all five have.
    let listed = Mutex<Set<String>>([])

    /// Whether every watched kind has been listed once (readiness).
    public var isSynced: Bool { listed.withLock { $0.count >= 5 } }

    public init(kube: KubernetesClient, agents: AgentConnections, settings: ControllerSettings, logger: Logger) {
        self.kube = kube
        let reservations = PlacementReservations()
        var machines = MachineReconciler(kube: kube, agents: agents, logger: logger)
        machines.pendingRequeue = settings.pendingRequeue
        machines.reservations = reservations
        self.machines = machines
        self.clusters = ClusterReconciler(kube: kube, logger: logger)
        var hosts = HostReconciler(kube: kube, agents: agents, logger: logger)
        hosts.probeInterval = settings.hostProbeInterval
        hosts.reservations = reservations
        self.hosts = hosts
        self.settings = settings
        self.logger = logger
    }

    var selector: String? { settings.watchFilter.map { "cluster.x-k8s.io/watch-filter=\($0)" } }

    static func key(_ m: ObjectMeta) -> String { "\(m.namespace ?? "")/\(m.name ?? "")" }

    /// The contract served, once `run` has found it.
    let servedContract = Mutex<ClusterAPIContract?>(nil)
    public var contract: ClusterAPIContract? { servedContract.withLock { $0 } }

    /// The contract of `settings`, else of the API server (asked until it answers).
    func discoverContract() async -> ClusterAPIContract? {
        if let c = settings.contract { return c }
        while !Task.isCancelled {
            do {
                return ClusterAPIContract(servedVersions: try await kube.servedVersions(group: ClusterAPIGroup.group))
            } catch {
                logger.warning("cannot ask the API server which Cluster API versions it serves; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(2))
            }
        }
        return nil
    }

    /// Runs until the task is cancelled.
    public func run() async {
        guard let contract = await discoverContract() else { return }
        if contract == .v1beta2 { kube.useVersion("v1beta2", forGroup: ClusterAPIGroup.group) }
        servedContract.withLock { $0 = contract }
        logger.info("serving Cluster API's \(contract.rawValue) contract")
        var contracted = self.clusters
        contracted.contract = contract
        let clusters = contracted
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.inform(MicrovmMachine.self) { await self.machineQueue.add(Self.key($0.metadata)) } }
            group.addTask {
                await self.inform(Machine.self) { m in
                    if let ref = m.spec.infrastructureRef, ref.kind == "MicrovmMachine", let name = ref.name {
                        await self.machineQueue.add("\(m.metadata.namespace ?? "")/\(name)")
                    }
                }
            }
            group.addTask {
                await self.inform(Cluster.self) { c in
                    if let ref = c.spec?.infrastructureRef, ref.kind == "MicrovmCluster", let name = ref.name {
                        await self.clusterQueue.add("\(c.metadata.namespace ?? "")/\(name)")
                    }
                    // Machines wait for their cluster's infrastructure: look at them again.
                    let ns = c.metadata.namespace
                    if let list = try? await self.kube.list(MicrovmMachine.self, namespace: ns, labelSelector: "\(ClusterAPIGroup.clusterNameLabel)=\(c.metadata.name ?? "")") {
                        for m in list.items { await self.machineQueue.add(Self.key(m.metadata)) }
                    }
                    if let list = try? await self.kube.list(Machine.self, namespace: ns, labelSelector: "\(ClusterAPIGroup.clusterNameLabel)=\(c.metadata.name ?? "")") {
                        for m in list.items where m.spec.infrastructureRef?.kind == "MicrovmMachine" {
                            await self.machineQueue.add("\(ns ?? "")/\(m.spec.infrastructureRef?.name ?? "")")
                        }
                    }
                }
            }
            group.addTask { await self.inform(MicrovmCluster.self) { await self.clusterQueue.add(Self.key($0.metadata)) } }
            group.addTask {
                await self.inform(MicrovmHost.self) { h in
                    await self.hostQueue.add(Self.key(h.metadata))
                    // Machines on a host that stopped answering are looked at, so that they say so.
                    if h.status?.reachable == false, let list = try? await self.kube.list(MicrovmMachine.self, namespace: h.metadata.namespace) {
                        for m in list.items where (m.spec.providerID.flatMap(ProviderID.init)?.host ?? m.metadata.annotations?[placementAnnotation]) == h.spec.endpoint {
                            await self.machineQueue.add(Self.key(m.metadata))
                        }
                    }
                }
            }
            for _ in 0..<max(1, settings.hostConcurrency) {
                group.addTask { await self.work(self.hostQueue, kind: "MicrovmHost") { try await self.hosts.reconcile(namespace: $0, name: $1) } }
            }
            for _ in 0..<max(1, settings.machineConcurrency) {
                group.addTask { await self.work(self.machineQueue, kind: "MicrovmMachine") { try await self.machines.reconcile(namespace: $0, name: $1) } }
            }
            for _ in 0..<max(1, settings.clusterConcurrency) {
                group.addTask { await self.work(self.clusterQueue, kind: "MicrovmCluster") { try await clusters.reconcile(namespace: $0, name: $1) } }
            }
            await withTaskCancellationHandler {
                await group.waitForAll()
            } onCancel: {
                Task {
                    await self.machineQueue.close()
                    await self.clusterQueue.close()
                    await self.hostQueue.close()
                }
            }
        }
    }

    func work(_ queue: WorkQueue, kind: String, _ reconcile: @Sendable (String, String) async throws -> ReconcileResult) async {
        let duration = Metrics.Timer(label: "capmvm_reconcile_duration_seconds", dimensions: [("controller", kind)], preferredDisplayUnit: .seconds)
        let depth = Gauge(label: "capmvm_workqueue_depth", dimensions: [("controller", kind)])
        while let key = await queue.next() {
            depth.record(await queue.depth)
            let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
            let start = ContinuousClock.now
            var result = "success"
            do {
                switch try await reconcile(parts.first ?? "", parts.count > 1 ? parts[1] : "") {
                case .done: break
                case .requeue(let after):
                    result = "requeue"
                    await queue.add(key, after: after)
                }
            } catch is CancellationError {
                await queue.done(key)
                return  // stopping
            } catch {
                result = "error"
                logger.warning("reconcile failed; retrying", metadata: ["kind": "\(kind)", "key": "\(key)", "error": "\(error)"])
                await queue.add(key, after: .seconds(5))
            }
            duration.record(duration: ContinuousClock.now - start)
            Counter(label: "capmvm_reconcile_total", dimensions: [("controller", kind), ("result", result)]).increment()
            await queue.done(key)
        }
    }

    /// List, then watch from the list's version; relist after 410 Gone and every sync period.
    func inform<T: KubernetesObject>(_ type: T.Type, _ handle: @escaping @Sendable (T) async -> Void) async {
        while !Task.isCancelled {
            do {
                let list = try await kube.list(T.self, namespace: settings.namespace, labelSelector: selector)
                for item in list.items { await handle(item) }
                listed.withLock { _ = $0.insert(T.resource.kind) }
                var rv = list.metadata.resourceVersion ?? "0"
                let relistAt = ContinuousClock.now + settings.syncPeriod
                while !Task.isCancelled && ContinuousClock.now < relistAt {
                    for try await event in kube.watch(T.self, namespace: settings.namespace, resourceVersion: rv, labelSelector: selector, timeoutSeconds: 60) {
                        switch event {
                        case .added(let o), .modified(let o), .deleted(let o):
                            rv = o.metadata.resourceVersion ?? rv
                            await handle(o)
                        case .bookmark(let v): rv = v
                        }
                    }
                }
            } catch let e as KubernetesAPIError where e.isGone {
                logger.debug("watch expired; listing again", metadata: ["kind": "\(T.resource.kind)"])
            } catch is CancellationError {
                return
            } catch {
                logger.warning("list/watch failed; retrying", metadata: ["kind": "\(T.resource.kind)", "error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
