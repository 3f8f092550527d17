import Foundation
import KubernetesClient
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// An in-process stand-in for a Kubernetes API server, for controller tests in CI (the real one is
/// run by hand: scripts/e2e-cluster.sh). It keeps objects as JSON in memory and implements the REST
/// semantics the controllers rely on, as kube-apiserver behaves:
/// - one resourceVersion sequence; a PUT or a patch with a stale `metadata.resourceVersion` is 409
///   Conflict; a PUT of a custom resource without one is 422 ("must be specified for an update");
/// - create (409 AlreadyExists; `generateName`; a sent status is dropped), get, list with equality label selectors, replace,
///   JSON merge patch (RFC 7386), delete; the `status` subresource where the kind's CRD declares one
///   (then status changes only there, and 404 for kinds whose CRD has none); spec changes bump `generation`;
/// - finalizers: delete sets `deletionTimestamp` and keeps the object until its finalizers are gone;
/// - owner references: an object is garbage-collected once all of its owners are gone;
/// - watch from a resourceVersion (`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` when asked for, every
///   `bookmarkInterval`), and an `ERROR` event with a 410 Status when the version is older than the
///   retained history (`compact()` drops history, as etcd compaction does);
/// - with `schemas`, objects of the kinds they cover are validated on every write as the API server
///   validates custom resources (422 Invalid, naming each field), with the CEL rules our CRDs use
///   (see `SchemaValidator`); Leases are decoded as kube-apiserver decodes them (`acquireTime` and
///   `renewTime` are MicroTime: exactly six fractional digits, else 400 BadRequest).
/// Where it still differs from kube-apiserver: no set-based or field selectors, no strategic merge
/// or server-side apply, no admission webhooks, no schema defaulting, no authentication; garbage
/// collection runs at once instead of in the background; built-in kinds other than Lease are not
/// validated, and a status subresource is served for kinds it has no CRD of.
///
/// For tests of failures, `refuseRequests(where:)` makes matching requests fail with 503, as an API
/// server that is briefly unavailable answers, and `hangRequests(where:)` leaves them unanswered, as a
/// server that hangs.
public final class TestAPIServer: Sendable {
    public let port: Int
    public var server: String { "http://127.0.0.1:\(port)" }
    let channel: any Channel
    let state: Mutex<State>
    let bookmarkInterval: Duration
    let refusal = Mutex<Refusal>(Refusal())
    let hang = Mutex<RequestRule?>(nil)
    let servedVersions = Mutex<[String: [String]]>([:])
    let schemas: SchemaValidator?

    /// Which requests to refuse: method, path and JSON body (nil when empty or not JSON).
    public typealias RequestRule = @Sendable (_ method: String, _ path: String, _ body: [String: Any]?) -> Bool
    struct Refusal {
        var rule: RequestRule?
        var status = 503
        var count = 0
    }

    struct Event {
        var rv: Int
        var type: String
        var collection: String
        var namespace: String
        var object: [String: Any]
    }

    struct State: @unchecked Sendable {
        var rv = 1
        /// collection ("group/version/plural") -> "namespace/name" -> object
        var objects: [String: [String: [String: Any]]] = [:]
        var events: [Event] = []
        /// Events at or before this version were compacted away.
        var compactedThrough = 0
        var watchers: [UUID: (collection: String, namespace: String?, selector: [String: String], send: @Sendable (String) -> Void)] = [:]
    }

    /// Starts listening on 127.0.0.1 (a free port).
    public static func start(bookmarkInterval: Duration = .seconds(1), schemas: SchemaValidator? = nil) async throws -> TestAPIServer {
        let box = ServerBox()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.pipeline.configureHTTPServerPipeline().flatMap { ch.pipeline.addHandler(RequestHandler(box: box)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let server = TestAPIServer(channel: channel, port: channel.localAddress?.port ?? 0, bookmarkInterval: bookmarkInterval, schemas: schemas)
        box.server.withLock { $0 = server }
        return server
    }

    init(channel: any Channel, port: Int, bookmarkInterval: Duration, schemas: SchemaValidator?) {
        self.schemas = schemas
        self.channel = channel
        self.port = port
        self.bookmarkInterval = bookmarkInterval
        self.state = Mutex(State())
    }

    public func stop() async throws { try await channel.close() }

    /// Forgets the watch history up to now: watches from older versions get 410 Gone.
    public func compact() {
        state.withLock { s in
            s.compactedThrough = s.rv
            s.events.removeAll()
        }
    }

    /// Refuses requests matching `rule` with `status` until called again (nil: none): 503
    /// ServiceUnavailable by default, 404 NotFound to answer as for an object deleted meanwhile.
    public func refuseRequests(with status: Int = 503, where rule: RequestRule?) {
        refusal.withLock { $0.rule = rule; $0.status = status }
    }

    /// Leaves requests matching `rule` unanswered (their connections stay open) until called again (nil: none).
    public func hangRequests(where rule: RequestRule?) {
        hang.withLock { $0 = rule }
    }

    /// Whether a request is to be left unanswered.
    func hangs(method: String, uri: String, body: Data) -> Bool {
        guard let rule = hang.withLock({ $0 }) else { return false }
        let json = body.isEmpty ? nil : (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        return rule(method, URLComponents(string: uri)?.path ?? uri, json)
    }

    /// How many requests were refused so far.
    public var refusedRequests: Int { refusal.withLock { $0.count } }

    /// The current resourceVersion.
    public var resourceVersion: Int { state.withLock { $0.rv } }

    // MARK: Requests

    struct Response: @unchecked Sendable {  // JSON values, copied out of the lock
        var status: Int
        var body: [String: Any]
    }

    struct Route {
        var collection: String
        var namespace: String?
        var name: String?
        var subresource: String?
    }

    static func route(_ path: String) -> Route? {
        var parts = path.split(separator: "/").map(String.init)
        var prefix: String
        if parts.first == "api", parts.count >= 2 { prefix = "core/\(parts[1])"; parts.removeFirst(2) } else if parts.first == "apis", parts.count >= 3 {
            prefix = "\(parts[1])/\(parts[2])"; parts.removeFirst(3)
        } else { return nil }
        var namespace: String?
        if parts.first == "namespaces", parts.count >= 3 { namespace = parts[1]; parts.removeFirst(2) }
        guard let plural = parts.first else { return nil }
        prefix += "/\(plural)"
        return Route(collection: prefix, namespace: namespace, name: parts.count > 1 ? parts[1] : nil, subresource: parts.count > 2 ? parts[2] : nil)
    }

    static func status(_ code: Int, _ reason: String, _ message: String) -> Response {
        Response(status: code, body: ["kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message])
    }

    static func key(_ ns: String?, _ name: String) -> String { "\(ns ?? "")/\(name)" }

    func handle(method: String, uri: String, body: Data) -> Response {
        let comps = URLComponents(string: uri)
        let query = Dictionary((comps?.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        let segments = (comps?.path ?? uri).split(separator: "/").map(String.init)
        if method == "GET", segments.count == 2, segments[0] == "apis" { return discovery(group: segments[1]) }
        guard let r = Self.route(comps?.path ?? uri) else { return Self.status(404, "NotFound", "no such path \(uri)") }
        let json = body.isEmpty ? nil : (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        let refuse = refusal.withLock { f -> Int? in
            guard let rule = f.rule, rule(method, comps?.path ?? uri, json) else { return nil }
            f.count += 1
            return f.status
        }
        if refuse == 404 { return Self.status(404, "NotFound", "\(r.collection) \"\(r.name ?? "")\" not found") }
        if let refuse { return Self.status(refuse, "ServiceUnavailable", "the server is currently unable to handle the request") }
        return state.withLock { s -> Response in
            switch (method, r.name) {
            case ("GET", nil):
                let selector = Self.selector(query["labelSelector"])
                let items = (s.objects[r.collection] ?? [:]).filter { r.namespace == nil || $0.key.hasPrefix("\(r.namespace!)/") }
                    .map(\.value).filter { Self.matches($0, selector) }.sorted { Self.name($0) < Self.name($1) }
                return Response(status: 200, body: ["kind": "List", "apiVersion": "v1", "metadata": ["resourceVersion": String(s.rv)], "items": items])
            case ("GET", let name?):
                guard let o = s.objects[r.collection]?[Self.key(r.namespace, name)] else { return Self.status(404, "NotFound", "\(r.collection) \"\(name)\" not found") }
                return Response(status: 200, body: o)
            case ("POST", nil):
                guard var o = json else { return Self.status(400, "BadRequest", "body is not a JSON object") }
                var meta = o["metadata"] as? [String: Any] ?? [:]
                var name = meta["name"] as? String ?? ""
                if name.isEmpty, let g = meta["generateName"] as? String { name = g + String(UUID().uuidString.prefix(5)).lowercased() }
                guard !name.isEmpty else { return Self.status(422, "Invalid", "metadata.name: Required value") }
                let k = Self.key(r.namespace, name)
                if s.objects[r.collection]?[k] != nil { return Self.status(409, "AlreadyExists", "\(r.collection) \"\(name)\" already exists") }
                s.rv += 1
                meta["name"] = name
                if let ns = r.namespace { meta["namespace"] = ns }
                meta["uid"] = UUID().uuidString.lowercased()
                meta["resourceVersion"] = String(s.rv)
                meta["generation"] = 1
                meta["creationTimestamp"] = Self.now()
                meta.removeValue(forKey: "deletionTimestamp")
                o["metadata"] = meta
                o.removeValue(forKey: "status")  // set only through the status subresource, as with CRDs that enable it
                if let invalid = invalid(o, r.collection, name, old: nil) { s.rv -= 1; return invalid }
                s.objects[r.collection, default: [:]][k] = o
                Self.record(&s, "ADDED", r.collection, r.namespace, o)
                return Response(status: 201, body: o)
            case ("PUT", let name?), ("PATCH", let name?):
                let k = Self.key(r.namespace, name)
                guard let current = s.objects[r.collection]?[k] else { return Self.status(404, "NotFound", "\(r.collection) \"\(name)\" not found") }
                guard let j = json else { return Self.status(400, "BadRequest", "body is not a JSON object") }
                var next: [String: Any]
                // A resourceVersion in the body, of a PUT or a patch, is a precondition.
                let sent = (j["metadata"] as? [String: Any])?["resourceVersion"] as? String
                let have = (current["metadata"] as? [String: Any])?["resourceVersion"] as? String
                guard sent == nil || sent == have else {
                    return Self.status(409, "Conflict", "Operation cannot be fulfilled on \(r.collection) \"\(name)\": the object has been modified; please apply your changes to the latest version and try again")
                }
                if method == "PUT", sent == nil, Self.isCustomResource(r.collection, schemas) {
                    return Self.status(422, "Invalid", "\(r.collection) \"\(name)\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
                }
                let statusSubresource = schemas?.entry(collection: r.collection)?.hasStatusSubresource ?? true
                if r.subresource == "status", !statusSubresource {
                    return Self.status(404, "NotFound", "the server could not find the requested resource")
                }
                if method == "PUT" {
                    next = j
                } else {
                    next = Self.mergePatch(current, j) as? [String: Any] ?? current
                }
                // The status subresource changes only status; the main resource never does.
                if r.subresource == "status" {
                    var only = current
                    only["status"] = next["status"]
                    next = only
                } else if statusSubresource {
                    next["status"] = current["status"]
                }
                var meta = next["metadata"] as? [String: Any] ?? [:]
                let old = current["metadata"] as? [String: Any] ?? [:]
                for fixed in ["uid", "name", "namespace", "creationTimestamp", "deletionTimestamp", "generation"] { meta[fixed] = old[fixed] }
                if r.subresource != "status", !Self.equal(next["spec"], current["spec"]) { meta["generation"] = (old["generation"] as? Int ?? 1) + 1 }
                next["metadata"] = meta
                if Self.equal(next, current) { return Response(status: 200, body: current) }
                if let invalid = invalid(next, r.collection, name, old: current) { return invalid }
                s.rv += 1
                meta["resourceVersion"] = String(s.rv)
                next["metadata"] = meta
                if meta["deletionTimestamp"] != nil, (meta["finalizers"] as? [Any] ?? []).isEmpty {
                    Self.remove(&s, r.collection, r.namespace, name)
                    return Response(status: 200, body: next)
                }
                s.objects[r.collection, default: [:]][k] = next
                Self.record(&s, "MODIFIED", r.collection, r.namespace, next)
                return Response(status: 200, body: next)
            case ("DELETE", let name?):
                let k = Self.key(r.namespace, name)
                guard var o = s.objects[r.collection]?[k] else { return Self.status(404, "NotFound", "\(r.collection) \"\(name)\" not found") }
                var meta = o["metadata"] as? [String: Any] ?? [:]
                if !(meta["finalizers"] as? [Any] ?? []).isEmpty {
                    if meta["deletionTimestamp"] == nil {
                        s.rv += 1
                        meta["deletionTimestamp"] = Self.now()
                        meta["resourceVersion"] = String(s.rv)
                        o["metadata"] = meta
                        s.objects[r.collection]?[k] = o
                        Self.record(&s, "MODIFIED", r.collection, r.namespace, o)
                    }
                    return Response(status: 202, body: o)
                }
                Self.remove(&s, r.collection, r.namespace, name)
                return Response(status: 200, body: Self.status(200, "", "").body.merging(["status": "Success"]) { $1 })
            default:
                return Self.status(405, "MethodNotAllowed", "\(method) \(uri)")
            }
        }
    }

    /// Versions the server serves for a group, as `/apis/<group>` answers (an APIGroup): those of the
    /// group's CRDs (the newest first), else `servedVersions` set for it, else v1beta1 for Cluster API's
    /// groups (the version the Swift types name) and nothing (404) for others.
    func discovery(group: String) -> Response {
        var versions = servedVersions.withLock { $0[group] } ?? []
        if versions.isEmpty, let schemas {
            versions = Array(Set(schemas.entries.filter { $0.group == group }.map(\.version))).sorted(by: >)
        }
        if versions.isEmpty, SchemaValidator.clusterAPIGroups.contains(group) { versions = ["v1beta1"] }
        guard let preferred = versions.first else { return Self.status(404, "NotFound", "the server could not find the requested resource") }
        let list = versions.map { ["groupVersion": "\(group)/\($0)", "version": $0] }
        return Response(status: 200, body: ["kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": list, "preferredVersion": list[0]]
            .merging(["preferredVersion": ["groupVersion": "\(group)/\(preferred)", "version": preferred]]) { $1 })
    }

    /// Makes `/apis/<group>` answer `versions` (the preferred first), as a server with another
    /// release of that group would.
    public func serveVersions(_ versions: [String], forGroup group: String) {
        servedVersions.withLock { $0[group] = versions }
    }

    /// 422 Invalid when `object` breaks its kind's schema or CEL rules (`old`: the object it
    /// replaces); 400 when a Lease's times do not decode. Kinds without a schema are not checked.
    func invalid(_ object: [String: Any], _ collection: String, _ name: String, old: [String: Any]?) -> Response? {
        if collection == "coordination.k8s.io/v1/leases" { return Self.leaseDecodeError(object) }
        guard let schemas, let entry = schemas.entry(collection: collection) else { return nil }
        let problems = SchemaValidator.validate(object, entry.schema, root: true, old: old)
        guard !problems.isEmpty else { return nil }
        return Self.status(422, "Invalid", "\(entry.kind).\(entry.group) \"\(name)\" is invalid: [\(problems.map(\.description).joined(separator: ", "))]")
    }

    /// A Lease decodes as kube-apiserver decodes it: `acquireTime` and `renewTime` are MicroTime
    /// (RFC 3339 with exactly six fractional digits), the counts integers.
    static func leaseDecodeError(_ o: [String: Any]) -> Response? {
        let spec = o["spec"] as? [String: Any] ?? [:]
        for field in ["acquireTime", "renewTime"] {
            guard let v = spec[field] else { continue }
            guard let t = v as? String, KubernetesTime.parseMicroTime(t) != nil else {
                return status(400, "BadRequest", "Lease in version \"v1\" cannot be handled as a Lease: parsing time \"\(v)\" as \"2006-01-02T15:04:05.000000Z07:00\": spec.\(field) is not a MicroTime")
            }
        }
        for field in ["leaseDurationSeconds", "leaseTransitions"] {
            if let v = spec[field], !SchemaValidator.isInteger(v) {
                return status(400, "BadRequest", "Lease in version \"v1\" cannot be handled as a Lease: spec.\(field): expected an integer, not \(v)")
            }
        }
        if let v = spec["holderIdentity"], !(v is String) {
            return status(400, "BadRequest", "Lease in version \"v1\" cannot be handled as a Lease: spec.holderIdentity: expected a string")
        }
        return nil
    }

    /// Whether a collection is served from a CustomResourceDefinition (a CRD the schemas hold, or a
    /// group of Cluster API's or ours), whose updates need a resourceVersion.
    static func isCustomResource(_ collection: String, _ schemas: SchemaValidator?) -> Bool {
        if schemas?.entry(collection: collection) != nil { return true }
        let group = collection.split(separator: "/").first.map(String.init) ?? ""
        return group.hasSuffix("x-k8s.io")
    }

    /// Removes an object for good (DELETED), then its dependents by owner reference.
    static func remove(_ s: inout State, _ collection: String, _ namespace: String?, _ name: String) {
        guard let o = s.objects[collection]?.removeValue(forKey: key(namespace, name)) else { return }
        s.rv += 1
        var gone = o
        var meta = gone["metadata"] as? [String: Any] ?? [:]
        meta["resourceVersion"] = String(s.rv)
        gone["metadata"] = meta
        record(&s, "DELETED", collection, namespace, gone)
        guard let uid = meta["uid"] as? String else { return }
        let live = Set(s.objects.values.flatMap { $0.values.compactMap { ($0["metadata"] as? [String: Any])?["uid"] as? String } })
        for (c, objs) in s.objects {
            for (_, d) in objs {
                let dm = d["metadata"] as? [String: Any] ?? [:]
                let owners = (dm["ownerReferences"] as? [[String: Any]] ?? []).compactMap { $0["uid"] as? String }
                // Collected once its last owner is gone (the garbage collector waits for all of them).
                if owners.contains(uid), owners.allSatisfy({ !live.contains($0) }), let n = dm["name"] as? String {
                    var dmeta = dm
                    if !(dm["finalizers"] as? [Any] ?? []).isEmpty {
                        if dmeta["deletionTimestamp"] == nil {
                            s.rv += 1
                            dmeta["deletionTimestamp"] = now()
                            dmeta["resourceVersion"] = String(s.rv)
                            var d2 = d
                            d2["metadata"] = dmeta
                            s.objects[c]?[key(dm["namespace"] as? String, n)] = d2
                            record(&s, "MODIFIED", c, dm["namespace"] as? String, d2)
                        }
                    } else {
                        remove(&s, c, dm["namespace"] as? String, n)
                    }
                }
            }
        }
    }

    static func record(_ s: inout State, _ type: String, _ collection: String, _ namespace: String?, _ object: [String: Any]) {
        s.events.append(Event(rv: s.rv, type: type, collection: collection, namespace: namespace ?? "", object: object))
        for w in s.watchers.values where w.collection == collection && (w.namespace == nil || w.namespace == namespace) && matches(object, w.selector) {
            w.send(line(type, object))
        }
    }

    static func line(_ type: String, _ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: ["type": type, "object": object], options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Registers a watch; returns the events to replay first (or a 410 ERROR line) and its id.
    func startWatch(uri: String, send: @escaping @Sendable (String) -> Void) -> (replay: [String], id: UUID?, timeout: Int, bookmarks: Bool) {
        let comps = URLComponents(string: uri)
        let query = Dictionary((comps?.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        let r = Self.route(comps?.path ?? uri)!
        let from = Int(query["resourceVersion"] ?? "") ?? 0
        let selector = Self.selector(query["labelSelector"])
        let timeout = Int(query["timeoutSeconds"] ?? "") ?? 300
        let bookmarks = query["allowWatchBookmarks"] == "true"
        return state.withLock { s in
            if from > 0 && from < s.compactedThrough {
                let st = Self.status(410, "Expired", "too old resource version: \(from) (\(s.compactedThrough))").body
                return ([Self.line("ERROR", st)], nil, timeout, false)
            }
            let replay = s.events.filter { $0.rv > from && $0.collection == r.collection && (r.namespace == nil || $0.namespace == r.namespace) && Self.matches($0.object, selector) }
                .map { Self.line($0.type, $0.object) }
            let id = UUID()
            s.watchers[id] = (r.collection, r.namespace, selector, send)
            return (replay, id, timeout, bookmarks)
        }
    }

    func stopWatch(_ id: UUID) { _ = state.withLock { $0.watchers.removeValue(forKey: id) } }

    func bookmarkLine() -> String {
        let rv = state.withLock { $0.rv }
        return Self.line("BOOKMARK", ["kind": "Bookmark", "metadata": ["resourceVersion": String(rv)]])
    }

    // MARK: JSON helpers

    static func selector(_ text: String?) -> [String: String] {
        var out: [String: String] = [:]
        for term in (text ?? "").split(separator: ",") {
            let kv = term.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: CharacterSet(charactersIn: "= ")) }
            if kv.count == 2 { out[kv[0]] = kv[1] }
        }
        return out
    }

    static func matches(_ o: [String: Any], _ selector: [String: String]) -> Bool {
        let labels = (o["metadata"] as? [String: Any])?["labels"] as? [String: String] ?? [:]
        return selector.allSatisfy { labels[$0.key] == $0.value }
    }

    static func name(_ o: [String: Any]) -> String {
        let m = o["metadata"] as? [String: Any] ?? [:]
        return "\(m["namespace"] ?? "")/\(m["name"] ?? "")"
    }

    /// RFC 7386: objects merge recursively, null deletes, anything else replaces.
    static func mergePatch(_ target: Any?, _ patch: Any) -> Any? {
        guard let p = patch as? [String: Any] else { return patch is NSNull ? nil : patch }
        var t = target as? [String: Any] ?? [:]
        for (k, v) in p {
            if v is NSNull { t.removeValue(forKey: k) } else { t[k] = mergePatch(t[k], v) }
        }
        return t
    }

    static func equal(_ a: Any?, _ b: Any?) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case (let x?, let y?):
            let opts: JSONSerialization.WritingOptions = [.sortedKeys, .fragmentsAllowed]
            return (try? JSONSerialization.data(withJSONObject: x, options: opts)) == (try? JSONSerialization.data(withJSONObject: y, options: opts))
        default: return false
        }
    }

    static func now() -> String { KubernetesTime.time(Date()) }
}

final class ServerBox: Sendable {
    let server = Mutex<TestAPIServer?>(nil)
}

/// One HTTP/1.1 connection: collects a request, answers it; watches stream chunked JSON lines.
final class RequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let box: ServerBox
    var head: HTTPRequestHead?
    var body = Data()
    var watchID: UUID?

    init(box: ServerBox) { self.box = box }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = Data()
        case .body(var b):
            body.append(contentsOf: b.readBytes(length: b.readableBytes) ?? [])
        case .end:
            guard let head, let server = box.server.withLock({ $0 }) else { return }
            if server.hangs(method: head.method.rawValue, uri: head.uri, body: body) {
                return  // never answered; the connection stays open
            }
            if head.method == .GET, head.uri.contains("watch=1") || head.uri.contains("watch=true") {
                startWatch(context: context, server: server, head: head)
            } else {
                let r = server.handle(method: head.method.rawValue, uri: head.uri, body: body)
                let data = (try? JSONSerialization.data(withJSONObject: r.body, options: [.sortedKeys])) ?? Data()
                var headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(data.count))])
                if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .init(statusCode: r.status), headers: headers))), promise: nil)
                var buf = context.channel.allocator.buffer(capacity: data.count)
                buf.writeBytes(data)
                context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
                let keepAlive = head.isKeepAlive
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in if !keepAlive { channel.close(promise: nil) } }
            }
        }
    }

    func startWatch(context: ChannelHandlerContext, server: TestAPIServer, head: HTTPRequestHead) {
        let channel = context.channel
        let loop = context.eventLoop
        let headers = HTTPHeaders([("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
        @Sendable func send(_ line: String) {
            loop.execute {
                var buf = channel.allocator.buffer(capacity: line.utf8.count)
                buf.writeString(line)
                channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buf)), promise: nil)
            }
        }
        let (replay, id, timeout, bookmarks) = server.startWatch(uri: head.uri, send: send)
        for l in replay { send(l) }
        guard let id else {
            loop.execute { channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) } }
            return
        }
        watchID = id
        let interval = server.bookmarkInterval
        let ticker = bookmarks ? loop.scheduleRepeatedTask(initialDelay: .nanoseconds(Int64(interval.components.seconds) * 1_000_000_000 + interval.components.attoseconds / 1_000_000_000),
                                                          delay: .nanoseconds(Int64(interval.components.seconds) * 1_000_000_000 + interval.components.attoseconds / 1_000_000_000)) { _ in
            send(server.bookmarkLine())
        } : nil
        loop.scheduleTask(in: .seconds(Int64(timeout))) {
            ticker?.cancel()
            server.stopWatch(id)
            channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
        }
        channel.closeFuture.whenComplete { _ in
            ticker?.cancel()
            server.stopWatch(id)
        }
    }
}
