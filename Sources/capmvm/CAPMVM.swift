import ArgumentParser
import CAPMVMController
import Foundation
import KubernetesClient
import Logging
import Metrics
import Prometheus

@main
struct CAPMVM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capmvm",
        abstract: "Liquid Metal's Cluster API infrastructure provider: Kubernetes cluster nodes as microVMs on flintlockd hosts.",
        discussion: """
            Reconciles MicrovmCluster and MicrovmMachine objects (group infrastructure.cluster.x-k8s.io, v1alpha1),
            creating microVMs on the hosts of a cluster's placement through their flintlockd agents.

            Connects to the API server with --kubeconfig (or $KUBECONFIG, ~/.kube/config), else in-cluster.
            Serves /healthz and /readyz on --health-addr and Prometheus metrics on --metrics-bind-addr at /metrics.
            """)

    @Option(help: "kubeconfig file. (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster service account)") var kubeconfig: String?
    @Option(help: "kubeconfig context. (default: its current-context)") var context: String?
    @Flag(name: .customLong("leader-elect"), help: "Run only while holding the leader lease, so that several replicas can run.") var leaderElect = false
    @Option(name: .customLong("leader-election-namespace"), help: "Namespace of the leader lease.") var leaderElectionNamespace = "capmvm-system"
    @Option(help: "Only reconcile objects in this namespace. (default: all)") var namespace: String?
    @Option(name: .customLong("watch-filter"), help: "Only reconcile objects labelled cluster.x-k8s.io/watch-filter=VALUE.") var watchFilter: String?
    @Option(name: .customLong("sync-period"), help: "Reconcile every object at least this often, in seconds.") var syncPeriod = 600
    @Option(name: .customLong("health-addr"), help: "Address of /healthz and /readyz.") var healthAddr = ":9440"
    @Option(name: .customLong("metrics-bind-addr"), help: "Address of /metrics (Prometheus); empty disables it.") var metricsBindAddr = ":8080"
    @Option(name: .customLong("microvm-concurrency"), help: "MicrovmMachines reconciled at the same time.") var microvmConcurrency = 10
    @Option(name: .customLong("microvm-cluster-concurrency"), help: "MicrovmClusters reconciled at the same time.") var microvmClusterConcurrency = 10
    @Option(name: .customLong("host-probe-interval"), help: "Seconds between capacity and health probes of each MicrovmHost's agent.") var hostProbeInterval = 30
    @Flag(help: "Log at debug level.") var debug = false

    func validate() throws {
        guard syncPeriod > 0, hostProbeInterval > 0 else { throw ValidationError("--sync-period and --host-probe-interval must be positive") }
        guard (1...1000).contains(microvmConcurrency), (1...1000).contains(microvmClusterConcurrency) else {
            throw ValidationError("--microvm-concurrency and --microvm-cluster-concurrency must be 1-1000")
        }
    }

    func run() async throws {
        let level: Logger.Level = debug ? .debug : .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "capmvm")

        let connection: KubernetesConnection
        do {
            var env = ProcessInfo.processInfo.environment
            if let kubeconfig { env["KUBECONFIG"] = kubeconfig }
            let explicit = kubeconfig != nil || env["KUBECONFIG"] != nil || FileManager.default.fileExists(atPath: "\(env["HOME"] ?? "")/.kube/config")
            connection = explicit ? try KubeConfig.load(context: context, environment: env) : try KubeConfig.inCluster()
        } catch let e as KubeConfigError {
            throw ValidationError(e.description)
        }
        let kube = try KubernetesClient(connection: connection, logger: logger)
        let agents = AgentConnections()
        var settings = ControllerSettings()
        settings.namespace = namespace
        settings.watchFilter = watchFilter.flatMap { $0.isEmpty ? nil : $0 }  // an empty filter (a template default) means none
        settings.syncPeriod = .seconds(syncPeriod)
        settings.machineConcurrency = microvmConcurrency
        settings.clusterConcurrency = microvmClusterConcurrency
        settings.hostProbeInterval = .seconds(hostProbeInterval)
        let manager = ControllerManager(kube: kube, agents: agents, settings: settings, logger: logger)

        let health = try await HTTPEndpoints.start(address: healthAddr) { path in
            switch path {
            case "/healthz": return (200, "text/plain", Array("ok\n".utf8))
            case "/readyz": return manager.isSynced ? (200, "text/plain", Array("ok\n".utf8)) : (503, "text/plain", Array("caches not synced\n".utf8))
            default: return (404, "text/plain", Array("not found\n".utf8))
            }
        }
        let metrics = metricsBindAddr.isEmpty ? nil : try await HTTPEndpoints.start(address: metricsBindAddr) { path in
            path == "/metrics" ? (200, "text/plain; version=0.0.4", registry.emitToBuffer()) : (404, "text/plain", Array("not found\n".utf8))
        }
        logger.info("capmvm starting", metadata: [
            "server": "\(connection.server)", "namespace": "\(namespace ?? "all")", "leader-elect": "\(leaderElect)",
            "health-port": "\(health.port)", "metrics-port": "\(metrics?.port ?? 0)",
        ])

        let work = Task {
            if leaderElect {
                let identity = "\(ProcessInfo.processInfo.hostName)_\(UUID().uuidString.prefix(8))"
                let elector = LeaderElector(client: kube, namespace: leaderElectionNamespace, name: "capmvm-leader-election", identity: identity, logger: logger)
                try await elector.whileLeading { await manager.run() }
            } else {
                await manager.run()
            }
        }
        // SIGTERM/SIGINT: stop reconciling (and release the lease), then exit.
        let signals = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig)
            s.setEventHandler { work.cancel() }
            s.resume()
            return s
        }
        defer { signals.forEach { $0.cancel() } }
        let outcome = await work.result
        try? await health.stop()
        try? await metrics?.stop()
        agents.closeAll()
        try? await kube.shutdown()
        if case .failure(let e) = outcome, !(e is CancellationError) {
            logger.error("capmvm stopped: \(e)")
            throw ExitCode(1)
        }
        logger.info("capmvm stopped")
    }
}
