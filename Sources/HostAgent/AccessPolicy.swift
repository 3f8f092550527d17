import Foundation
import MicroVMCore
import Yams

/// A caller the agent has identified, and the namespaces it may read and write ("*" is every
/// namespace). Write implies read.
public struct Principal: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var read: Set<String>
    public var write: Set<String>

    public init(name: String, read: Set<String> = [], write: Set<String> = []) {
        self.name = name
        self.read = read
        self.write = write
    }

    /// Anyone, when the agent has no token and no auth file.
    public static let unrestricted = Principal(name: "anyone", write: ["*"])

    public enum Access: String, Sendable { case read, write }

    public func may(_ access: Access, namespace: String) -> Bool {
        if write.contains("*") || write.contains(namespace) { return true }
        return access == .read && (read.contains("*") || read.contains(namespace))
    }

    /// True when every namespace is readable, so lists need no filtering.
    public var readsEverything: Bool { read.contains("*") || write.contains("*") }

    /// True when the principal may read at least one namespace (enough for the host-wide capacity).
    public var readsAnything: Bool { !read.isEmpty || !write.isEmpty }

    /// PERMISSION_DENIED unless the principal may do `access` in `namespace`.
    public func check(_ access: Access, namespace: String) throws(AgentError) {
        guard may(access, namespace: namespace) else {
            throw AgentError(.permissionDenied, "\(name) may not \(access.rawValue) microVMs in namespace \"\(namespace)\"")
        }
    }

    public var description: String {
        "\(name) (read: \(read.sorted().joined(separator: ",")), write: \(write.sorted().joined(separator: ",")))"
    }
}

/// Who may call the agent and what they may touch: tokens (sent as Flintlock's
/// `authorization: Basic <base64(token)>`, or `Bearer <token>`) and client-certificate identities
/// (mutual TLS; a subject alternative name, else the subject's common name), each mapped to the
/// namespaces it may read or write. Loaded from `--auth-file` (YAML):
///
/// ```yaml
/// tokens:
///   - name: capmvm
///     token: "long random string"
///     write: ["*"]
///   - name: team-a
///     token: "another"
///     read: [shared]
///     write: [team-a]
/// clients:
///   - identity: capmvm.example.com
///     write: ["*"]
/// ```
public struct AccessPolicy: Sendable {
    struct TokenGrant: Sendable {
        var principal: Principal
        var token: [UInt8]
    }

    var tokens: [TokenGrant] = []
    var identities: [String: Principal] = [:]

    public init() {}

    /// No tokens and no identities: every caller is `Principal.unrestricted`.
    public var isOpen: Bool { tokens.isEmpty && identities.isEmpty }
    public var tokenCount: Int { tokens.count }
    public var identityCount: Int { identities.count }

    /// Adds a token that may do everything (`--basic-auth-token`).
    public mutating func addToken(_ token: String, name: String, read: Set<String> = [], write: Set<String> = ["*"]) {
        tokens.append(TokenGrant(principal: Principal(name: name, read: read, write: write), token: Array(token.utf8)))
    }

    /// Parses an auth file's YAML; errors name the entry and field.
    public static func parse(yaml text: String, source: String = "auth file") throws -> AccessPolicy {
        guard let loaded = try? Yams.load(yaml: text), let root = loaded as? [String: Any] else {
            throw AgentError.invalid(source, "not a YAML mapping with tokens: and clients:")
        }
        for key in root.keys where key != "tokens" && key != "clients" {
            throw AgentError.invalid(source, "unknown key \"\(key)\" (known: tokens, clients)")
        }
        var policy = AccessPolicy()
        func namespaces(_ entry: [String: Any], _ key: String, _ field: String) throws -> Set<String> {
            guard let v = entry[key] else { return [] }
            guard let list = v as? [Any] else { throw AgentError.invalid("\(field).\(key)", "must be a list of namespaces") }
            return try Set(list.enumerated().map { i, n in
                let s = "\(n)"
                guard s == "*" || (!s.isEmpty && s.count <= 253) else { throw AgentError.invalid("\(field).\(key)[\(i)]", "\"\(s)\" is not a namespace or \"*\"") }
                return s
            })
        }
        func entries(_ key: String) throws -> [[String: Any]] {
            guard let v = root[key] else { return [] }
            guard let list = v as? [Any] else { throw AgentError.invalid("\(source): \(key)", "must be a list") }
            return try list.enumerated().map { i, e in
                guard let m = e as? [String: Any] else { throw AgentError.invalid("\(source): \(key)[\(i)]", "must be a mapping") }
                return m
            }
        }
        var seenTokens = Set<String>()
        for (i, e) in try entries("tokens").enumerated() {
            let field = "\(source): tokens[\(i)]"
            for k in e.keys where !["name", "token", "read", "write"].contains(k) { throw AgentError.invalid(field, "unknown key \"\(k)\"") }
            guard let token = e["token"].map({ "\($0)" }), token.count >= 16 else {
                throw AgentError.invalid("\(field).token", "is required and must be at least 16 characters")
            }
            guard seenTokens.insert(token).inserted else { throw AgentError.invalid("\(field).token", "is the same as an earlier entry's") }
            let name = e["name"].map { "\($0)" } ?? "token \(i)"
            let read = try namespaces(e, "read", field), write = try namespaces(e, "write", field)
            guard !read.isEmpty || !write.isEmpty else { throw AgentError.invalid(field, "grants nothing: give read: or write: namespaces") }
            policy.addToken(token, name: name, read: read, write: write)
        }
        for (i, e) in try entries("clients").enumerated() {
            let field = "\(source): clients[\(i)]"
            for k in e.keys where !["identity", "read", "write"].contains(k) { throw AgentError.invalid(field, "unknown key \"\(k)\"") }
            guard let id = e["identity"].map({ "\($0)" }), !id.isEmpty else { throw AgentError.invalid("\(field).identity", "is required") }
            guard policy.identities[id] == nil else { throw AgentError.invalid("\(field).identity", "\"\(id)\" appears twice") }
            let read = try namespaces(e, "read", field), write = try namespaces(e, "write", field)
            guard !read.isEmpty || !write.isEmpty else { throw AgentError.invalid(field, "grants nothing: give read: or write: namespaces") }
            policy.identities[id] = Principal(name: "client \(id)", read: read, write: write)
        }
        guard !policy.isOpen else { throw AgentError.invalid(source, "has no tokens and no clients") }
        return policy
    }

    public static func load(path: String) throws -> AccessPolicy {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw AgentError.invalid("auth-file", "cannot read \(path): \(error.localizedDescription)")
        }
        return try parse(yaml: text, source: "auth-file \(path)")
    }

    /// The caller behind an `authorization` header value and the identities of its client
    /// certificate (already verified by TLS). A token, when sent, must be valid; without one the
    /// certificate decides. UNAUTHENTICATED when neither names a known caller.
    public func principal(authorization: String?, certificateIdentities: [String]) throws(AgentError) -> Principal {
        if isOpen { return .unrestricted }
        if let header = authorization {
            guard let token = Self.token(fromAuthorization: header) else {
                throw AgentError(.unauthenticated, "authorization metadata must be \"Basic <base64 of the token>\" or \"Bearer <token>\"")
            }
            guard let p = match(token: token) else { throw AgentError(.unauthenticated, "the authorization token is not valid") }
            return p
        }
        for id in certificateIdentities { if let p = identities[id] { return p } }
        if !certificateIdentities.isEmpty {
            throw AgentError(.unauthenticated, "client certificate (\(certificateIdentities.joined(separator: ", "))) is not in the agent's auth file")
        }
        throw AgentError(.unauthenticated, "missing authorization metadata: send \"authorization: Basic <base64 of your token>\"")
    }

    /// Compares against every token, each in constant time, so timing does not tell which (or
    /// how much of one) matched.
    func match(token: [UInt8]) -> Principal? {
        var found: Principal?
        for t in tokens where Self.constantTimeEqual(t.token, token) { found = t.principal }
        return found
    }

    static func token(fromAuthorization header: String) -> [UInt8]? {
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        switch parts[0].lowercased() {
        case "basic": return Data(base64Encoded: String(parts[1])).map(Array.init)
        case "bearer": return Array(parts[1].utf8)
        default: return nil
        }
    }

    /// Equal length and bytes, in time that depends only on the lengths.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(truncatingIfNeeded: a.count ^ b.count)
        let n = max(a.count, b.count)
        for i in 0..<n {
            let x = i < a.count ? a[i] : 0, y = i < b.count ? b[i] : 0
            diff |= x ^ y
        }
        return diff == 0 && a.count == b.count
    }
}
