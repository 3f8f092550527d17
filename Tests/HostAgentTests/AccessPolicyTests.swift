import Foundation
import HostAgent
import MicroVMCore
import Testing

@Suite("flintlockd access policy")
struct AccessPolicyTests {
    static let file = """
        tokens:
          - name: ops
            token: ops-token-0123456789
            write: ["*"]
          - name: team-a
            token: team-a-token-0123456789
            read: [shared]
            write: [team-a]
        clients:
          - identity: capmvm.example.com
            read: ["*"]
        """

    static func basic(_ token: String) -> String { "Basic " + Data(token.utf8).base64EncodedString() }

    @Test("tokens (Basic or Bearer) and certificate identities map to their namespaces; write implies read")
    func principals() throws {
        let p = try AccessPolicy.parse(yaml: Self.file)
        #expect(p.tokenCount == 2 && p.identityCount == 1)
        let a = try p.principal(authorization: Self.basic("team-a-token-0123456789"), certificateIdentities: [])
        #expect(a.name == "team-a")
        #expect(a.may(.write, namespace: "team-a") && a.may(.read, namespace: "team-a"))
        #expect(a.may(.read, namespace: "shared") && !a.may(.write, namespace: "shared"))
        #expect(!a.may(.read, namespace: "team-b"))
        #expect(!a.readsEverything && a.readsAnything)
        #expect(throws: AgentError(.permissionDenied, "team-a may not write microVMs in namespace \"shared\"")) { try a.check(.write, namespace: "shared") }
        let ops = try p.principal(authorization: "Bearer ops-token-0123456789", certificateIdentities: ["capmvm.example.com"])
        #expect(ops.name == "ops" && ops.may(.write, namespace: "anything"), "a token decides over the certificate")
        let c = try p.principal(authorization: nil, certificateIdentities: ["other.example.com", "capmvm.example.com"])
        #expect(c.readsEverything && !c.may(.write, namespace: "x"))
    }

    @Test("unknown, malformed or missing credentials are UNAUTHENTICATED")
    func refusals() throws {
        let p = try AccessPolicy.parse(yaml: Self.file)
        for header in [Self.basic("team-a-token-012345678"), Self.basic("team-a-token-01234567890"), "Basic !!notbase64", "Token x", "ops-token-0123456789"] {
            #expect(throws: AgentError.self) { try p.principal(authorization: header, certificateIdentities: []) }
            do { _ = try p.principal(authorization: header, certificateIdentities: []) } catch { #expect(error.code == .unauthenticated) }
        }
        do { _ = try p.principal(authorization: nil, certificateIdentities: ["stranger"]) } catch {
            #expect(error.code == .unauthenticated && error.message.contains("stranger"))
        }
        do { _ = try p.principal(authorization: nil, certificateIdentities: []) } catch {
            #expect(error.code == .unauthenticated && error.message.contains("authorization"))
        }
        #expect(try AccessPolicy().principal(authorization: nil, certificateIdentities: []) == .unrestricted, "no policy: open")
    }

    @Test("bad auth files are refused naming the entry", arguments: [
        ("tokens: [{token: short, write: [a]}]", "tokens[0].token"),
        ("tokens: [{token: long-enough-token-0001}]", "tokens[0]: grants nothing"),
        ("tokens: [{token: long-enough-token-0001, write: a}]", "tokens[0].write"),
        ("tokens: [{token: long-enough-token-0001, write: [a]}, {token: long-enough-token-0001, read: [b]}]", "tokens[1].token"),
        ("tokens: [{token: long-enough-token-0001, write: [a], admin: true}]", "unknown key \"admin\""),
        ("clients: [{write: [a]}]", "clients[0].identity"),
        ("users: []", "unknown key \"users\""),
        ("tokens: []", "has no tokens and no clients"),
        ("- a list", "not a YAML mapping"),
    ])
    func badFiles(yaml: String, message: String) {
        do {
            _ = try AccessPolicy.parse(yaml: yaml)
            Issue.record("\(yaml) was accepted")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }

    @Test("constant-time comparison is exact")
    func compare() {
        #expect(AccessPolicy.constantTimeEqual(Array("abc".utf8), Array("abc".utf8)))
        #expect(!AccessPolicy.constantTimeEqual(Array("abc".utf8), Array("abd".utf8)))
        #expect(!AccessPolicy.constantTimeEqual(Array("abc".utf8), Array("abcd".utf8)))
        #expect(!AccessPolicy.constantTimeEqual([], Array("a".utf8)))
        #expect(!AccessPolicy.constantTimeEqual([UInt8](repeating: 0, count: 256), []), "lengths differing by 256 do not cancel out")
        #expect(AccessPolicy.constantTimeEqual([], []))
    }

    @Test("half-configured TLS is refused, naming the setting", arguments: [
        (["tls-key": "/k"], "tls-cert: is required with --tls-key"),
        (["tls-cert": "/c"], "tls-key: is required with --tls-cert"),
        (["tls-client-validate": "true", "tls-client-ca": "/ca"], "tls-client-validate: needs a server certificate"),
        (["tls-cert": "/c", "tls-key": "/k", "tls-client-ca": "/ca"], "tls-client-ca: is given without --tls-client-validate"),
        (["tls-cert": "/c", "tls-key": "/k", "tls-client-validate": "true", "tls-client-ca": "/ca", "insecure": "true"], "insecure: turns TLS off"),
    ])
    func halfConfiguredTLS(flags: [String: String], message: String) {
        do {
            _ = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: flags)
            Issue.record("\(flags) was accepted")
        } catch {
            #expect("\(error)".contains(message), "\(error)")
        }
    }

    @Test("the transport is described for the start log; --basic-auth-token joins the policy as a token for everything")
    func describedAndCombined() throws {
        #expect(try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: [:]).transportDescription == "plaintext")
        let tls = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["tls-cert": "/c", "tls-key": "/k"])
        #expect(tls.transportDescription == "TLS")
        let insecure = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["tls-cert": "/c", "tls-key": "/k", "insecure": "true"])
        #expect(insecure.transportDescription.hasPrefix("plaintext (--insecure"))
        let m = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["tls-cert": "/c", "tls-key": "/k", "tls-client-validate": "true", "tls-client-ca": "/ca"])
        #expect(m.transportDescription.hasPrefix("mutual TLS"))
        let withToken = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["basic-auth-token": "s3cret"]).accessPolicy()
        #expect(withToken.tokenCount == 1)
        #expect(try withToken.principal(authorization: Self.basic("s3cret"), certificateIdentities: []).readsEverything)
        #expect(try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: [:]).accessPolicy().isOpen)
    }
}
