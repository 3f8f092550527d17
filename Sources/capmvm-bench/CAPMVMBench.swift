#if canImport(Glibc)
import Glibc
#endif
import AgentClient
import ArgumentParser
import CAPMVMAPI
import Foundation
import HostSystem
import KubernetesClient
import KubernetesTestServer
import Logging
import Placement

/// capmvm-bench: the Cluster API provider against real agents, with the in-process test API server
/// standing in for Kubernetes (none runs on these machines).
@main
struct CAPMVMBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capmvm-bench",
        abstract: "Benchmark capmvm: MicrovmMachine created → agent CreateMicroVM (p50/p99), placing 50 machines over 3 hosts, controller RSS.",
        discussion: "Needs root, a containerd and a registry with lm-test/kernel and lm-test/root (scripts/bench-capmvm.sh prepares them and runs this).")

    @Option(help: "containerd socket.") var containerdSocket = "/tmp/lm-test-env/containerd/containerd.sock"
    @Option(help: "Registry holding lm-test/kernel and lm-test/root.") var registry = "127.0.0.1:5111"
    @Option(help: "Bridge for the VMs' TAPs (created if missing).") var bridge = "lmbench0"
    @Option(help: "Host agents (flintlockd processes).") var hosts = 3
    @Option(help: "Machines created through capmvm (real microVMs).") var machines = 20
    @Option(help: "Machines placed by the scheduler for the placement figure.") var placements = 50

    func run() async throws {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        if !HostFiles.exists("/sys/class/net/\(bridge)") {
            try await HostProcess.run(["ip", "link", "add", bridge, "type", "bridge"])
            try await HostProcess.run(["ip", "link", "set", bridge, "up"])
        }
        // Placement alone: 50 machines (1 control plane) over 3 hosts, each placed after the previous.
        var candidates = (0..<3).map { HostCandidate(name: "h\($0)", endpoint: "h\($0):9090", failureDomain: "rack-\($0)", capacity: Resources(vcpu: 64, memoryMB: 262_144, microVMs: 1000)) }
        var placed: [PlacedMachine] = []
        let placeStart = ContinuousClock.now
        for i in 0..<placements {
            guard case .host(let h) = Scheduler.place(PlacementRequest(machineName: "m\(i)", isControlPlane: i == 0, vcpu: 1, memoryMB: 1024, placed: placed), on: candidates) else { break }
            placed.append(PlacedMachine(host: h.name, isControlPlane: i == 0))
            let k = candidates.firstIndex { $0.name == h.name }!
            candidates[k].allocated.vcpu += 1
            candidates[k].allocated.memoryMB += 1024
            candidates[k].allocated.microVMs += 1
        }
        let placeTime = ContinuousClock.now - placeStart
        let spread = Dictionary(grouping: placed, by: \.host).mapValues(\.count).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")

        let server = try await TestAPIServer.start()
        let work = "/tmp/lm-capmvm-bench-\(getpid())"
        try HostFiles.createDirectory(work)
        var pids: [pid_t] = []
        var agentAddresses: [String] = []
        func spawn(_ argv: [String], log: String) throws -> pid_t {
            let fd = open("\(work)/\(log)", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            defer { close(fd) }
            return try HostProcess.spawn(argv, stdout: fd, stderr: fd)
        }
        let kube = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "bench"))
        var clients: [AgentClient] = []
        do {
            for i in 0..<hosts {
                let port = 19_600 + i
                pids.append(try spawn(["\(bin)/flintlockd", "run", "--state-dir", "\(work)/agent\(i)", "--grpc-endpoint", "127.0.0.1:\(port)",
                                       "--containerd-socket", containerdSocket, "--containerd-ns", "lmbench", "--bridge-name", bridge,
                                       "--shutdown-timeout", "1s", "--reconcile-workers", "8"], log: "agent\(i).log"))
                agentAddresses.append("127.0.0.1:\(port)")
            }
            clients = try agentAddresses.map { try AgentClient(address: $0) }
            for c in clients { for _ in 0..<100 { if (try? await c.list()) != nil { break }; try await Task.sleep(for: .milliseconds(100)) } }
            try Data("""
                apiVersion: v1
                kind: Config
                current-context: bench
                clusters: [{name: bench, cluster: {server: "\(server.server)"}}]
                users: [{name: bench, user: {}}]
                contexts: [{name: bench, context: {cluster: bench, user: bench}}]
                """.utf8).write(to: URL(fileURLWithPath: "\(work)/kubeconfig"))
            let capmvm = try spawn(["\(bin)/capmvm", "--kubeconfig", "\(work)/kubeconfig", "--namespace", "bench", "--health-addr", "127.0.0.1:19690",
                                    "--metrics-bind-addr", "", "--host-probe-interval", "2"], log: "capmvm.log")
            pids.append(capmvm)
            let ns = "bench"
            for (i, a) in agentAddresses.enumerated() {
                _ = try await kube.create(MicrovmHost(metadata: ObjectMeta(name: "h\(i)", namespace: ns, labels: ["pool": "bench"]), spec: .init(endpoint: a, failureDomain: "rack-\(i)")))
            }
            _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "bench", namespace: ns), spec: .init(
                controlPlaneEndpoint: APIEndpoint(host: "127.0.0.1", port: 1), placement: .init(dynamicPool: .init(hostSelector: ["pool": "bench"])))))
            _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "bench", namespace: ns)))
            _ = try await kube.mergePatch(Cluster.self, name: "bench", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"bench"}}}"#.utf8))
            _ = try await kube.mergePatch(Cluster.self, name: "bench", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
            // Wait until the hosts' capacity is known.
            for _ in 0..<100 {
                if try await kube.list(MicrovmHost.self, namespace: ns).items.allSatisfy({ $0.status?.reachable == true }) { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            let idleRSS = HostProcess.residentBytes(of: capmvm) ?? 0

            // Machines one after another: from the MicrovmMachine's creation to the agent's record of the VM.
            var latencies: [Double] = []
            for i in 0..<machines {
                let name = "m\(i)"
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "\(name)-bootstrap", namespace: ns), data: ["value": Data("#cloud-config\n".utf8)]))
                let machine = try await kube.create(Machine(metadata: ObjectMeta(name: name, namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "bench"]),
                                                            spec: .init(clusterName: "bench", bootstrap: .init(dataSecretName: "\(name)-bootstrap"), infrastructureRef: .microvmMachine(name))))
                let spec = MicrovmMachine.Spec(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: "\(registry)/lm-test/root:latest"),
                                               kernel: .init(image: "\(registry)/lm-test/kernel:latest", filename: "boot/vmlinuz"),
                                               initrd: .init(image: "\(registry)/lm-test/kernel:latest", filename: "boot/initrd"), networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])
                let created = Date()
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: name, namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "bench"], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: name, uid: machine.metadata.uid ?? "")]), spec: spec))
                var found: Date?
                for _ in 0..<600 where found == nil {
                    for c in clients {
                        if let vm = try await c.list(namespace: ns, name: name).first { found = vm.spec.createdAt.date }
                    }
                    if found == nil { try await Task.sleep(for: .milliseconds(5)) }
                }
                guard let found else { throw ValidationError("machine \(name) got no microVM within 3 s; see \(work)/capmvm.log") }
                latencies.append(found.timeIntervalSince(created) * 1000)
                if ProcessInfo.processInfo.environment["LM_BENCH_VERBOSE"] != nil { print(String(format: "%@: %.0f ms", name, latencies.last!)) }
            }
            // All of them ready.
            for _ in 0..<600 {
                if try await kube.list(MicrovmMachine.self, namespace: ns).items.allSatisfy({ $0.status?.ready == true }) { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            let busyRSS = HostProcess.residentBytes(of: capmvm) ?? 0
            var perHost: [String] = []
            for (i, c) in clients.enumerated() { perHost.append("h\(i)=\(try await c.list(namespace: ns).count)") }
            latencies.sort()
            func pct(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int((p * Double(latencies.count)).rounded(.up)) - 1)] }
            print(String(format: "MicrovmMachine created -> CreateMicroVM recorded: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d machines, %d hosts)",
                         pct(0.5), pct(0.99), latencies.last ?? 0, latencies.count, hosts))
            print("microVMs per host: \(perHost.joined(separator: " "))")
            print(String(format: "scheduler: placing %d machines over 3 hosts took %.2f ms (%@)", placed.count,
                         Double(placeTime.components.attoseconds) / 1e15 + Double(placeTime.components.seconds) * 1000, spread))
            print(String(format: "capmvm RSS: %.1f MiB idle (3 hosts listed), %.1f MiB with %d machines", Double(idleRSS) / 1_048_576, Double(busyRSS) / 1_048_576, machines))
            // Delete everything through capmvm.
            for i in 0..<machines { try await kube.delete(MicrovmMachine.self, name: "m\(i)", namespace: ns) }
            for _ in 0..<600 {
                if try await kube.list(MicrovmMachine.self, namespace: ns).items.isEmpty { break }
                try await Task.sleep(for: .milliseconds(200))
            }
        } catch {
            FileHandle.standardError.write(Data("capmvm-bench: \(error)\n".utf8))
        }
        for c in clients { c.close() }
        for p in pids.reversed() { kill(p, SIGTERM); _ = HostProcess.waitFor(p) }
        for i in 0..<hosts { for p in processesMatching("\(work)/agent\(i)/") { kill(p, SIGKILL) } }
        try? await kube.shutdown()
        try? await server.stop()
        try? HostFiles.remove(work)
    }

    func processesMatching(_ needle: String) -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { e in
            guard let p = Int32(e), let cmd = HostProcess.commandLine(of: p), cmd.contains(where: { $0.contains(needle) }) else { return nil }
            return p
        }
    }
}
