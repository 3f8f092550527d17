import ArgumentParser
import CAPMVMAPI
import CAPMVMController
import Foundation
import KubernetesClient
import Logging
import Metrics
import HTTPEndpoints
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
            Ready means able to work: with --leader-elect, that the API server answered the lease election
            within the lease duration (a standby replica is ready, so rolling updates complete); without it,
            that every watched kind has been listed.

            Serves Cluster API's v1beta2 contract (Cluster API 1.11 and later) when the management cluster's
            cluster.x-k8s.io group serves v1beta2, else the v1beta1 contract CAPMVM implements (--contract
            overrides the choice).
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
    @Option(name: .customLong("leader-elect-lease-duration"), help: "Seconds a standby waits before taking over a lease that is not renewed.") var leaseDuration = 15
    @Option(name: .customLong("leader-elect-renew-deadline"), help: "Seconds the leader keeps trying to renew before it gives up leading (and exits).") var renewDeadline = 10
    @Option(name: .customLong("leader-elect-retry-period"), help: "Seconds between lease attempts.") var retryPeriod = 2
    @Option(help: "Cluster API contract to serve: v1beta1 or v1beta2. (default: the management cluster's)") var contract: String?
    @Flag(help: "Log at debug level.") var debug = false

    func validate() throws {
        guard retryPeriod > 0, renewDeadline > retryPeriod, leaseDuration > renewDeadline else {
            throw ValidationError("leader election wants 0 < --leader-elect-retry-period < --leader-elect-renew-deadline < --leader-elect-lease-duration")
        }
        if let contract, ClusterAPIContract(rawValue: contract) == nil { throw ValidationError("--contract is v1beta1 or v1beta2, not \(contract)") }
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
        settings.contract = contract.flatMap(ClusterAPIContract.init(rawValue:))
        let manager = ControllerManager(kube: kube, agents: agents, settings: settings, logger: logger)
        let identity = "\(ProcessInfo.processInfo.hostName)_\(UUID().uuidString.prefix(8))"
        var elector = LeaderElector(client: kube, namespace: leaderElectionNamespace, name: "capmvm-leader-election", identity: identity, logger: logger)
        elector.leaseDuration = .seconds(leaseDuration)
        elector.renewDeadline = .seconds(renewDeadline)
        elector.retryPeriod = .seconds(retryPeriod)
        let election = elector.status
        let leaderElect = self.leaderElect
        let leaseWindow = Duration.seconds(leaseDuration)

        let health = try await HTTPEndpoints.start(address: healthAddr) { path in
            switch path {
            case "/healthz": return (200, "text/plain", Array("ok\n".utf8))
            case "/readyz":
                if leaderElect {
                    return election.answered(within: leaseWindow) ? (200, "text/plain", Array("ok\n".utf8)) : (503, "text/plain", Array("no answer from the API server to the lease election\n".utf8))
                }
                return manager.isSynced ? (200, "text/plain", Array("ok\n".utf8)) : (503, "text/plain", Array("caches not synced\n".utf8))
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
