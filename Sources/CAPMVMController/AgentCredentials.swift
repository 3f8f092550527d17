import AgentClient
import CAPMVMAPI
import Foundation
import KubernetesClient
import Synchronization

/// How an agent is reached: a basic-auth token, TLS (the CA that signed the agent's certificate,
/// and a client certificate for mutual TLS), an HTTP CONNECT proxy.
public struct AgentCredentials: Sendable, Hashable {
    public var token: String?
    public var tls: AgentClient.TLSOptions?
    public var proxy: HTTPConnectProxy?
    public init(token: String? = nil, tls: AgentClient.TLSOptions? = nil, proxy: HTTPConnectProxy? = nil) {
        self.token = token
        self.tls = tls
        self.proxy = proxy
    }

    /// TLS settings from a Secret with CAPMVM's keys: `ca.crt`, and `tls.crt` with `tls.key` for
    /// mutual TLS (the layout of a `kubernetes.io/tls` Secret, or one cert-manager writes).
    /// A Secret with none of them means no TLS.
    public static func tls(from secret: Secret) throws -> AgentClient.TLSOptions? {
        let data = secret.data ?? [:]
        let ca = data["ca.crt"].map { AgentClient.TLSOptions.Source.pem(Array($0)) }
        let cert = data["tls.crt"].map { AgentClient.TLSOptions.Source.pem(Array($0)) }
        let key = data["tls.key"].map { AgentClient.TLSOptions.Source.pem(Array($0)) }
        if (cert == nil) != (key == nil) {
            throw CredentialsError("Secret \(secret.metadata.name ?? ""): tls.crt and tls.key go together (mutual TLS), and one of them is missing")
        }
        if ca == nil, cert == nil { return nil }
        return .init(ca: ca, clientCertificate: cert, clientKey: key)
    }

    /// The proxy of a `microvmProxy` field, checked.
    public static func proxy(_ p: MicrovmCluster.Proxy?) throws -> HTTPConnectProxy? {
        guard let endpoint = p?.endpoint, !endpoint.isEmpty else { return nil }
        do { return try HTTPConnectProxy(endpoint: endpoint) } catch { throw CredentialsError("microvmProxy: \(error)") }
    }
}

public struct CredentialsError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// Agent clients by endpoint and credentials, made once and reused. A client not handed out for
/// `idleTimeout` is closed at the next request for any client, so clients made with credentials that
/// have since changed (a rotated Secret) or for hosts that are gone do not pile up.
public final class AgentConnections: Sendable {
    struct Key: Hashable {
        var endpoint: String
        var credentials: AgentCredentials
    }
    struct Entry {
        var client: AgentClient
        var lastUsed: ContinuousClock.Instant
    }
    let entries = Mutex<[Key: Entry]>([:])
    let idleTimeout: Duration
    let now: @Sendable () -> ContinuousClock.Instant

    /// `now` is the clock (tests pass their own).
    public init(idleTimeout: Duration = .seconds(900), now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.idleTimeout = idleTimeout
        self.now = now
    }

    /// Clients currently open.
    public var count: Int { entries.withLock { $0.count } }

    public func client(endpoint: String, credentials: AgentCredentials = .init()) throws -> AgentClient {
        let key = Key(endpoint: endpoint, credentials: credentials)
        let now = self.now()
        let (found, idle) = entries.withLock { all -> (AgentClient?, [AgentClient]) in
            let idleKeys = all.filter { $0.key != key && now - $0.value.lastUsed > idleTimeout }.map(\.key)
            let idle = idleKeys.compactMap { all.removeValue(forKey: $0)?.client }
            all[key]?.lastUsed = now
            return (all[key]?.client, idle)
        }
        for c in idle { c.close() }
        if let found { return found }
        let c = try AgentClient(address: endpoint, token: credentials.token, tls: credentials.tls, proxy: credentials.proxy)
        let kept = entries.withLock { all -> AgentClient? in
            if let other = all[key] { return other.client }
            all[key] = Entry(client: c, lastUsed: now)
            return nil
        }
        if let kept {
            c.close()
            return kept
        }
        return c
    }

    public func closeAll() {
        for c in entries.withLock({ all in defer { all = [:] }; return all.values.map(\.client) }) { c.close() }
    }
}
