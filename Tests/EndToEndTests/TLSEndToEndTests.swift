import AgentClient
import Foundation
import GRPCCore
import HostSystem
import Testing
import TestSupport

/// flintlockd serving over TLS and mutual TLS, with certificates made by openssl for the test.
@Suite("flintlockd TLS", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd and openssl (always runs in CI)"))
struct TLSEndToEndTests {
    @Test("TLS: a client trusting the CA is served; a plaintext client is not")
    func tls() async throws {
        let env = try await TestEnvironment.shared()
        let pki = try await TestPKI.make().directory
        defer { try? HostFiles.remove(pki) }
        try await withAgent(env, ["--tls-cert", "\(pki)/server.pem", "--tls-key", "\(pki)/server.key"], start: false) { agent in
            let pid = try HostProcess.spawn(agent.arguments)
            defer { kill(pid, SIGKILL); _ = HostProcess.waitFor(pid) }
            let good = try agent.client(tls: .init(caCertificate: "\(pki)/ca.pem"))
            defer { good.close() }
            var ok = false
            for _ in 0..<100 where !ok {
                ok = (try? await good.list()) != nil
                if !ok { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(ok, "a TLS client that trusts the CA is served")
            let plain = try agent.client()
            defer { plain.close() }
            #expect(await rpcCode { _ = try await plain.list() } != nil, "plaintext is refused")
            let out = try await HostProcess.run(["\(TestEnvironment.productsDirectory)/lmctl", "list", "--host", agent.address, "--tls-ca", "\(pki)/ca.pem"])
            #expect(out.contains("NAMESPACE"))
        }
    }

    @Test("mutual TLS: a client certificate signed by the client CA is required")
    func mutualTLS() async throws {
        let env = try await TestEnvironment.shared()
        let pki = try await TestPKI.make().directory
        defer { try? HostFiles.remove(pki) }
        let args = ["--tls-cert", "\(pki)/server.pem", "--tls-key", "\(pki)/server.key", "--tls-client-validate", "--tls-client-ca", "\(pki)/ca.pem"]
        try await withAgent(env, args, start: false) { agent in
            let pid = try HostProcess.spawn(agent.arguments)
            defer { kill(pid, SIGKILL); _ = HostProcess.waitFor(pid) }
            let withCert = try agent.client(tls: .init(caCertificate: "\(pki)/ca.pem", clientCertificate: "\(pki)/client.pem", clientKey: "\(pki)/client.key"))
            defer { withCert.close() }
            var ok = false
            for _ in 0..<100 where !ok {
                ok = (try? await withCert.list()) != nil
                if !ok { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(ok, "a client with a certificate from the CA is served")
            let noCert = try agent.client(tls: .init(caCertificate: "\(pki)/ca.pem"))
            defer { noCert.close() }
            #expect(await rpcCode { _ = try await noCert.list() } != nil, "a client without a certificate is refused")
        }
    }
}
