import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostAgent
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// flintlockd: the Liquid Metal host agent (Flintlock-compatible gRPC API, QEMU microVMs).
@main
struct Flintlockd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flintlockd",
        abstract: "Liquid Metal host agent: creates and supervises microVMs from OCI images.",
        discussion: """
            Serves Flintlock's gRPC API (microvm.services.api.v1alpha1.MicroVM) plus Liquid Metal's
            additions (liquidmetal.agent.v1.MicroVMEvents: watch and console output;
            liquidmetal.agent.v1.HostInfo: capacity for placement).
            """,
        subcommands: [Run.self, Version.self])
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() { print("flintlockd (Liquid Metal in Swift) \(AgentVersion.current)") }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the host agent.",
        discussion: """
            Every option can also come from the environment (FLINTLOCKD_<OPTION>, e.g.
            FLINTLOCKD_GRPC_ENDPOINT) or from the config file (YAML, keys are the option names,
            e.g. `grpc-endpoint: localhost:9090`). A flag beats the environment, which beats the file.
            """)

    @Option(help: "Config file (YAML). Default: /etc/opt/flintlockd/config.yaml when it exists.")
    var config: String?

    @Option(name: .customLong("grpc-endpoint"), help: "TCP address the gRPC API listens on. (default: localhost:9090)")
    var grpcEndpoint: String?
    @Option(name: .customLong("grpc-socket"), help: "Also serve the gRPC API on this Unix socket.")
    var grpcSocket: String?
    @Option(name: .customLong("state-dir"), help: "State database, VM directories and image cache. (default: /var/lib/flintlock)")
    var stateDir: String?
    @Option(name: .customLong("resync-period"), help: "Reconcile every VM this often, e.g. 10m or 30s. (default: 10m)")
    var resyncPeriod: String?
    @Option(name: .customLong("basic-auth-token"), help: "Require 'authorization: Basic <base64(token)>' on every call.")
    var basicAuthToken: String?
    @Option(name: .customLong("auth-file"), help: "YAML file mapping tokens and client-certificate identities (SAN or CN) to the namespaces they may read and write; every RPC is checked against it (see docs/agent-security.md).")
    var authFile: String?
    @Flag(help: "Serve without TLS even when --tls-cert is given.")
    var insecure = false
    @Option(name: .customLong("tls-cert"), help: "PEM certificate for serving over TLS.")
    var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "PEM private key for --tls-cert.")
    var tlsKey: String?
    @Flag(name: .customLong("tls-client-validate"), help: "Require client certificates signed by --tls-client-ca.")
    var tlsClientValidate = false
    @Option(name: .customLong("tls-client-ca"), help: "PEM CA bundle for client certificates.")
    var tlsClientCA: String?
    @Option(name: .customLong("containerd-socket"), help: "containerd's socket. (default: /run/containerd/containerd.sock)")
    var containerdSocket: String?
    @Option(name: .customLong("containerd-ns"), help: "containerd namespace for images and leases. (default: flintlock)")
    var containerdNs: String?
    @Option(name: .customLong("containerd-snapshotter"), help: "Snapshotter for unpacking: overlayfs, native or devmapper. (default: overlayfs)")
    var containerdSnapshotter: String?
    @Option(name: .customLong("firecracker-bin"), help: "Firecracker binary (provider not available in this build).")
    var firecrackerBin: String?
    @Option(name: .customLong("cloudhypervisor-bin"), help: "Cloud Hypervisor binary (provider not available in this build).")
    var cloudhypervisorBin: String?
    @Option(name: .customLong("qemu-bin"), help: "QEMU binary. (default: qemu-system-x86_64)")
    var qemuBin: String?
    @Option(name: .customLong("qemu-accel"), help: "auto (KVM only where a probe guest runs under it), kvm or tcg. (default: auto)")
    var qemuAccel: String?
    @Option(name: .customLong("default-provider"), help: "VMM for specs that name none. (default: qemu)")
    var defaultProvider: String?
    @Option(name: .customLong("parent-iface"), help: "Host interface MACVTAP interfaces hang off (bridge mode).")
    var parentIface: String?
    @Option(name: .customLong("bridge-name"), help: "Bridge that TAP interfaces join when a spec names none.")
    var bridgeName: String?
    @Option(name: .customLong("bridge-cidr"), help: "Own --bridge-name: create it if missing with this gateway address (e.g. 10.200.0.1/24), enable IPv4 forwarding and NAT (an nftables table of the agent's own) for guest egress, and allocate guest addresses from the subnet to TAPs on it that have no static address. Started again without it, the agent removes its table and the bridge it created.")
    var bridgeCIDR: String?
    @Option(name: .customLong("bridge-nameservers"), help: "Nameservers (comma-separated) for guests with allocated addresses.")
    var bridgeNameservers: String?
    @Option(name: .customLong("insecure-registry"), help: "Registry host:port reached over plain HTTP (repeatable). Loopback registries always are.")
    var insecureRegistry: [String] = []
    @Option(name: .customLong("registry-auth-file"), help: "Docker-style config.json with registry credentials.")
    var registryAuthFile: String?
    @Option(name: .customLong("reconcile-workers"), help: "VMs reconciled concurrently. (default: 4)")
    var reconcileWorkers: String?
    @Option(name: .customLong("max-retries"), help: "Failed create attempts before a VM is FAILED. (default: 5)")
    var maxRetries: String?
    @Option(name: .customLong("max-restarts"), help: "VMM crashes or guest panics before a VM is FAILED. (default: 5)")
    var maxRestarts: String?
    @Option(name: .customLong("shutdown-timeout"), help: "Grace for guest power-off, then for SIGTERM, before SIGKILL. (default: 10s)")
    var shutdownTimeout: String?
    @Option(name: .customLong("metrics-endpoint"), help: "host:port serving Prometheus /metrics, /healthz and /readyz (plain HTTP; off by default).")
    var metricsEndpoint: String?
    @Option(name: .customLong("vcpu-overcommit"), help: "vCPUs handed out per host CPU; creates beyond it fail with RESOURCE_EXHAUSTED. (default: 4)")
    var vcpuOvercommit: String?
    @Option(name: .customLong("memory-reserve-mb"), help: "Host memory (MiB) never given to microVMs; memory is not overcommitted. (default: 512)")
    var memoryReserveMB: String?
    @Option(name: .customLong("vmm-overhead-mb"), help: "Memory (MiB) counted per VMM on top of its guest's. (default: 64)")
    var vmmOverheadMB: String?
    @Option(name: .customLong("debug-endpoint"), help: "Accepted for Flintlock compatibility; not served by this build.")
    var debugEndpoint: String?
    @Flag(name: .customLong("enable-http"), help: "Flintlock's HTTP gateway: not supported by this build (refused).")
    var enableHTTP = false
    @Option(name: .customLong("http-endpoint"), help: "Accepted for Flintlock compatibility; not served by this build.")
    var httpEndpoint: String?
    @Flag(help: "Log at debug level.")
    var debug = false

    func run() async throws {
        // At most two malloc arenas: the agent's threads are mostly idle watchers, and an arena
        // per thread would grow the resident set with every VM.
        // (glibc's mallopt is not in the Swift Glibc module; M_ARENA_MAX is -8.)
        if let sym = dlsym(nil, "mallopt") {
            let mallopt = unsafeBitCast(sym, to: (@convention(c) (Int32, Int32) -> Int32).self)
            _ = mallopt(-8, 2)
        }
        if enableHTTP {
            throw ValidationError("--enable-http: Flintlock's HTTP gateway is not supported by this build; use the gRPC API")
        }
        var flags: [String: String] = [:]
        let given: [(String, String?)] = [
            ("grpc-endpoint", grpcEndpoint), ("grpc-socket", grpcSocket), ("state-dir", stateDir), ("resync-period", resyncPeriod),
            ("basic-auth-token", basicAuthToken), ("auth-file", authFile), ("tls-cert", tlsCert), ("tls-key", tlsKey), ("tls-client-ca", tlsClientCA),
            ("containerd-socket", containerdSocket), ("containerd-ns", containerdNs), ("containerd-snapshotter", containerdSnapshotter),
            ("firecracker-bin", firecrackerBin), ("cloudhypervisor-bin", cloudhypervisorBin), ("qemu-bin", qemuBin),
            ("qemu-accel", qemuAccel), ("default-provider", defaultProvider), ("parent-iface", parentIface), ("bridge-name", bridgeName),
            ("bridge-cidr", bridgeCIDR), ("bridge-nameservers", bridgeNameservers),
            ("registry-auth-file", registryAuthFile), ("reconcile-workers", reconcileWorkers), ("max-retries", maxRetries),
            ("max-restarts", maxRestarts), ("shutdown-timeout", shutdownTimeout),
            ("metrics-endpoint", metricsEndpoint), ("vcpu-overcommit", vcpuOvercommit), ("memory-reserve-mb", memoryReserveMB), ("vmm-overhead-mb", vmmOverheadMB),
            ("insecure", insecure ? "true" : nil), ("tls-client-validate", tlsClientValidate ? "true" : nil), ("debug", debug ? "true" : nil),
            ("insecure-registry", insecureRegistry.isEmpty ? nil : insecureRegistry.joined(separator: ",")),
        ]
        for (k, v) in given { if let v { flags[k] = v } }

        let env = ProcessInfo.processInfo.environment
        var text: String?
        let path = config ?? env["FLINTLOCKD_CONFIG"] ?? "/etc/opt/flintlockd/config.yaml"
        if FileManager.default.fileExists(atPath: path) {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } else if config != nil {
            throw ValidationError("--config: \(path) does not exist")
        }
        let conf: AgentConfiguration
        do { conf = try AgentConfiguration.resolve(configFileText: text, environment: env, flags: flags) } catch {
            throw ValidationError("\(error)")
        }
        let level: Logger.Level = conf.debug ? .debug : .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "flintlockd")
        var metricsText: (@Sendable () -> [UInt8])?
        if conf.metricsEndpoint != nil {
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            metricsText = { registry.emitToBuffer() }
        }
        let agent = try await HostAgent.make(configuration: conf, logger: logger, metricsText: metricsText)
        let group = ServiceGroup(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

