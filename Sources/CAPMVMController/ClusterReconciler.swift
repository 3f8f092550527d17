#if canImport(Glibc)
import Glibc
#endif
import CAPMVMAPI
import Foundation
import KubernetesClient
import Logging

/// MicrovmCluster reconciler with CAPMVM's behaviour: needs a control plane endpoint (on the
/// MicrovmCluster or its Cluster); publishes one failure domain per static-pool host, keyed by its
/// endpoint, with `controlPlane` from `controlplaneAllowed` (default true), in the shape of `contract`;
/// sets `ready` and `initialization.provisioned`; and reports whether the workload cluster's API server
/// answers on the endpoint (`LoadBalancerAvailable`). A paused cluster is left alone.
public struct ClusterReconciler: Sendable {
    public var kube: KubernetesClient
    public var logger: Logger
    /// The Cluster API contract the management cluster speaks (the failure domains' shape).
    public var contract: ClusterAPIContract = .v1beta1
    /// How often the endpoint is checked again while it does not answer.
    public var endpointRequeue: Duration = .seconds(30)

    public init(kube: KubernetesClient, logger: Logger) {
        self.kube = kube
        self.logger = logger
    }

    public static let loadBalancerCondition = "LoadBalancerAvailable"

    /// One pass over MicrovmCluster `namespace/name`; one that is gone, or goes meanwhile, is done.
    public func reconcile(namespace: String, name: String) async throws -> ReconcileResult {
        do { return try await reconcileExisting(namespace: namespace, name: name) } catch let e as KubernetesAPIError where e.isNotFound {
            return .done  // the MicrovmCluster went away while it was reconciled (its status write found nothing): nothing left to do
        }
    }

    func reconcileExisting(namespace: String, name: String) async throws -> ReconcileResult {
        let c: MicrovmCluster
        do { c = try await kube.get(MicrovmCluster.self, name: name, namespace: namespace) } catch let e as KubernetesAPIError where e.isNotFound {
            return .done
        }
        var owner: Cluster?
        if let ref = c.metadata.ownerReferences?.first(where: { $0.kind == "Cluster" }) {
            do { owner = try await kube.get(Cluster.self, name: ref.name, namespace: namespace) } catch let e as KubernetesAPIError where e.isNotFound {}
        }
        if owner?.pauses(c.metadata) == true || c.metadata.annotations?[ClusterAPIGroup.pausedAnnotation] != nil {
            try await setStatus(c, paused: true) { _ in }
            return .done
        }
        if c.metadata.deletionTimestamp != nil { return .done }
        var endpoint = c.spec.controlPlaneEndpoint
        if endpoint == nil || endpoint?.host.isEmpty == true { endpoint = owner?.spec?.controlPlaneEndpoint }
        guard let endpoint, !endpoint.host.isEmpty, endpoint.port > 0 else {
            try await setStatus(c) { st in
                st.ready = false
                st.conditions = upsert(st.conditions, Condition(type: "Ready", status: "False", severity: "Error", reason: "MissingControlPlaneEndpoint",
                                                                message: "set spec.controlPlaneEndpoint on the MicrovmCluster or its Cluster"))
            }
            return .done
        }
        var domains: [String: MicrovmCluster.FailureDomain] = [:]
        for h in c.spec.placement.staticPool?.hosts ?? [] {
            domains[h.endpoint] = .init(controlPlane: h.controlplaneAllowed ?? true)
        }
        let answers = await Self.tcpReachable(host: endpoint.host, port: endpoint.port, timeout: .seconds(2))
        let contract = self.contract
        try await setStatus(c) { st in
            st.ready = true
            st.initialization = Initialization(provisioned: true)
            st.failureDomains = MicrovmCluster.FailureDomains(domains, contract: contract)
            st.conditions = upsert(st.conditions, Condition(type: "Ready", status: "True"))
            st.conditions = upsert(st.conditions, answers
                ? Condition(type: Self.loadBalancerCondition, status: "True")
                : Condition(type: Self.loadBalancerCondition, status: "False", severity: "Warning", reason: "LoadBalancerNotAvailable",
                            message: "nothing answers on \(endpoint.host):\(endpoint.port) yet"))
        }
        return answers ? .done : .requeue(after: endpointRequeue)
    }

    func setStatus(_ c: MicrovmCluster, paused: Bool = false, _ change: @escaping (inout MicrovmCluster.Status) -> Void) async throws {
        try await kube.update(MicrovmCluster.self, name: c.metadata.name ?? "", namespace: c.metadata.namespace, status: true) { o in
            var st = o.status ?? MicrovmCluster.Status()
            change(&st)
            st.conditions = summarized(st.conditions, from: nil, paused: paused, generation: o.metadata.generation)
            o.status = st
        }
    }

    /// Whether a TCP connection to host:port succeeds within `timeout` (IPv4 literal or resolvable name).
    static func tcpReachable(host: String, port: Int, timeout: Duration) async -> Bool {
        await withCheckedContinuation { cont in
            Thread.detachNewThread {
                var hints = addrinfo()
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                var res: UnsafeMutablePointer<addrinfo>?
                guard getaddrinfo(host, String(port), &hints, &res) == 0, let ai = res else { cont.resume(returning: false); return }
                defer { freeaddrinfo(res) }
                let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                guard fd >= 0 else { cont.resume(returning: false); return }
                defer { close(fd) }
                if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { cont.resume(returning: true); return }
                guard errno == EINPROGRESS else { cont.resume(returning: false); return }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ms = Int32(timeout.components.seconds * 1000)
                guard poll(&p, 1, ms) == 1 else { cont.resume(returning: false); return }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                cont.resume(returning: err == 0)
            }
        }
    }
}
