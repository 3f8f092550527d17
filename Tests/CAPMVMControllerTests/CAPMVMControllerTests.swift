import AgentClient
import CAPMVMAPI
import CAPMVMController
import Foundation
import KubernetesClient
import Testing
import Yams

@Suite("capmvm controller pieces")
struct CAPMVMControllerTests {
    @Test("the work queue: a key once in the queue, never twice at once, run again when added while running")
    func workQueue() async {
        let q = WorkQueue()
        await q.add("a")
        await q.add("a")
        await q.add("b")
        #expect(await q.depth == 2)
        let first = await q.next()
        #expect(first == "a")
        await q.add("a")  // while a runs
        #expect(await q.next() == "b")
        #expect(await q.depth == 0, "a waits until its run is done")
        await q.done("a")
        #expect(await q.next() == "a")
        await q.done("a")
        await q.done("b")
        await q.close()
        #expect(await q.next() == nil)
    }

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
}
