#if canImport(Glibc)
import Glibc
#endif
import CAPMVMAPI
import CAPMVMController
import Foundation
import KubernetesClient
import KubernetesTestServer
import Logging
import Placement
import Synchronization
import Testing

/// What a real kube-apiserver and Cluster API demand of capmvm, each checked against the test API
/// server made as strict as the real one where capmvm relies on it.
@Suite("capmvm under the real API server's rules")
struct RealAPIServerRulesTests {
    /// A cluster (static pool `hosts`, token Secret) with one Machine and MicrovmMachine "m" as Cluster
    /// API would make them; `failureDomain` is the Machine's.
    func cluster(_ kube: KubernetesClient, ns: String, hosts: [String], failureDomain: String? = nil, machineAnnotations: [String: String]? = nil) async throws {
        _ = try await kube.create(Secret(metadata: ObjectMeta(name: "auth", namespace: ns), data: ["token": Data("cluster-token".utf8)]))
        _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "c", namespace: ns), spec: .init(
            controlPlaneEndpoint: APIEndpoint(host: "10.0.0.1", port: 6443), placement: .init(staticPool: .init(hosts: hosts.map { .init(endpoint: $0) }, basicAuthSecret: "auth")))))
        _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "c", namespace: ns)))
        _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"c"}}}"#.utf8))
        _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
        _ = try await kube.create(Secret(metadata: ObjectMeta(name: "b", namespace: ns), data: ["value": Data("#cloud-config\n".utf8)]))
        let machine = try await kube.create(Machine(metadata: ObjectMeta(name: "m", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "c"]),
                                                    spec: .init(clusterName: "c", bootstrap: .init(dataSecretName: "b"), infrastructureRef: .microvmMachine("m"), failureDomain: failureDomain)))
        _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "c"], annotations: machineAnnotations, ownerReferences: [
            OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "m", uid: machine.metadata.uid ?? "")]),
            spec: .init(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: "r"), kernel: .init(image: "k", filename: "f"), networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])))
    }

    func withServer(_ body: (TestAPIServer, KubernetesClient) async throws -> Void) async throws {
        let server = try await TestAPIServer.start(schemas: try SchemaValidator.project())
        let kube = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "kube"))
        do { try await body(server, kube) } catch {
            try? await kube.shutdown()
            try? await server.stop()
            throw error
        }
        try await kube.shutdown()
        try await server.stop()
    }

    func condition(_ kube: KubernetesClient, _ ns: String, _ type: String = MachineReconciler.readyCondition) async throws -> Condition? {
        try await kube.get(MicrovmMachine.self, name: "m", namespace: ns).status?.conditions?.first { $0.type == type }
    }

    @Test("Lease times are MicroTime (six fractional digits): the test server refuses three, as kube-apiserver does, and the elector writes six")
    func leaseMicroTime() async throws {
        #expect(KubernetesTime.microTime(Date(timeIntervalSince1970: 1_764_637_323.123456)) == "2025-12-02T01:02:03.123456Z")
        #expect(KubernetesTime.time(Date(timeIntervalSince1970: 1_764_637_323.9)) == "2025-12-02T01:02:03Z")
        #expect(KubernetesTime.parseMicroTime("2025-12-02T01:02:03.123Z") == nil, "three digits")
        #expect(KubernetesTime.parseMicroTime("2025-12-02T01:02:03Z") == nil, "none")
        #expect(KubernetesTime.parseMicroTime("2025-12-02T01:02:03.123456789Z") == nil, "nine")
        #expect(KubernetesTime.parseMicroTime("2025-12-02T02:02:03.000001+01:00")?.timeIntervalSince1970 == 1_764_637_323.000001)
        #expect(KubernetesTime.parseTime("2025-12-02T01:02:03.5Z")?.timeIntervalSince1970 == 1_764_637_323.5, "Time takes any fraction")
        #expect(KubernetesTime.parseTime("2025-02-30T01:02:03Z") == nil)
        try await withServer { _, kube in
            let stale = try JSONDecoder().decode(Lease.self, from: Data(#"{"metadata":{"name":"l","namespace":"capmvm-system"},"spec":{"holderIdentity":"x","leaseDurationSeconds":15,"renewTime":"2026-12-02T01:02:03.123Z"}}"#.utf8))
            await #expect { _ = try await kube.create(stale) } throws: { ($0 as? KubernetesAPIError)?.code == 400 }
            let e = LeaderElector(client: kube, namespace: "capmvm-system", name: "capmvm-leader", identity: "a", logger: Logger(label: "a"))
            #expect(try await e.tryAcquireOrRenew())
            let lease = try await kube.get(Lease.self, name: "capmvm-leader", namespace: "capmvm-system")
            #expect(lease.spec?.renewTime.flatMap(KubernetesTime.parseMicroTime) != nil && lease.spec?.acquireTime.flatMap(KubernetesTime.parseMicroTime) != nil,
                    "\(String(describing: lease.spec))")
            #expect(try await e.tryAcquireOrRenew(), "renewed (a replace of the lease, with its resourceVersion)")
        }
    }

    @Test("a leader whose API server hangs gives up leading within its renew deadline; a standby that hears from the API server is able to lead")
    func renewDeadlineWhenHanging() async throws {
        try await withServer { server, kube in
            var e = LeaderElector(client: kube, namespace: "capmvm-system", name: "capmvm-leader", identity: "a", logger: Logger(label: "a"))
            e.leaseDuration = .seconds(4)
            e.renewDeadline = .seconds(2)
            e.retryPeriod = .milliseconds(300)
            let elector = e
            var standby = LeaderElector(client: kube, namespace: "capmvm-system", name: "capmvm-leader", identity: "b", logger: Logger(label: "b"))
            standby.retryPeriod = .milliseconds(300)
            let second = standby
            let leading = Mutex<ContinuousClock.Instant?>(nil)
            let task = Task { try await elector.whileLeading { leading.withLock { $0 = .now }; try await Task.sleep(for: .seconds(600)) } }
            try await eventually("a leads") { leading.withLock { $0 } != nil }
            let b = Task { try await second.whileLeading { @Sendable in "b led" } }
            try await eventually("the standby heard from the API server") { standby.status.answered(within: .seconds(4)) }
            #expect(!standby.status.isLeading && elector.status.isLeading)
            // Every lease request now hangs (no answer, connection open).
            server.hangRequests { _, path, _ in path.contains("/leases") }
            let hungAt = ContinuousClock.now
            let outcome = await task.result
            let took = ContinuousClock.now - hungAt
            guard case .failure(let error) = outcome else { Issue.record("still leading"); return }
            #expect(error is LeaderElector.LostLeadership, "\(error)")
            #expect(took < .seconds(2) + .milliseconds(300) + .seconds(2), "gave up within the renew deadline (and a retry period): \(took)")
            #expect(!elector.status.isLeading)
            server.hangRequests(where: nil)
            b.cancel()
            _ = await b.result
        }
    }

    @Test("only hosts of the cluster's placement are contacted: a failure domain, host annotation or providerID naming another host gets no connection and no token")
    func onlyPoolHosts() async throws {
        let intruder = try ConnectionCounter()
        defer { intruder.stop() }
        try await withServer { _, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            let r = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
            // The Machine's failure domain names a host outside the pool.
            try await cluster(kube, ns: "fd", hosts: ["127.0.0.1:1"], failureDomain: intruder.address)
            _ = try await r.reconcile(namespace: "fd", name: "m")
            let fd = try await kube.get(MicrovmMachine.self, name: "m", namespace: "fd")
            #expect(fd.status?.failureReason == "InvalidConfiguration" && fd.status?.failureMessage?.contains(intruder.address) == true, "\(String(describing: fd.status))")
            #expect(fd.metadata.annotations?[placementAnnotation] == nil)
            // The host annotation, which anyone who can edit the object can set.
            try await cluster(kube, ns: "annotation", hosts: ["127.0.0.1:1"], machineAnnotations: [placementAnnotation: intruder.address])
            _ = try await r.reconcile(namespace: "annotation", name: "m")
            #expect(try await condition(kube, "annotation")?.reason == "HostNotInPlacement")
            // A providerID naming it.
            try await cluster(kube, ns: "pid", hosts: ["127.0.0.1:1"])
            _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: "pid", patch: Data(#"{"spec":{"providerID":"microvm://\#(intruder.address)/01J"}}"#.utf8))
            _ = try await r.reconcile(namespace: "pid", name: "m")
            #expect(try await condition(kube, "pid")?.reason == "HostNotInPlacement")
            // Nor on delete.
            try await kube.delete(MicrovmMachine.self, name: "m", namespace: "pid")
            _ = try await r.reconcile(namespace: "pid", name: "m")
            #expect(try await condition(kube, "pid")?.reason == "MicrovmDeleteFailed")
            #expect(try await kube.get(MicrovmMachine.self, name: "m", namespace: "pid").metadata.finalizers == [InfrastructureGroup.machineFinalizer], "the finalizer stays")
            #expect(intruder.connections == 0, "the host outside the pool was never contacted")
        }
    }

    @Test("Cluster.spec.paused and the paused annotation stop every reconcile of the cluster's MicrovmMachines and MicrovmCluster, and say so in a Paused condition")
    func paused() async throws {
        try await withServer { _, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            let ns = "p"
            try await cluster(kube, ns: ns, hosts: ["127.0.0.1:1"])
            _ = try await kube.mergePatch(MicrovmCluster.self, name: "c", namespace: ns, patch: Data(#"{"metadata":{"ownerReferences":[{"apiVersion":"cluster.x-k8s.io/v1beta1","kind":"Cluster","name":"c","uid":"x"}]}}"#.utf8))
            _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"paused":true}}"#.utf8))
            let machines = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
            #expect(try await machines.reconcile(namespace: ns, name: "m") == .done)
            var m = try await kube.get(MicrovmMachine.self, name: "m", namespace: ns)
            #expect(m.metadata.finalizers == nil && m.metadata.annotations == nil, "nothing done")
            #expect(m.status?.conditions?.first { $0.type == "Paused" }?.status == "True")
            let clusters = ClusterReconciler(kube: kube, logger: Logger(label: "capmvm"))
            _ = try await clusters.reconcile(namespace: ns, name: "c")
            var c = try await kube.get(MicrovmCluster.self, name: "c", namespace: ns)
            #expect(c.status?.ready == nil && c.status?.failureDomains == nil && c.status?.conditions?.first { $0.type == "Paused" }?.status == "True")
            // Unpaused, but the machine itself annotated (as clusterctl move does to each object).
            _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"paused":false}}"#.utf8))
            _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: ns, patch: Data(#"{"metadata":{"annotations":{"cluster.x-k8s.io/paused":""}}}"#.utf8))
            _ = try await machines.reconcile(namespace: ns, name: "m")
            m = try await kube.get(MicrovmMachine.self, name: "m", namespace: ns)
            #expect(m.metadata.finalizers == nil)
            _ = try await clusters.reconcile(namespace: ns, name: "c")
            c = try await kube.get(MicrovmCluster.self, name: "c", namespace: ns)
            #expect(c.status?.ready == true && c.status?.conditions?.first { $0.type == "Paused" }?.status == "False", "the cluster goes on")
            // Unpaused: the machine goes on (its host does not answer here).
            _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: ns, patch: Data(#"{"metadata":{"annotations":{"cluster.x-k8s.io/paused":null}}}"#.utf8))
            _ = try await machines.reconcile(namespace: ns, name: "m")
            m = try await kube.get(MicrovmMachine.self, name: "m", namespace: ns)
            #expect(m.metadata.finalizers == [InfrastructureGroup.machineFinalizer] && m.status?.conditions?.first { $0.type == "Paused" }?.status == "False")
        }
    }

    @Test("a MicrovmMachine deleted when its Machine, Cluster and MicrovmCluster are all gone keeps its finalizer and says why, unless its VM was never placed")
    func deleteWithoutCluster() async throws {
        try await withServer { _, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            let r = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
            let ns = "orphan"
            _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "gone"],
                                                                          annotations: [placementAnnotation: "127.0.0.1:1"], finalizers: [InfrastructureGroup.machineFinalizer]),
                spec: .init(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: "r"), kernel: .init(image: "k", filename: "f"), networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])))
            try await kube.delete(MicrovmMachine.self, name: "m", namespace: ns)
            #expect(try await r.reconcile(namespace: ns, name: "m") != .done)
            let c = try await condition(kube, ns)
            #expect(c?.reason == "MicrovmDeleteFailed" && c?.message?.contains("127.0.0.1:1") == true, "\(String(describing: c))")
            #expect(try await kube.get(MicrovmMachine.self, name: "m", namespace: ns).metadata.finalizers == [InfrastructureGroup.machineFinalizer])
            // Never placed: nothing can be left behind, so it lets go.
            _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "n", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "gone"], finalizers: [InfrastructureGroup.machineFinalizer]),
                spec: .init(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: "r"), kernel: .init(image: "k", filename: "f"), networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])))
            try await kube.delete(MicrovmMachine.self, name: "n", namespace: ns)
            #expect(try await r.reconcile(namespace: ns, name: "n") == .done)
            await #expect { _ = try await kube.get(MicrovmMachine.self, name: "n", namespace: ns) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
        }
    }

    @Test("placements in flight are reserved: concurrent machines cannot overcommit a host between two probes; a probe after the VMs exist releases them")
    func reservations() throws {
        let ledger = PlacementReservations()
        let hosts = [HostCandidate(name: "a", endpoint: "a:9090", capacity: Resources(vcpu: 8, memoryMB: 2048, microVMs: 100)),
                     HostCandidate(name: "b", endpoint: "b:9090", capacity: Resources(vcpu: 8, memoryMB: 1024, microVMs: 100))]
        func place(_ uid: String) -> String? {
            if case .host(let h) = ledger.place(PlacementRequest(machineName: uid, isControlPlane: false, vcpu: 1, memoryMB: 1024), machine: uid, on: hosts) { return h.name }
            return nil
        }
        // The probed figures (nothing allocated) never change here, as between two probes.
        let placed = ["m1", "m2", "m3"].map(place)
        #expect(placed.compactMap { $0 }.sorted() == ["a", "a", "b"], "3 GiB of machines over 3 GiB of hosts: \(placed)")
        #expect(place("m4") == nil, "full: unschedulable")
        #expect(ledger.reserved(on: "a").memoryMB == 2048)
        #expect(place("m1") != nil, "placing the same machine again replaces its reservation")
        // VMs created, then a probe that started later: its figures count them, the reservations go.
        for m in ["m1", "m2", "m3"] { ledger.created(machine: m) }
        let onB = ledger.reserved(on: "b").memoryMB
        ledger.probed(host: "a", startedAt: .now)
        #expect(ledger.reserved(on: "a").memoryMB == 0 && ledger.reserved(on: "b").memoryMB == onB, "only the probed host's")
        ledger.probed(host: "b", startedAt: .now)
        // A probe that started before a VM existed does not count it.
        let early = ContinuousClock.now
        let m5 = try #require(place("m5"))
        ledger.created(machine: "m5")
        ledger.probed(host: m5, startedAt: early)
        #expect(ledger.reserved(on: m5).memoryMB >= 1024, "m5 is still reserved on \(m5)")
        ledger.release(machine: "m3")
        ledger.release(machine: "m5")
        #expect(ledger.reserved(on: "a").memoryMB + ledger.reserved(on: "b").memoryMB == 0)
    }

    @Test("the test server is as strict as kube-apiserver: CEL rules of our CRDs, replace without resourceVersion, garbage collection waiting for every owner, status only where the CRD has the subresource")
    func strictServer() async throws {
        try await withServer { _, kube in
            let ns = "strict"
            try await cluster(kube, ns: ns, hosts: ["127.0.0.1:1"])
            // providerID: set once, never changed (self == oldSelf).
            _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: ns, patch: Data(#"{"spec":{"providerID":"microvm://127.0.0.1:1/A"}}"#.utf8))
            await #expect { _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: ns, patch: Data(#"{"spec":{"providerID":"microvm://127.0.0.1:1/B"}}"#.utf8)) }
                throws: { ($0 as? KubernetesAPIError)?.code == 422 && ($0 as? KubernetesAPIError)?.message.contains("providerID cannot change once set") == true }
            await #expect { _ = try await kube.mergePatch(MicrovmMachine.self, name: "m", namespace: ns, patch: Data(#"{"spec":{"vcpu":2}}"#.utf8)) }
                throws: { ($0 as? KubernetesAPIError)?.message.contains("spec.vcpu") == true }
            // Exactly one of staticPool and dynamicPool.
            await #expect { _ = try await kube.mergePatch(MicrovmCluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"placement":{"dynamicPool":{}}}}"#.utf8)) }
                throws: { ($0 as? KubernetesAPIError)?.message.contains("set exactly one of staticPool and dynamicPool") == true }
            // A replace must carry the resourceVersion it read.
            var m = try await kube.get(MicrovmMachine.self, name: "m", namespace: ns)
            m.metadata.resourceVersion = nil
            m.metadata.labels?["x"] = "y"
            await #expect { _ = try await kube.replace(m) } throws: { ($0 as? KubernetesAPIError)?.code == 422 }
            // A template has no status subresource.
            let t = try await kube.create(MicrovmMachineTemplate(metadata: ObjectMeta(name: "t", namespace: ns), spec: .init(template: .init(spec: m.spec))))
            await #expect { _ = try await kube.replace(t, status: true) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
            // Two owners: the dependent stays until both are gone.
            let s1 = try await kube.create(Secret(metadata: ObjectMeta(name: "o1", namespace: ns)))
            let s2 = try await kube.create(Secret(metadata: ObjectMeta(name: "o2", namespace: ns)))
            _ = try await kube.create(Secret(metadata: ObjectMeta(name: "dep", namespace: ns, ownerReferences: [
                OwnerReference(apiVersion: "v1", kind: "Secret", name: "o1", uid: s1.metadata.uid ?? ""), OwnerReference(apiVersion: "v1", kind: "Secret", name: "o2", uid: s2.metadata.uid ?? "")])))
            try await kube.delete(Secret.self, name: "o1", namespace: ns)
            #expect(try await kube.get(Secret.self, name: "dep", namespace: ns).metadata.name == "dep", "one owner left")
            try await kube.delete(Secret.self, name: "o2", namespace: ns)
            await #expect { _ = try await kube.get(Secret.self, name: "dep", namespace: ns) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
        }
    }

    @Test("a MicrovmCluster deleted while it is reconciled (its status write answers 404) is done, not an error retried")
    func clusterGoneMeanwhile() async throws {
        try await withServer { server, kube in
            let ns = "gone"
            _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "c", namespace: ns), spec: .init(
                controlPlaneEndpoint: APIEndpoint(host: "127.0.0.1", port: 1), placement: .init(staticPool: .init(hosts: [.init(endpoint: "h1:9090")])))))
            server.refuseRequests(with: 404) { method, path, _ in method == "PUT" && path.hasSuffix("/microvmclusters/c/status") }
            let r = ClusterReconciler(kube: kube, logger: Logger(label: "capmvm"))
            let result = try await r.reconcile(namespace: ns, name: "c")
            #expect(result == .done)
            #expect(server.refusedRequests == 1, "the status write was tried once and found nothing")
        }
    }

    @Test("the v1beta2 contract: with cluster.x-k8s.io serving v1beta2, capmvm reads Cluster API's objects there and publishes failure domains as a list; v1beta1 gets the map")
    func contracts() async throws {
        try await withServer { server, kube in
            let ns = "contract"
            _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "c", namespace: ns), spec: .init(
                controlPlaneEndpoint: APIEndpoint(host: "127.0.0.1", port: 1), placement: .init(staticPool: .init(hosts: [.init(endpoint: "h1:9090"), .init(endpoint: "h2:9090", controlplaneAllowed: false)])))))
            #expect(try await kube.servedVersions(group: ClusterAPIGroup.group).first == "v1beta1")
            var r = ClusterReconciler(kube: kube, logger: Logger(label: "capmvm"))
            _ = try await r.reconcile(namespace: ns, name: "c")
            var c = try await kube.get(MicrovmCluster.self, name: "c", namespace: ns)
            #expect(c.status?.failureDomains == .map(["h1:9090": .init(controlPlane: true), "h2:9090": .init(controlPlane: false)]))
            #expect(c.status?.ready == true && c.status?.initialization?.provisioned == true, "both contracts' provisioned flags")
            server.serveVersions(["v1beta2", "v1beta1"], forGroup: ClusterAPIGroup.group)
            let served = try await kube.servedVersions(group: ClusterAPIGroup.group)
            #expect(ClusterAPIContract(servedVersions: served) == .v1beta2)
            r.contract = .v1beta2
            _ = try await r.reconcile(namespace: ns, name: "c")
            c = try await kube.get(MicrovmCluster.self, name: "c", namespace: ns)
            #expect(c.status?.failureDomains == .list([.init(name: "h1:9090", controlPlane: true), .init(name: "h2:9090", controlPlane: false)]))
            #expect(c.status?.conditions?.allSatisfy { $0.observedGeneration == c.metadata.generation } == true)
            // v1beta2 objects: the reference names apiGroup, provisioned lives under initialization.
            kube.useVersion("v1beta2", forGroup: ClusterAPIGroup.group)
            #expect(kube.resource(Cluster.self).path(namespace: ns) == "/apis/cluster.x-k8s.io/v1beta2/namespaces/contract/clusters")
            let v1beta2 = try JSONDecoder().decode(Cluster.self, from: Data(#"""
                {"apiVersion":"cluster.x-k8s.io/v1beta2","kind":"Cluster","metadata":{"name":"c"},
                 "spec":{"infrastructureRef":{"apiGroup":"infrastructure.cluster.x-k8s.io","kind":"MicrovmCluster","name":"c"}},
                 "status":{"initialization":{"infrastructureProvisioned":true}}}
                """#.utf8))
            #expect(v1beta2.status?.infrastructureProvisioned == true && v1beta2.spec?.infrastructureRef?.name == "c" && v1beta2.spec?.infrastructureRef?.apiGroup == "infrastructure.cluster.x-k8s.io")
        }
    }
}

/// Polls `condition` until it holds (or fails after `timeout`).
func eventually(_ what: String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("timed out waiting for: \(what)")
    throw CancellationError()
}

/// A TCP listener on loopback that counts the connections made to it (and answers none).
final class ConnectionCounter: @unchecked Sendable {
    let fd: Int32
    let port: Int
    let count = Mutex(0)
    let stopped = Atomic<Bool>(false)
    var address: String { "127.0.0.1:\(port)" }

    init() throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = self.fd
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok, listen(fd, 16) == 0 else { throw POSIXError(.EADDRINUSE) }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let counter = self
        Thread.detachNewThread {
            while !counter.stopped.load(ordering: .relaxed) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) == 1 else { continue }
                let c = accept(fd, nil, nil)
                if c >= 0 {
                    counter.count.withLock { $0 += 1 }
                    close(c)
                }
            }
        }
    }

    var connections: Int { count.withLock { $0 } }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        close(fd)
    }
}
