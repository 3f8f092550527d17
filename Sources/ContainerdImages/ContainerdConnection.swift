import ContainerdAPI
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import MicroVMCore

/// A gRPC connection to containerd's socket, scoped to one containerd namespace.
public final class ContainerdConnection: Sendable {
    public let socketPath: String
    public let namespace: String
    let client: GRPCClient<HTTP2ClientTransport.Posix>
    let logger: Logger
    private let runTask: Task<Void, Never>

    public init(socketPath: String, namespace: String, logger: Logger) throws {
        self.socketPath = socketPath
        self.namespace = namespace
        self.logger = logger
        let transport = try HTTP2ClientTransport.Posix(
            target: .unixDomainSocket(path: socketPath, authority: "localhost"),
            transportSecurity: .plaintext,
            config: .defaults { $0.backoff = .init(initial: .milliseconds(100), max: .seconds(2), multiplier: 1.6, jitter: 0.2) })
        let client = GRPCClient(transport: transport)
        self.client = client
        self.runTask = Task {
            do { try await client.runConnections() } catch { logger.error("containerd connection ended: \(error)") }
        }
    }

    deinit { client.beginGracefulShutdown() }

    public func close() { client.beginGracefulShutdown() }

    /// Request headers: the namespace, and the lease when work should be held by one.
    func metadata(lease: String? = nil) -> Metadata {
        var m = Metadata()
        m.addString(namespace, forKey: "containerd-namespace")
        if let lease { m.addString(lease, forKey: "containerd-lease") }
        return m
    }

    /// Unary calls fail fast instead of waiting for containerd to come back.
    static func options(timeout: Duration = .seconds(30)) -> CallOptions {
        var o = CallOptions.defaults
        o.timeout = timeout
        o.waitForReady = false
        return o
    }

    var content: Containerd_Services_Content_V1_Content.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var images: Containerd_Services_Images_V1_Images.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var snapshots: Containerd_Services_Snapshots_V1_Snapshots.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var diff: Containerd_Services_Diff_V1_Diff.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var leases: Containerd_Services_Leases_V1_Leases.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }
    var version: Containerd_Services_Version_V1_Version.Client<HTTP2ClientTransport.Posix> { .init(wrapping: client) }

    /// containerd's version; throws UNAVAILABLE when it cannot be reached.
    public func serverVersion() async throws -> String {
        try await call("version") {
            try await version.version(.init(), options: Self.options(timeout: .seconds(5))).version
        }
    }

    /// Runs a containerd call, turning transport failures into UNAVAILABLE with the socket named.
    func call<T: Sendable>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let e as RPCError where e.code == .unavailable || e.code == .deadlineExceeded {
            let cause = e.cause.map { " (cause: \(String(reflecting: $0)))" } ?? ""
            throw AgentError(.unavailable, "containerd at \(socketPath) is unreachable (\(what)): \(e.message)\(cause)")
        }
    }
}

extension RPCError {
    var isNotFound: Bool { code == .notFound }
    var isAlreadyExists: Bool { code == .alreadyExists }
}
