import Foundation
import HostSystem

/// Certificates made with openssl for TLS tests, in a directory of their own: a CA (`ca.pem`,
/// `ca.key`), server certificates signed by it (`<name>.pem`, `<name>.key`, one per entry of
/// `servers`, valid for the names given as subjectAltName, e.g. "IP:127.0.0.1,DNS:localhost"), and a
/// client certificate (`client.pem`, `client.key`).
public struct TestPKI: Sendable {
    public let directory: String

    public static func make(servers: [String: String] = ["server": "IP:127.0.0.1,DNS:localhost"]) async throws -> TestPKI {
        let dir = "/tmp/lm-pki-\(UUID().uuidString.prefix(6))"
        try HostFiles.createDirectory(dir)
        func ssl(_ args: [String]) async throws { try await HostProcess.run(["openssl"] + args) }
        try await ssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lm-test-ca",
                       "-keyout", "\(dir)/ca.key", "-out", "\(dir)/ca.pem"])
        var certs = servers.map { ($0.key, "subjectAltName=\($0.value)\nextendedKeyUsage=serverAuth") }
        certs.append(("client", "extendedKeyUsage=clientAuth"))
        for (name, ext) in certs {
            try await ssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=lm-\(name)", "-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).csr"])
            try Data(ext.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).ext"))
            try await ssl(["x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", "\(dir)/ca.pem", "-CAkey", "\(dir)/ca.key", "-CAcreateserial",
                           "-days", "2", "-extfile", "\(dir)/\(name).ext", "-out", "\(dir)/\(name).pem"])
        }
        return TestPKI(directory: dir)
    }

    public func path(_ file: String) -> String { "\(directory)/\(file)" }
    public func contents(_ file: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path(file))) }
    public func remove() { try? HostFiles.remove(directory) }
}
