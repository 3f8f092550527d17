import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// A typed Kubernetes API client on async-http-client: get, list (label selectors), watch (from a
/// resourceVersion, with bookmarks), create, merge patch (also of the status subresource), delete.
/// 429 answers are retried after their Retry-After; conflicts are the caller's to resolve
/// (`update(_:name:namespace:_:)` retries them by re-reading).
public final class KubernetesClient: Sendable {
    public let connection: KubernetesConnection
    let http: HTTPClient
    let logger: Logger
    /// 429 retries before the error is returned.
    let maxThrottleRetries = 5
    /// API group -> the version to use instead of the one a type names (see `useVersion`).
    let versions = Mutex<[String: String]>([:])

    public init(connection: KubernetesConnection, logger: Logger) throws {
        self.connection = connection
        self.logger = logger
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = connection.certificateAuthorityPEM {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(ca)))
        }
        if connection.insecureSkipTLSVerify { tls.certificateVerification = .none }
        if case .clientCertificate(let cert, let key) = connection.credentials {
            tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(cert)).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key), format: .pem))
        }
        if let name = connection.tlsServerName {
            logger.warning("the kubeconfig's tls-server-name is not honoured; the server's certificate must match its address", metadata: ["tls-server-name": "\(name)"])
        }
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.timeout.connect = .seconds(10)
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    public func shutdown() async throws { try await http.shutdown() }

    // MARK: Versions

    /// Talks to `group` in `version` from now on, whatever version its Swift types name: for kinds
    /// served in several versions whose fields the types read in either shape (Cluster API's
    /// v1beta1 and v1beta2).
    public func useVersion(_ version: String, forGroup group: String) {
        versions.withLock { $0[group] = version }
    }

    /// Where `T` lives for this client.
    public func resource<T: KubernetesObject>(_ type: T.Type) -> ResourceType {
        var r = T.resource
        if let v = versions.withLock({ $0[r.group] }) { r.version = v }
        return r
    }

    /// The versions the API server serves for `group` (discovery, `/apis/<group>`), the preferred
    /// one first; empty when the group is not served.
    public func servedVersions(group: String) async throws -> [String] {
        struct APIGroup: Decodable {
            struct Version: Decodable { var version: String }
            var versions: [Version]
            var preferredVersion: Version?
        }
        do {
            let g = try Self.decoder.decode(APIGroup.self, from: try await send(try request(.GET, "/apis/\(group)")))
            let preferred = g.preferredVersion.map { [$0.version] } ?? []
            return preferred + g.versions.map(\.version).filter { !preferred.contains($0) }
        } catch let e as KubernetesAPIError where e.isNotFound {
            return []
        }
    }

    // MARK: Requests

    func request(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: Data? = nil, contentType: String = "application/json") throws -> HTTPClientRequest {
        var url = connection.server + path
        if !query.isEmpty {
            var c = URLComponents()
            c.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) }
            url += "?" + (c.percentEncodedQuery ?? "")
        }
        var r = HTTPClientRequest(url: url)
        r.method = method
        r.headers.add(name: "Accept", value: "application/json")
        r.headers.add(name: "User-Agent", value: "liquidmetal-kubernetes-client")
        switch connection.credentials {
        case .token(let t): r.headers.add(name: "Authorization", value: "Bearer \(t)")
        case .tokenFile(let f):
            guard let t = try? String(contentsOfFile: f, encoding: .utf8) else { throw KubernetesAPIError(code: 0, reason: "Unauthorized", message: "token file \(f) cannot be read") }
            r.headers.add(name: "Authorization", value: "Bearer \(t.trimmingCharacters(in: .whitespacesAndNewlines))")
        case .basic(let u, let p): r.headers.add(name: "Authorization", value: "Basic \(Data("\(u):\(p)".utf8).base64EncodedString())")
        case .none, .clientCertificate: break
        }
        if let body {
            r.headers.add(name: "Content-Type", value: contentType)
            r.body = .bytes(ByteBuffer(data: body))
        }
        return r
    }

    /// Sends a request and returns the body of a 2xx answer; other answers become KubernetesAPIError.
    func send(_ r: HTTPClientRequest, timeout: TimeAmount = .seconds(60)) async throws -> Data {
        var attempt = 0
        while true {
            let resp = try await http.execute(r, timeout: timeout)
            let body = try await resp.body.collect(upTo: 64 << 20)
            let data = Data(buffer: body)
            if (200..<300).contains(resp.status.code) { return data }
            if resp.status.code == 429, attempt < maxThrottleRetries {
                attempt += 1
                let wait = Int(resp.headers.first(name: "Retry-After") ?? "") ?? 1
                logger.debug("throttled by the API server; retrying", metadata: ["after-s": "\(wait)", "attempt": "\(attempt)"])
                try await Task.sleep(for: .seconds(max(1, min(wait, 30))))
                continue
            }
            throw Self.apiError(status: Int(resp.status.code), body: data)
        }
    }

    static func apiError(status: Int, body: Data) -> KubernetesAPIError {
        if let s = try? JSONDecoder().decode(APIStatus.self, from: body) {
            return KubernetesAPIError(code: s.code ?? status, reason: s.reason ?? "", message: s.message ?? "")
        }
        return KubernetesAPIError(code: status, reason: "", message: String(decoding: body.prefix(500), as: UTF8.self))
    }

    static let decoder = JSONDecoder()
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        return e
    }()

    // MARK: Typed operations

    public func get<T: KubernetesObject>(_ type: T.Type, name: String, namespace: String?) async throws -> T {
        try Self.decoder.decode(T.self, from: try await send(try request(.GET, resource(T.self).path(namespace: namespace, name: name))))
    }

    /// Lists objects (`namespace` nil: all namespaces) matching an equality label selector ("a=b,c=d").
    public func list<T: KubernetesObject>(_ type: T.Type, namespace: String?, labelSelector: String? = nil) async throws -> ObjectList<T> {
        var q: [(String, String)] = []
        if let labelSelector, !labelSelector.isEmpty { q.append(("labelSelector", labelSelector)) }
        return try Self.decoder.decode(ObjectList<T>.self, from: try await send(try request(.GET, resource(T.self).path(namespace: namespace), query: q)))
    }

    public func create<T: KubernetesObject>(_ object: T) async throws -> T {
        var o = object
        o.apiVersion = resource(T.self).apiVersion
        o.kind = T.resource.kind
        let body = try Self.encoder.encode(o)
        return try Self.decoder.decode(T.self, from: try await send(try request(.POST, resource(T.self).path(namespace: o.metadata.namespace), body: body)))
    }

    /// A JSON merge patch (RFC 7386) of the object, or of its status subresource.
    public func mergePatch<T: KubernetesObject>(_ type: T.Type, name: String, namespace: String?, patch: Data, status: Bool = false) async throws -> T {
        let r = try request(.PATCH, resource(T.self).path(namespace: namespace, name: name, subresource: status ? "status" : nil), body: patch, contentType: "application/merge-patch+json")
        return try Self.decoder.decode(T.self, from: try await send(r))
    }

    /// Replaces the object (or its status) as read, so a concurrent change fails with 409 Conflict.
    public func replace<T: KubernetesObject>(_ object: T, status: Bool = false) async throws -> T {
        let r = try request(.PUT, resource(T.self).path(namespace: object.metadata.namespace, name: object.metadata.name, subresource: status ? "status" : nil),
                            body: try Self.encoder.encode(object))
        return try Self.decoder.decode(T.self, from: try await send(r))
    }

    /// Reads, changes and replaces an object, again from a fresh read after each conflict.
    @discardableResult
    public func update<T: KubernetesObject>(_ type: T.Type, name: String, namespace: String?, status: Bool = false, attempts: Int = 5,
                                            _ change: (inout T) throws -> Void) async throws -> T {
        var attempt = 0
        while true {
            var o = try await get(T.self, name: name, namespace: namespace)
            try change(&o)
            do { return try await replace(o, status: status) } catch let e as KubernetesAPIError where e.isConflict && attempt + 1 < attempts {
                attempt += 1
            }
        }
    }

    /// Changes an object's finalizers with a JSON merge patch that carries the resourceVersion read
    /// (the API server answers 409 Conflict when the object changed since; then it is read again), so
    /// fields the Swift type does not know stay as they are, unlike with `update`.
    @discardableResult
    public func updateFinalizers<T: KubernetesObject>(_ type: T.Type, name: String, namespace: String?, attempts: Int = 5,
                                                      _ change: ([String]) -> [String]) async throws -> T {
        var attempt = 0
        while true {
            let o = try await get(T.self, name: name, namespace: namespace)
            let current = o.metadata.finalizers ?? []
            let wanted = change(current)
            if wanted == current { return o }
            var meta: [String: Any] = ["finalizers": wanted]
            if let rv = o.metadata.resourceVersion { meta["resourceVersion"] = rv }
            let patch = try JSONSerialization.data(withJSONObject: ["metadata": meta])
            do { return try await mergePatch(T.self, name: name, namespace: namespace, patch: patch) } catch let e as KubernetesAPIError where e.isConflict && attempt + 1 < attempts {
                attempt += 1
            }
        }
    }

    /// Deletes an object; with finalizers it stays, with a deletionTimestamp, until they are removed.
    public func delete<T: KubernetesObject>(_ type: T.Type, name: String, namespace: String?) async throws {
        _ = try await send(try request(.DELETE, resource(T.self).path(namespace: namespace, name: name)))
    }

    /// Watches changes after `resourceVersion` (from a list). The stream ends when the server closes
    /// the watch; a 410 Gone (too old a resourceVersion) is thrown as KubernetesAPIError.isGone: list again.
    public func watch<T: KubernetesObject>(_ type: T.Type, namespace: String?, resourceVersion: String, labelSelector: String? = nil,
                                           timeoutSeconds: Int = 300) -> AsyncThrowingStream<WatchEvent<T>, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    var q: [(String, String)] = [("watch", "1"), ("resourceVersion", resourceVersion), ("allowWatchBookmarks", "true"), ("timeoutSeconds", String(timeoutSeconds))]
                    if let labelSelector, !labelSelector.isEmpty { q.append(("labelSelector", labelSelector)) }
                    let resp = try await http.execute(try request(.GET, resource(T.self).path(namespace: namespace), query: q), timeout: .seconds(Int64(timeoutSeconds) + 30))
                    guard resp.status.code == 200 else {
                        throw Self.apiError(status: Int(resp.status.code), body: Data(buffer: try await resp.body.collect(upTo: 1 << 20)))
                    }
                    var pending = Data()
                    for try await chunk in resp.body {
                        pending.append(contentsOf: chunk.readableBytesView)
                        while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = pending[pending.startIndex..<nl]
                            pending = Data(pending[pending.index(after: nl)...])
                            if line.isEmpty { continue }
                            if let e = try Self.event(T.self, line: Data(line)) { continuation.yield(e) }
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    static func event<T: KubernetesObject>(_ type: T.Type, line: Data) throws -> WatchEvent<T>? {
        let raw = try decoder.decode(RawWatchEvent.self, from: line)
        switch raw.type {
        case "ADDED": return .added(try decoder.decode(TypedWatchEvent<T>.self, from: line).object)
        case "MODIFIED": return .modified(try decoder.decode(TypedWatchEvent<T>.self, from: line).object)
        case "DELETED": return .deleted(try decoder.decode(TypedWatchEvent<T>.self, from: line).object)
        case "BOOKMARK": return .bookmark(resourceVersion: try decoder.decode(BookmarkWatchEvent.self, from: line).object.metadata.resourceVersion ?? "")
        case "ERROR":
            let s = try decoder.decode(StatusWatchEvent.self, from: line).object
            throw KubernetesAPIError(code: s.code ?? 500, reason: s.reason ?? "", message: s.message ?? "")
        default: return nil
        }
    }
}

struct RawWatchEvent: Decodable { var type: String }
struct TypedWatchEvent<T: KubernetesObject>: Decodable { var object: T }
struct BookmarkWatchEvent: Decodable {
    struct Object: Decodable { var metadata: ListMeta }
    var object: Object
}
struct StatusWatchEvent: Decodable { var object: APIStatus }
