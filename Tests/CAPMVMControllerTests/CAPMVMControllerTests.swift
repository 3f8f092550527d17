import AgentClient
import CAPMVMAPI
import CAPMVMController
import Foundation
import KubernetesClient
import KubernetesTestServer
import Logging
import Placement
import Synchronization
import Testing
import Yams

@Suite("capmvm controller pieces")
struct CAPMVMControllerTests {
    @Test("vendor-data: hostname, users with keys (the machine's win), sudo for non-root users, final message")
    func vendorData() throws {
        let text = try MicrovmRequest.vendorData(hostname: "cp-0",
            machineKeys: [SSHPublicKey(user: "root", authorizedKeys: ["m-root"])],
            clusterKeys: [SSHPublicKey(user: "root", authorizedKeys: ["c-root"]), SSHPublicKey(user: "ops", authorizedKeys: ["c-ops"])])
        #expect(text.hasPrefix("#cloud-config\n"))
        let doc = try #require(try Yams.load(yaml: text) as? [String: Any])
        #expect(doc["hostname"] as? String == "cp-0" && doc["final_message"] != nil)
        let users = try #require(doc["users"] as? [[String: Any]])
        #expect(users.map { $0["name"] as? String } == ["ops", "root"])
        #expect(users[1]["ssh_authorized_keys"] as? [String] == ["m-root"] && users[0]["sudo"] as? String == "ALL=(ALL) NOPASSWD:ALL")
        #expect(doc["disable_root"] as? Bool == false)
    }

    @Test("volumes: sizeMb asks the agent for a disk that large (size_in_mb); without it the disk is the image's size")
    func volumeSize() {
        let sized = MicrovmRequest.volume(.init(id: "root", image: "r", sizeMb: 8192))
        #expect(sized.hasSizeInMb && sized.sizeInMb == 8192 && sized.source.containerSource == "r" && !sized.isReadOnly)
        let plain = MicrovmRequest.volume(.init(id: "data", image: "d", readOnly: true, mountPoint: "/data"))
        #expect(!plain.hasSizeInMb && plain.isReadOnly && plain.mountPoint == "/data")
    }

    @Test("microvmProxy endpoints: http://[user:password@]host:port or host:port; anything else is refused with the reason")
    func proxyEndpoints() throws {
        let p = try HTTPConnectProxy(endpoint: "http://proxy.example:3128")
        #expect(p.host == "proxy.example" && p.port == 3128 && p.authorization == nil)
        let auth = try HTTPConnectProxy(endpoint: "http://capmvm:p%40ss@10.0.0.1:8080/")
        #expect(auth.host == "10.0.0.1" && auth.port == 8080)
        #expect(auth.authorization == "Basic " + Data("capmvm:p@ss".utf8).base64EncodedString())
        let v6 = try HTTPConnectProxy(endpoint: "[fd00::1]:8888")
        #expect(v6.host == "fd00::1" && v6.description == "[fd00::1]:8888")
        for bad in ["https://proxy:443", "proxy", "proxy:0", "proxy:http", ":8080"] {
            #expect(throws: TunnelError.self, "\(bad)") { try HTTPConnectProxy(endpoint: bad) }
        }
        #expect(throws: CredentialsError.self) { try AgentCredentials.proxy(.init(endpoint: "socks5://x:1")) }
        #expect(try AgentCredentials.proxy(nil) == nil)
    }

    @Test("TLS Secrets with CAPMVM's keys: ca.crt alone is server-authenticated TLS, with tls.crt and tls.key mutual TLS; half a key pair is an error")
    func tlsSecrets() throws {
        func secret(_ keys: [String]) -> Secret {
            Secret(metadata: ObjectMeta(name: "s", namespace: "n"), data: Dictionary(uniqueKeysWithValues: keys.map { ($0, Data("PEM \($0)".utf8)) }))
        }
        #expect(try AgentCredentials.tls(from: secret([])) == nil)
        #expect(try AgentCredentials.tls(from: secret(["token"])) == nil)
        let caOnly = try #require(try AgentCredentials.tls(from: secret(["ca.crt"])))
        #expect(caOnly.ca == .pem(Array("PEM ca.crt".utf8)) && caOnly.clientCertificate == nil)
        let mutual = try #require(try AgentCredentials.tls(from: secret(["ca.crt", "tls.crt", "tls.key"])))
        #expect(mutual.clientCertificate == .pem(Array("PEM tls.crt".utf8)) && mutual.clientKey == .pem(Array("PEM tls.key".utf8)))
        #expect(throws: CredentialsError.self) { try AgentCredentials.tls(from: secret(["ca.crt", "tls.crt"])) }
    }

    @Test("vCPUs are overcommitted as the MicrovmHost says (4 per CPU by default), memory never: a 2-CPU host takes 8 one-vCPU machines, or 2 with vcpuOvercommit 1")
    func vcpuOvercommit() {
        func host(_ overcommit: Int?, allocated: Int) -> MicrovmHost {
            var h = MicrovmHost(metadata: ObjectMeta(name: "h", namespace: "ns"), spec: .init(endpoint: "127.0.0.1:9090", vcpuOvercommit: overcommit))
            var st = MicrovmHost.Status()
            st.reachable = true
            st.vcpus = 2
            st.memoryMb = 24_000
            st.allocatedVcpus = allocated
            st.allocatedMemoryMb = allocated * 1024
            st.microvms = allocated
            h.status = st
            return h
        }
        let request = PlacementRequest(machineName: "m", isControlPlane: false, vcpu: 1, memoryMB: 1024, placed: [])
        func fits(_ h: MicrovmHost) -> Bool {
            if case .host = Scheduler.place(request, on: [HostReconciler.candidate(h)]) { return true }
            return false
        }
        #expect(fits(host(nil, allocated: 7)), "2 CPUs × 4 = 8 vCPUs, 7 allocated")
        #expect(!fits(host(nil, allocated: 8)))
        #expect(fits(host(1, allocated: 1)) && !fits(host(1, allocated: 2)), "no overcommit")
        #expect(fits(host(16, allocated: 20)))
        // Memory stays the hard limit whatever the overcommit.
        var full = host(16, allocated: 2)
        full.status?.allocatedMemoryMb = 23_500
        #expect(!fits(full))
    }

    @Test("agent clients: one per endpoint and credentials, reused; a client left idle (say, made with a Secret since rotated) is closed at a later request")
    func agentClientCache() async throws {
        let clock = Mutex(ContinuousClock.now)
        let agents = AgentConnections(idleTimeout: .seconds(300)) { clock.withLock { $0 } }
        func advance(_ d: Duration) { clock.withLock { $0 += d } }
        let old = try agents.client(endpoint: "127.0.0.1:1", credentials: .init(token: "old"))
        #expect(try agents.client(endpoint: "127.0.0.1:1", credentials: .init(token: "old")) === old)
        let other = try agents.client(endpoint: "127.0.0.1:2")
        #expect(other !== old && agents.count == 2)
        advance(.seconds(200))
        #expect(try agents.client(endpoint: "127.0.0.1:2") === other, "in use: kept")
        #expect(agents.count == 2, "200 s idle: not yet")
        advance(.seconds(200))
        let new = try agents.client(endpoint: "127.0.0.1:1", credentials: .init(token: "new"))
        #expect(new !== old)
        #expect(agents.count == 2, "the old token's client was idle past the timeout and is closed; the other is kept")
        agents.closeAll()
        #expect(agents.count == 0)
    }

    @Test("a missing TLS Secret, half a key pair or a bad proxy: the machine's MicrovmReady condition says AgentCredentialsInvalid and why, and nothing is created")
    func credentialProblems() async throws {
        let server = try await TestAPIServer.start(schemas: try SchemaValidator.project())
        let kube = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "kube"))
        let agents = AgentConnections()
        defer { agents.closeAll() }
        let ns = "creds"
        _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "c", namespace: ns), spec: .init(
            controlPlaneEndpoint: APIEndpoint(host: "10.0.0.1", port: 6443), placement: .init(staticPool: .init(hosts: [.init(endpoint: "127.0.0.1:1")])),
            tlsSecretRef: "agent-tls")))
        _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "c", namespace: ns)))
        _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"c"}}}"#.utf8))
        _ = try await kube.mergePatch(Cluster.self, name: "c", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
        let machine = try await kube.create(Machine(metadata: ObjectMeta(name: "m", namespace: ns), spec: .init(clusterName: "c", bootstrap: .init(dataSecretName: "b"), infrastructureRef: .microvmMachine("m"))))
        _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m", namespace: ns, ownerReferences: [
            OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "m", uid: machine.metadata.uid ?? "")]),
            spec: .init(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: "r"), kernel: .init(image: "k", filename: "f"), networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])))
        let reconciler = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
        func condition() async throws -> Condition? {
            _ = try await reconciler.reconcile(namespace: ns, name: "m")
            return try await kube.get(MicrovmMachine.self, name: "m", namespace: ns).status?.conditions?.first { $0.type == "MicrovmReady" }
        }
        let missing = try await condition()
        #expect(missing?.reason == "AgentCredentialsInvalid" && missing?.message?.contains("agent-tls") == true, "\(String(describing: missing))")
        _ = try await kube.create(Secret(metadata: ObjectMeta(name: "agent-tls", namespace: ns), data: ["tls.crt": Data("PEM".utf8)]))
        let half = try await condition()
        #expect(half?.reason == "AgentCredentialsInvalid" && half?.message?.contains("tls.key") == true, "\(String(describing: half))")
        // The CRD's pattern refuses most bad endpoints (a scheme other than http://); capmvm the rest.
        await #expect(throws: KubernetesAPIError.self) {
            try await kube.mergePatch(MicrovmCluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"microvmProxy":{"endpoint":"socks5://p:1080"}}}"#.utf8))
        }
        _ = try await kube.mergePatch(MicrovmCluster.self, name: "c", namespace: ns, patch: Data(#"{"spec":{"tlsSecretRef":null,"microvmProxy":{"endpoint":"p:99999"}}}"#.utf8))
        let proxy = try await condition()
        #expect(proxy?.reason == "AgentCredentialsInvalid" && proxy?.message?.contains("is not http://host:port") == true, "\(String(describing: proxy))")
        #expect(try await kube.get(MicrovmMachine.self, name: "m", namespace: ns).spec.providerID == nil)
        try await kube.shutdown()
        try await server.stop()
    }
}
