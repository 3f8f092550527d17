import AgentClient
import FlintlockAPI
import Foundation
import GRPCCore
import HostSystem
import Testing
import TestSupport

/// Per-namespace authorization on a real agent: an auth file maps tokens and a client
/// certificate's identity to namespaces, and every RPC is checked against it.
@Suite("flintlockd authorization", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and openssl (always runs in CI)"))
struct AuthorizationEndToEndTests {
    static let admin = "admin-token-0123456789"
    static let teamA = "team-a-token-0123456789"
    static let teamB = "team-b-token-0123456789"
    static let reader = "reader-token-0123456789"

    static func authFile(extra: String = "") throws -> String {
        let path = "/tmp/lm-auth-\(UUID().uuidString.prefix(6)).yaml"
        try Data("""
            tokens:
              - name: team-a
                token: \(teamA)
                write: [team-a]
              - name: team-b
                token: \(teamB)
                write: [team-b]
              - name: reader
                token: \(reader)
                read: [team-a]
            \(extra)
            """.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func spec(_ env: TestEnvironment, _ name: String, namespace: String) -> Flintlock_Types_MicroVMSpec {
        var s = fixtureSpec(env, name: name)
        s.namespace = namespace
        return s
    }

    @Test("tokens: each RPC sees and changes only the caller's namespaces")
    func tokensPerNamespace() async throws {
        let env = try await TestEnvironment.shared()
        let file = try Self.authFile()
        defer { try? HostFiles.remove(file) }
        // --basic-auth-token is the admin (the harness uses it to start and clean up).
        try await withAgent(env, ["--auth-file", file, "--basic-auth-token", Self.admin]) { agent in
            #expect(agent.log().contains("auth=4 token(s), per-namespace from \(file)"), "the start log states the auth in force: \(agent.log())")
            #expect(agent.log().contains("transport=plaintext"))
            let a = try agent.client(token: Self.teamA), b = try agent.client(token: Self.teamB), r = try agent.client(token: Self.reader)
            defer { a.close(); b.close(); r.close() }

            // B watches everything it may see from the start.
            let seenByB = WatchLog()
            let watchB = Task { try await b.watch { e in await seenByB.add(e); return true } }
            defer { watchB.cancel() }

            // Create: only in one's own namespace.
            let vmA = try await a.create(spec(env, "auth-a", namespace: "team-a"))
            #expect(await rpcCode { _ = try await a.create(spec(env, "auth-a2", namespace: "team-b")) } == .permissionDenied)
            #expect(await rpcCode { _ = try await r.create(spec(env, "auth-r", namespace: "team-a")) } == .permissionDenied, "read-only token")
            let vmB = try await b.create(spec(env, "auth-b", namespace: "team-b"))

            // Get / console: another namespace's VM is invisible.
            #expect(try await r.get(uid: vmA.spec.uid).spec.id == "auth-a", "the reader may read team-a")
            #expect(await rpcCode { _ = try await b.get(uid: vmA.spec.uid) } == .notFound)
            #expect(await rpcCode { _ = try await console(b, uid: vmA.spec.uid) } == .notFound)
            #expect(await rpcCode { _ = try await console(r, uid: vmB.spec.uid) } == .notFound)
            _ = try await console(r, uid: vmA.spec.uid)

            // List and the streaming list: filtered without a namespace, refused for another's.
            #expect(try await a.list().map(\.spec.namespace) == ["team-a"])
            #expect(try await b.listStream().map(\.spec.namespace) == ["team-b"])
            #expect(Set(try await agent.client().list().map(\.spec.namespace)) == ["team-a", "team-b"], "the admin sees both")
            #expect(await rpcCode { _ = try await b.list(namespace: "team-a") } == .permissionDenied)
            #expect(await rpcCode { _ = try await b.listStream(namespace: "team-a") } == .permissionDenied)
            #expect(await rpcCode { try await b.watch(namespace: "team-a") { _ in false } } == .permissionDenied)

            // Capacity: host-wide, for any caller with a grant.
            #expect(try await r.capacity().microvms == 2)

            // Delete: not another's, not with read only.
            #expect(await rpcCode { try await b.delete(uid: vmA.spec.uid) } == .notFound)
            #expect(await rpcCode { try await r.delete(uid: vmA.spec.uid) } == .permissionDenied)
            _ = try await a.wait(uid: vmA.spec.uid, timeout: .seconds(120)) { $0.status.state == .created }
            try await a.delete(uid: vmA.spec.uid)
            try await b.delete(uid: vmB.spec.uid)
            for c in [a, b] {
                let deadline = ContinuousClock.now + .seconds(60)
                while ContinuousClock.now < deadline, !(try await c.list().isEmpty) { try await Task.sleep(for: .milliseconds(200)) }
            }
            try await Task.sleep(for: .milliseconds(500))
            let events = await seenByB.events
            #expect(events.contains { $0.type == .synced })
            #expect(!events.isEmpty && events.allSatisfy { $0.type == .synced || $0.microvm.spec.namespace == "team-b" },
                    "B's watch carried only team-b's VMs: \(events.map { "\($0.type) \($0.microvm.spec.namespace)" })")
            #expect(events.contains { $0.type == .deleted }, "B saw its own VM go")

            // Unknown or malformed credentials.
            let wrong = try agent.client(token: "not-a-token-at-all-000")
            defer { wrong.close() }
            for call in [{ _ = try await wrong.list() }, { _ = try await wrong.capacity() }, { _ = try await wrong.get(uid: vmA.spec.uid) }] as [() async throws -> Void] {
                #expect(await rpcCode(call) == .unauthenticated)
            }
            let none = try AgentClient(address: agent.address)
            defer { none.close() }
            #expect(await rpcCode { _ = try await none.list() } == .unauthenticated)
            #expect(await rpcCode { try await none.watch { _ in false } } == .unauthenticated)
        }
    }

    @Test("a client certificate's identity (its CN) maps to namespaces; other certificates are refused")
    func certificateIdentity() async throws {
        let env = try await TestEnvironment.shared()
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let file = try Self.authFile(extra: """
            clients:
              - identity: lm-client
                write: [certs]
            """)
        defer { try? HostFiles.remove(file) }
        let args = ["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key"), "--tls-client-validate", "--tls-client-ca", pki.path("ca.pem"),
                    "--auth-file", file, "--basic-auth-token", Self.admin]
        try await withAgent(env, args, start: false) { agent in
            agent.clientTLS = .init(caCertificate: pki.path("ca.pem"), clientCertificate: pki.path("client.pem"), clientKey: pki.path("client.key"))
            try await agent.start()
            #expect(agent.log().contains("transport=mutual TLS"), "\(agent.log())")
            let cert = try AgentClient(address: agent.address, tls: agent.clientTLS)
            defer { cert.close() }
            let vm = try await cert.create(spec(env, "auth-cert", namespace: "certs"))
            #expect(await rpcCode { _ = try await cert.create(spec(env, "auth-cert2", namespace: "team-a")) } == .permissionDenied)
            #expect(try await cert.list().map(\.spec.uid) == [vm.spec.uid])
            // A token over the same connection decides instead of the certificate.
            let certAndToken = try AgentClient(address: agent.address, token: Self.teamA, tls: agent.clientTLS)
            defer { certAndToken.close() }
            #expect(try await certAndToken.list().isEmpty, "team-a sees nothing in certs")
            try await cert.delete(uid: vm.spec.uid)
        }
    }

    @Test("half-configured TLS and unusable auth files refuse to start, naming the setting")
    func refusedConfigurations() async throws {
        let env = try await TestEnvironment.shared()
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let clientsOnly = try Self.authFile(extra: "clients:\n  - identity: lm-client\n    write: [\"*\"]")
        defer { try? HostFiles.remove(clientsOnly) }
        let cases: [([String], String)] = [
            (["--tls-key", pki.path("server.key")], "tls-cert: is required with --tls-key"),
            (["--tls-cert", pki.path("server.pem")], "tls-key: is required with --tls-cert"),
            (["--tls-client-validate", "--tls-client-ca", pki.path("ca.pem")], "tls-client-validate: needs a server certificate"),
            (["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key"), "--tls-client-ca", pki.path("ca.pem")], "tls-client-ca: is given without --tls-client-validate"),
            (["--auth-file", "/tmp/lm-no-such-auth.yaml"], "auth-file: cannot read /tmp/lm-no-such-auth.yaml"),
            (["--auth-file", clientsOnly], "auth-file: lists client certificate identities, but client certificates are not checked"),
        ]
        for (args, message) in cases {
            try await withAgent(env, args, start: false) { agent in
                let (status, output) = try await HostProcess.runCapturing(agent.arguments)
                #expect(status != .exited(0), "\(args) must not start")
                #expect(output.contains(message), "\(args): \(output)")
            }
        }
    }
}

actor WatchLog {
    var events: [Liquidmetal_Agent_V1_WatchEvent] = []
    func add(_ e: Liquidmetal_Agent_V1_WatchEvent) { events.append(e) }
}
