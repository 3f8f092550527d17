import FlintlockAPI
import Foundation
import HostPort
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOSSL
import SwiftProtobuf
import Yams

/// A client for a host agent's API (Flintlock's MicroVM service and Liquid Metal's additions),
/// shared by lmctl, the Cluster API provider and the CI runner service.
public final class AgentClient: Sendable {
    public typealias MicroVM = Flintlock_Types_MicroVM
    public typealias MicroVMSpec = Flintlock_Types_MicroVMSpec

    let client: GRPCClient<HTTP2ClientTransport.Posix>
    let runTask: Task<Void, Never>
    public let address: String

    /// TLS settings for agents served with `--tls-cert` (and `--tls-client-validate`).
    public struct TLSOptions: Sendable, Hashable {
        /// A PEM file, or PEM text (from a Kubernetes Secret, say).
        public enum Source: Sendable, Hashable {
            case file(String)
            case pem([UInt8])
        }
        /// CA bundle that signed the agent's certificate (nil: the system's trust roots).
        public var ca: Source?
        /// Client certificate and key, for agents that require client certificates.
        public var clientCertificate: Source?
        public var clientKey: Source?

        /// From PEM files.
        public init(caCertificate: String? = nil, clientCertificate: String? = nil, clientKey: String? = nil) {
            self.init(ca: caCertificate.map(Source.file), clientCertificate: clientCertificate.map(Source.file), clientKey: clientKey.map(Source.file))
        }

        public init(ca: Source?, clientCertificate: Source?, clientKey: Source?) {
            self.ca = ca
            self.clientCertificate = clientCertificate
            self.clientKey = clientKey
        }

        var transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
            func source(_ s: Source) -> TLSConfig.CertificateSource {
                switch s {
                case .file(let path): .file(path: path, format: .pem)
                case .pem(let bytes): .bytes(bytes, format: .pem)
                }
            }
            func key(_ s: Source) -> TLSConfig.PrivateKeySource {
                switch s {
                case .file(let path): .file(path: path, format: .pem)
                case .pem(let bytes): .bytes(bytes, format: .pem)
                }
            }
            let ca = self.ca
            let configure: (inout HTTP2ClientTransport.Posix.TransportSecurity.TLS) -> Void = { c in
                if let ca { c.trustRoots = .certificates([source(ca)]) }
            }
            if let cert = clientCertificate, let k = clientKey {
                return .mTLS(certificateChain: [source(cert)], privateKey: key(k), configure: configure)
            }
            return .tls(configure: configure)
        }

        /// The same settings for TLS done in a proxy tunnel (HTTP/2 by ALPN, as gRPC does). NIOSSL
        /// checks the chain; the tunnel checks the agent's name or address against the certificate's
        /// subjectAltNames itself, since NIOSSL would also accept the address of the peer it is
        /// connected to, which is the proxy.
        func tunnelSSLContext() throws -> NIOSSLContext {
            func pem(_ s: Source) throws -> [UInt8] {
                switch s {
                case .file(let path): return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
                case .pem(let bytes): return bytes
                }
            }
            var c = TLSConfiguration.makeClientConfiguration()
            c.applicationProtocols = ["h2"]
            if let ca { c.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(try pem(ca))) }
            if let cert = clientCertificate, let k = clientKey {
                c.certificateChain = try NIOSSLCertificate.fromPEMBytes(try pem(cert)).map { .certificate($0) }
                c.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: try pem(k), format: .pem))
            }
            c.certificateVerification = .noHostnameVerification
            return try NIOSSLContext(configuration: c)
        }
    }

    let tunnel: ConnectTunnel?

    /// Connects to `address`: `host:port`, or `unix:///path/to/socket`. With `token`, every call
    /// carries `authorization: Basic <base64(token)>`; with `tls`, the connection uses TLS; with
    /// `proxy`, connections go through that HTTP proxy (`CONNECT`), TLS end to end with the agent.
    public init(address: String, token: String? = nil, tls: TLSOptions? = nil, proxy: HTTPConnectProxy? = nil) throws {
        self.address = address
        let target: any ResolvableTarget
        var tunnel: ConnectTunnel?
        var security = tls?.transportSecurity ?? .plaintext
        if address.hasPrefix("unix://") {
            guard proxy == nil else { throw RPCError(code: .invalidArgument, message: "agent address \(address): a Unix socket is not reached through a proxy") }
            target = .unixDomainSocket(path: String(address.dropFirst("unix://".count)), authority: "localhost")
        } else {
            guard let hp = HostPort(parsing: address, defaultHost: "localhost") else {
                throw RPCError(code: .invalidArgument, message: "agent address \"\(address)\" is not host:port or unix:///path")
            }
            let (host, port) = (hp.host, hp.port)
            if let proxy {
                // gRPC speaks plain HTTP/2 to a private socket; the tunnel behind it does CONNECT and TLS.
                let t = try ConnectTunnel(target: .init(host: host, port: port, proxy: proxy, tls: try tls?.tunnelSSLContext()))
                tunnel = t
                target = .unixDomainSocket(path: t.socketPath, authority: address)
                security = .plaintext
            } else if IPLiteral.bytes(host) != nil {
                // IP literals as IP targets: with TLS, an IP address must not be sent as the SNI name.
                target = host.contains(":") ? .ipv6(address: host, port: port) : .ipv4(address: host, port: port)
            } else {
                target = .dns(host: host, port: port)
            }
        }
        self.tunnel = tunnel
        let transport: HTTP2ClientTransport.Posix
        do { transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: security) } catch {
            tunnel?.close()
            throw error
        }
        var interceptors: [any ClientInterceptor] = []
        if let token, !token.isEmpty { interceptors.append(BasicAuthClientInterceptor(token: token)) }
        let client = GRPCClient(transport: transport, interceptors: interceptors)
        self.client = client
        self.runTask = Task { try? await client.runConnections() }
    }

    deinit {
        client.beginGracefulShutdown()
        tunnel?.close()
    }

    public func close() {
        client.beginGracefulShutdown()
        tunnel?.close()
    }

    var microvms: Microvm_Services_Api_V1alpha1_MicroVM.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var events: Liquidmetal_Agent_V1_MicroVMEvents.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var hostInfo: Liquidmetal_Agent_V1_HostInfo.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }

    /// The host's capacity and what its microVMs take (Liquid Metal addition).
    public func capacity() async throws -> Liquidmetal_Agent_V1_HostCapacity {
        try await explained { try await hostInfo.getCapacity(.init(), options: Self.options) }
    }

    /// Adds what the proxy tunnel saw to an `unavailable` error: gRPC itself only sees a closed connection.
    func explained<T: Sendable>(_ call: () async throws -> T) async throws -> T {
        do { return try await call() } catch let e as RPCError where e.code == .unavailable {
            guard let why = tunnel?.lastProblem else { throw e }
            throw RPCError(code: .unavailable, message: "\(e.message) (\(why))")
        }
    }

    static var options: CallOptions {
        var o = CallOptions.defaults
        o.timeout = .seconds(30)
        return o
    }

    public func create(_ spec: MicroVMSpec) async throws -> MicroVM {
        try await explained { try await microvms.createMicroVM(.with { $0.microvm = spec }, options: Self.options).microvm }
    }

    public func get(uid: String) async throws -> MicroVM {
        try await explained { try await microvms.getMicroVM(.with { $0.uid = uid }, options: Self.options).microvm }
    }

    public func list(namespace: String = "", name: String? = nil) async throws -> [MicroVM] {
        try await explained {
            try await microvms.listMicroVMs(.with {
                $0.namespace = namespace
                if let name { $0.name = name }
            }, options: Self.options).microvm
        }
    }

    /// Lists through the streaming RPC.
    public func listStream(namespace: String = "", name: String? = nil) async throws -> [MicroVM] {
        try await microvms.listMicroVMsStream(.with {
            $0.namespace = namespace
            if let name { $0.name = name }
        }, options: Self.options) { response in
            var out: [MicroVM] = []
            for try await m in response.messages { out.append(m.microvm) }
            return out
        }
    }

    public func delete(uid: String) async throws {
        _ = try await explained { try await microvms.deleteMicroVM(.with { $0.uid = uid }, options: Self.options) }
    }

    /// Streams watch events (current VMs, a SYNCED marker, then changes) to `handle` until it
    /// returns false or the stream ends.
    public func watch(namespace: String = "", _ handle: @escaping @Sendable (Liquidmetal_Agent_V1_WatchEvent) async throws -> Bool) async throws {
        try await events.watch(.with { $0.namespace = namespace }) { response in
            for try await e in response.messages {
                if try await !handle(e) { return }
            }
        }
    }

    /// Streams console output: the last `tailBytes` (all when 0), then new output with `follow`.
    public func consoleLog(uid: String, tailBytes: Int64 = 0, follow: Bool = false, _ handle: @escaping @Sendable (Data) async throws -> Bool) async throws {
        try await events.consoleLog(.with {
            $0.uid = uid
            $0.tailBytes = tailBytes
            $0.follow = follow
        }) { response in
            for try await c in response.messages {
                if try await !handle(c.data) { return }
            }
        }
    }

    /// Waits until the VM satisfies `condition` (checked by polling Get), or throws after `timeout`.
    public func wait(uid: String, timeout: Duration, interval: Duration = .milliseconds(200), until condition: (MicroVM) -> Bool) async throws -> MicroVM {
        let deadline = ContinuousClock.now + timeout
        while true {
            let vm = try await get(uid: uid)
            if condition(vm) { return vm }
            guard ContinuousClock.now < deadline else {
                throw RPCError(code: .deadlineExceeded, message: "microVM \(uid) did not reach the expected state within \(timeout); last state \(vm.status.state), reason: \(vm.status.failureReason)")
            }
            try await Task.sleep(for: interval)
        }
    }
}

struct BasicAuthClientInterceptor: ClientInterceptor {
    let token: String
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>, context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        request.metadata.addString("Basic " + Data(token.utf8).base64EncodedString(), forKey: "authorization")
        return try await next(request, context)
    }
}

/// Reading and writing specs and VMs as JSON or YAML with the API's field names.
public enum SpecDocuments {
    /// Parses a MicroVMSpec from JSON or YAML text (field names as in the API: `memory_in_mb`,
    /// or their lowerCamel JSON forms).
    public static func spec(from text: String) throws -> Flintlock_Types_MicroVMSpec {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        var json = trimmed
        if !trimmed.hasPrefix("{") {
            guard let obj = try Yams.load(yaml: text) else { throw RPCError(code: .invalidArgument, message: "the spec document is empty") }
            guard JSONSerialization.isValidJSONObject(obj) else { throw RPCError(code: .invalidArgument, message: "the spec document is not a mapping") }
            json = String(decoding: try JSONSerialization.data(withJSONObject: obj), as: UTF8.self)
        }
        var opts = JSONDecodingOptions()
        opts.ignoreUnknownFields = false
        do {
            return try Flintlock_Types_MicroVMSpec(jsonString: json, options: opts)
        } catch {
            throw RPCError(code: .invalidArgument, message: "the spec document does not match flintlock.types.MicroVMSpec: \(error)")
        }
    }

    public static func json(_ m: some SwiftProtobuf.Message) throws -> String {
        var o = JSONEncodingOptions()
        o.preserveProtoFieldNames = true
        let compact = try m.jsonString(options: o)
        let obj = try JSONSerialization.jsonObject(with: Data(compact.utf8))
        return String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self)
    }

    public static func yaml(_ m: some SwiftProtobuf.Message) throws -> String {
        let obj = try JSONSerialization.jsonObject(with: Data(try json(m).utf8))
        return try Yams.dump(object: integral(obj), sortKeys: true)
    }

    /// JSONSerialization yields NSNumber for every number; keep whole numbers integers in YAML.
    static func integral(_ v: Any) -> Any {
        if let d = v as? [String: Any] { return d.mapValues(integral) }
        if let a = v as? [Any] { return a.map(integral) }
        if let n = v as? NSNumber {
            switch String(cString: n.objCType) {
            case "c", "B": return n.boolValue
            case "d", "f":
                if n.doubleValue == n.doubleValue.rounded() && abs(n.doubleValue) < 1e15 { return n.int64Value }
                return n.doubleValue
            default: return n.int64Value
            }
        }
        return v
    }
}
