import AgentClient
import CAPMVMAPI
import CAPMVMController
import Foundation
import GRPCCore
import HostSystem
import KubernetesClient
import KubernetesTestServer
import Logging
import Testing
import TestSupport

/// Agents reached through a real HTTP CONNECT proxy (tinyproxy), plain and with mutual TLS, by the
/// agent client and by capmvm (CAPMVM's `microvmProxy` and `tlsSecretRef`, a MicrovmHost's
/// credentials Secret).
@Suite("agents behind an HTTP CONNECT proxy", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU, tinyproxy and openssl (always runs in CI)"))
struct AgentProxyEndToEndTests {
    @Test("plaintext through a proxy with basic auth: calls work and the proxy logs the CONNECT; a wrong password or a port the proxy refuses gives an error that says so")
    func plaintext() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env) { agent in
            let proxy = try await TestProxy(connectPorts: [agent.port], user: "lm", password: "s3cret")
            defer { proxy.stop() }
            let client = try AgentClient(address: agent.address, proxy: try HTTPConnectProxy(endpoint: "http://lm:s3cret@\(proxy.endpoint)"))
            defer { client.close() }
            #expect(try await client.list().isEmpty)
            #expect(try await client.capacity().vcpus > 0)
            #expect(proxy.log().contains("CONNECT"), "\(proxy.log())")
            let out = try await HostProcess.run(["\(TestEnvironment.productsDirectory)/lmctl", "capacity", "--host", agent.address, "--proxy", "http://lm:s3cret@\(proxy.endpoint)"])
            #expect(out.lowercased().contains("vcpu"), "lmctl --proxy: \(out)")

            let wrong = try AgentClient(address: agent.address, proxy: try HTTPConnectProxy(endpoint: "lm:nope@\(proxy.endpoint)"))
            defer { wrong.close() }
            let denied = await rpcError { _ = try await wrong.list() }
            // tinyproxy answers 401 where RFC 9110 says 407; either way the proxy's answer is in the error.
            #expect(denied?.code == .unavailable && denied?.message.contains("refused CONNECT") == true && denied?.message.contains("Unauthorized") == true,
                    "\(String(describing: denied?.message))")

            let otherPort = try AgentClient(address: "127.0.0.1:\(agent.port + 1)", proxy: try HTTPConnectProxy(endpoint: "http://lm:s3cret@\(proxy.endpoint)"))
            defer { otherPort.close() }
            let refused = await rpcError { _ = try await otherPort.list() }
            #expect(refused?.code == .unavailable && refused?.message.contains("refused CONNECT") == true, "\(String(describing: refused))")
        }
    }

    @Test("mutual TLS through a proxy: the agent's certificate is checked against the agent's IP address or name, never the proxy's address")
    func mutualTLS() async throws {
        let env = try await TestEnvironment.shared()
        // "addressed" is valid for 127.0.0.1 only, which is also the proxy's address: an agent reached
        // by name must not be accepted with it.
        let pki = try await TestPKI.make(servers: ["server": "IP:127.0.0.1,DNS:localhost", "named": "DNS:localhost", "addressed": "IP:127.0.0.1"])
        defer { pki.remove() }
        let tls = AgentClient.TLSOptions(caCertificate: pki.path("ca.pem"), clientCertificate: pki.path("client.pem"), clientKey: pki.path("client.key"))
        for (cert, answers) in [("server", ["127.0.0.1": true, "localhost": true]), ("named", ["127.0.0.1": false, "localhost": true]),
                                ("addressed", ["127.0.0.1": true, "localhost": false])] {
            let args = ["--tls-cert", pki.path("\(cert).pem"), "--tls-key", pki.path("\(cert).key"), "--tls-client-validate", "--tls-client-ca", pki.path("ca.pem")]
            try await withAgent(env, args, start: false) { agent in
                // Ready when it answers on a name or address its certificate is valid for.
                agent.clientTLS = tls
                let pid = try HostProcess.spawn(agent.arguments)
                defer { kill(pid, SIGKILL); _ = HostProcess.waitFor(pid) }
                let direct = try AgentClient(address: "\(cert == "addressed" ? "127.0.0.1" : "localhost"):\(agent.port)", tls: tls)
                defer { direct.close() }
                try await eventually("the agent answers over TLS", timeout: .seconds(30)) { (try? await direct.list()) != nil }
                let proxy = try await TestProxy(connectPorts: [agent.port])
                defer { proxy.stop() }
                for (host, ok) in answers.sorted(by: { $0.key < $1.key }) {
                    let client = try AgentClient(address: "\(host):\(agent.port)", tls: tls, proxy: try HTTPConnectProxy(endpoint: proxy.endpoint))
                    defer { client.close() }
                    if ok {
                        #expect(try await client.capacity().vcpus > 0, "certificate \(cert), agent \(host)")
                    } else {
                        let e = await rpcError { _ = try await client.capacity() }
                        #expect(e?.message.contains("not valid for \(host)") == true, "certificate \(cert), agent \(host): \(String(describing: e))")
                    }
                }
                // Without a client certificate the agent refuses, through the proxy too.
                let anonymous = try AgentClient(address: agent.address, tls: .init(caCertificate: pki.path("ca.pem")), proxy: try HTTPConnectProxy(endpoint: proxy.endpoint))
                defer { anonymous.close() }
                if cert == "server" { #expect(await rpcError { _ = try await anonymous.list() } != nil) }
            }
        }
    }

    @Test("capmvm: a cluster with tlsSecretRef and microvmProxy gets its machine on a mutual-TLS agent behind a proxy; a MicrovmHost with a TLS credentials Secret and a proxy is probed")
    func capmvmThroughProxy() async throws {
        let env = try await TestEnvironment.shared()
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let args = ["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key"), "--tls-client-validate", "--tls-client-ca", pki.path("ca.pem")]
        try await withTestAPI { server, kube in
            try await withAgent(env, args, start: false) { agent in
                agent.clientTLS = .init(caCertificate: pki.path("ca.pem"), clientCertificate: pki.path("client.pem"), clientKey: pki.path("client.key"))
                try await agent.start()
                let proxy = try await TestProxy(connectPorts: [agent.port], user: "capmvm", password: "pw")
                defer { proxy.stop() }
                let ns = "secure"
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "agent-tls", namespace: ns), type: "kubernetes.io/tls", data: [
                    "ca.crt": try pki.contents("ca.pem"), "tls.crt": try pki.contents("client.pem"), "tls.key": try pki.contents("client.key")]))
                let agents = AgentConnections()
                defer { agents.closeAll() }

                // A MicrovmHost reached with its own credentials Secret and proxy.
                _ = try await kube.create(MicrovmHost(metadata: ObjectMeta(name: "h0", namespace: ns), spec: .init(
                    endpoint: agent.address, credentialsRef: .init(name: "agent-tls"), microvmProxy: .init(endpoint: "http://capmvm:pw@\(proxy.endpoint)"))))
                let hosts = HostReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
                _ = try await hosts.reconcile(namespace: ns, name: "h0")
                let probed = try await kube.get(MicrovmHost.self, name: "h0", namespace: ns)
                #expect(probed.status?.reachable == true && (probed.status?.vcpus ?? 0) > 0, "\(String(describing: probed.status))")

                // A static-pool cluster with CAPMVM's tlsSecretRef and microvmProxy.
                let name = try await clusterWithMachine(kube, ns: ns, name: "sec", host: agent.address, env: env)
                _ = try await kube.mergePatch(MicrovmCluster.self, name: "sec", namespace: ns, patch: Data(
                    #"{"spec":{"tlsSecretRef":"agent-tls","microvmProxy":{"endpoint":"http://capmvm:pw@\#(proxy.endpoint)"}}}"#.utf8))
                let machines = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
                try await eventually("the machine is ready", timeout: .seconds(120)) {
                    _ = try await machines.reconcile(namespace: ns, name: name)
                    return try await kube.get(MicrovmMachine.self, name: name, namespace: ns).status?.ready == true
                }
                let client = try agent.client()
                defer { client.close() }
                #expect(try await client.list(namespace: ns).count == 1)
                #expect(proxy.log().components(separatedBy: "CONNECT").count > 2, "the host probe and the machine went through the proxy: \(proxy.log())")

                try await kube.delete(MicrovmMachine.self, name: name, namespace: ns)
                try await eventually("the machine is gone with its VM") {
                    _ = try await machines.reconcile(namespace: ns, name: name)
                    do { _ = try await kube.get(MicrovmMachine.self, name: name, namespace: ns); return false } catch let e as KubernetesAPIError where e.isNotFound { return true }
                }
                #expect(try await client.list().isEmpty)
            }
        }
    }
}
