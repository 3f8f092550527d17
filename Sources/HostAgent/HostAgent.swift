import ContainerdImages
import FlintlockAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HostNetwork
import HostSystem
import HTTPEndpoints
import Logging
import MicroVMCore
import OCIRegistry
import MicroVMStore
import QEMUProvider
import ServiceLifecycle

/// The host agent: the gRPC API, the reconciler and the supervisor over one host's microVMs.
/// Runs until cancelled (a graceful shutdown leaves VMs running; they are adopted on restart).
public final class HostAgent: Service {
    public let configuration: AgentConfiguration
    public let store: StateStore
    public let reconciler: Reconciler
    public let service: MicroVMService
    let accessPolicy: AccessPolicy
    /// The Prometheus text of every metric, when a metrics backend is bootstrapped.
    let metricsText: (@Sendable () -> [UInt8])?
    let images: ContainerdImageService
    let vmm: QEMUVMM
    let logger: Logger

    /// `metricsText` renders the process's metrics (flintlockd bootstraps Prometheus and passes its
    /// registry's text); /metrics is served on `--metrics-endpoint` only with it.
    public static func make(configuration c: AgentConfiguration, logger: Logger, metricsText: (@Sendable () -> [UInt8])? = nil) async throws -> HostAgent {
        let policy = try c.accessPolicy()  // an unusable auth file stops the start before anything else
        try HostFiles.createDirectory(c.stateDir)
        try HostFiles.createDirectory("\(c.stateDir)/vm")
        let repo = try SQLiteMicroVMRepository(path: "\(c.stateDir)/flintlock.db")
        var registry = RegistryConfig(plainHTTP: Set(c.insecureRegistries))
        if let f = c.registryAuthFile { registry.credentials = try RegistryConfig.loadCredentials(dockerConfigAt: f) }
        let images = try ContainerdImageService(
            socketPath: c.containerdSocket, namespace: c.containerdNamespace, snapshotter: c.containerdSnapshotter,
            cacheDirectory: "\(c.stateDir)/images", registry: registry, logger: logger)
        let qemuPath: String
        do { qemuPath = try HostProcess.resolveExecutable(c.qemuBin) } catch {
            throw AgentError(.failedPrecondition, "QEMU binary \(c.qemuBin) not found (install qemu-system-x86 or set --qemu-bin)")
        }
        let accel = await QEMUAcceleration.choose(requested: c.qemuAccel, binary: qemuPath, workDirectory: "\(c.stateDir)/probe", logger: logger)
        let vmm = QEMUVMM(binary: qemuPath, accelerator: accel, shutdownTimeout: c.shutdownTimeout, logger: logger)
        if let parent = c.parentIface, !HostFiles.exists("/sys/class/net/\(parent)") {
            throw AgentError(.failedPrecondition, "--parent-iface \(parent): no such network interface on this host")
        }
        try await AgentBridge(network: try c.agentNetwork(), stateDirectory: c.stateDir, logger: logger).reconcile()
        return HostAgent(configuration: c, accessPolicy: policy, repository: repo, images: images, vmm: vmm, metricsText: metricsText, logger: logger)
    }

    init(configuration c: AgentConfiguration, accessPolicy: AccessPolicy, repository: any MicroVMRepository, images: ContainerdImageService, vmm: QEMUVMM,
         metricsText: (@Sendable () -> [UInt8])?, logger: Logger) {
        self.configuration = c
        self.accessPolicy = accessPolicy
        self.metricsText = metricsText
        self.images = images
        self.vmm = vmm
        self.logger = logger
        let store = StateStore(repository: repository)
        self.store = store
        var settings = ReconcilerSettings(stateDirectory: c.stateDir)
        settings.workers = c.reconcileWorkers
        settings.maxRetries = c.maxRetries
        settings.maxRestarts = c.maxRestarts
        settings.resyncPeriod = c.resyncPeriod
        let agentNetwork = try? c.agentNetwork()  // validated when the configuration was resolved
        settings.agentNetwork = agentNetwork
        settings.parentInterface = c.parentIface
        let reconciler = Reconciler(store: store, images: images, network: TapNetwork(logger: logger), vmm: vmm, settings: settings, logger: logger)
        self.reconciler = reconciler
        let policy = SpecPolicy(defaultProvider: c.defaultProvider, availableProviders: ["qemu"], defaultBridge: c.bridgeName,
                                parentInterface: c.parentIface, agentNetwork: agentNetwork ?? nil)
        self.service = MicroVMService(store: store, reconciler: reconciler, images: images, policy: policy, admission: c.admission, logger: logger)
    }

    var grpcServices: [any RegistrableRPCService] {
        let vmm = self.vmm
        let reconciler = self.reconciler
        return [
            MicroVMGRPCService(service: service),
            EventsGRPCService(service: service, store: store, consolePath: { vm in vmm.consoleLogPath(directory: reconciler.directory(of: vm.ref)) }),
            HostInfoGRPCService(store: store, providers: [vmm.name], accelerator: vmm.accelerator, limits: configuration.admission),
        ]
    }

    var interceptors: [any ServerInterceptor] { [MetricsInterceptor(), AccessInterceptor(policy: accessPolicy)] }

    /// /healthz: the state database answers. /readyz: and containerd too. /metrics: Prometheus text.
    func httpEndpoint(_ path: String) async -> (status: Int, contentType: String, body: [UInt8]) {
        switch path {
        case "/healthz", "/readyz":
            do { _ = try store.list(namespace: nil) } catch {
                return (503, "text/plain", Array("state database: \(error)\n".utf8))
            }
            if path == "/readyz" {
                do { try await images.checkAvailable() } catch {
                    return (503, "text/plain", Array("containerd: \(error)\n".utf8))
                }
            }
            return (200, "text/plain", Array("ok\n".utf8))
        case "/metrics":
            guard let metricsText else { return (404, "text/plain", Array("no metrics backend\n".utf8)) }
            AgentMetrics.refreshInventory((try? store.list(namespace: nil)) ?? [], providers: [vmm.name])
            return (200, "text/plain; version=0.0.4", metricsText())
        default:
            return (404, "text/plain", Array("not found: try /metrics, /healthz or /readyz\n".utf8))
        }
    }

    /// The authentication and authorization in force, for the start log.
    var authDescription: String {
        if accessPolicy.isOpen { return configuration.tlsClientValidate ? "client certificates (any signed by the CA may do everything)" : "none" }
        var parts: [String] = []
        if accessPolicy.tokenCount > 0 { parts.append("\(accessPolicy.tokenCount) token(s)") }
        if accessPolicy.identityCount > 0 { parts.append("\(accessPolicy.identityCount) client identit\(accessPolicy.identityCount == 1 ? "y" : "ies")") }
        return parts.joined(separator: " and ") + ", per-namespace" + (configuration.authFile.map { " from \($0)" } ?? "")
    }

    func transportSecurity() -> HTTP2ServerTransport.Posix.TransportSecurity {
        let c = configuration
        guard !c.insecure, let cert = c.tlsCert, let key = c.tlsKey else { return .plaintext }
        if c.tlsClientValidate, let ca = c.tlsClientCA {
            return .mTLS(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem)) {
                $0.trustRoots = .certificates([.file(path: ca, format: .pem)])
            }
        }
        return .tls(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem))
    }

    /// Serves the API and reconciles until the task is cancelled or a graceful shutdown is requested.
    public func run() async throws {
        let endpoint = try AgentConfiguration.hostPort(configuration.grpcEndpoint)
        let (host, port) = (endpoint.host, endpoint.port)
        var servers: [GRPCServer<HTTP2ServerTransport.Posix>] = [
            GRPCServer(
                transport: HTTP2ServerTransport.Posix(address: .ipv4(host: host == "localhost" ? "127.0.0.1" : host, port: port), transportSecurity: transportSecurity()),
                services: grpcServices, interceptors: interceptors)
        ]
        if let socket = configuration.grpcSocket {
            try HostFiles.remove(socket)
            servers.append(GRPCServer(
                transport: HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: socket), transportSecurity: .plaintext),
                services: grpcServices, interceptors: interceptors))
        }
        do {
            let version = try await images.connection.serverVersion()
            logger.info("containerd reachable", metadata: ["socket": "\(configuration.containerdSocket)", "version": "\(version)"])
        } catch {
            logger.warning("containerd is not reachable yet; creates fail with UNAVAILABLE until it is: \(error)")
        }
        logger.info("flintlockd serving", metadata: [
            "grpc-endpoint": "\(configuration.grpcEndpoint)", "state-dir": "\(configuration.stateDir)",
            "accelerator": "\(vmm.accelerator)", "transport": "\(configuration.transportDescription)", "auth": "\(authDescription)",
        ])
        if configuration.insecure && configuration.tlsCert != nil {
            logger.warning("--insecure: serving plaintext although --tls-cert is given")
        }
        if accessPolicy.isOpen && !configuration.tlsClientValidate {
            logger.warning("no authentication: anyone who reaches \(configuration.grpcEndpoint) may create and delete microVMs (set --basic-auth-token or --auth-file)")
        }
        var http: HTTPEndpoints?
        if let m = configuration.metricsEndpoint {
            http = try await HTTPEndpoints.start(address: m) { [self] path in await self.httpEndpoint(path) }
            logger.info("serving /metrics, /healthz and /readyz", metadata: ["metrics-endpoint": "\(m)", "port": "\(http?.port ?? 0)"])
        }
        defer { if let http { Task { try? await http.stop() } } }
        let allServers = servers
        let reconcileTask = Task { await reconciler.run() }
        defer { reconcileTask.cancel() }
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                for s in allServers { group.addTask { try await s.serve() } }
            }
        } onGracefulShutdown: {
            for s in allServers { s.beginGracefulShutdown() }
        }
        reconcileTask.cancel()
        await reconcileTask.value
        await images.shutdown()
        logger.info("flintlockd stopped; microVMs keep running and are adopted on the next start")
    }
}
