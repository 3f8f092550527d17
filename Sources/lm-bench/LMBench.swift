#if canImport(Glibc)
import Glibc
#endif
import AgentClient
import ArgumentParser
import FlintlockAPI
import Foundation
import HostSystem

/// lm-bench: measures the host agent with real VMs and prints figures.
@main
struct LMBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lm-bench",
        abstract: "Benchmark flintlockd: create latency, boot times vs. QEMU by hand, memory, parallel creates.",
        discussion: """
            Needs root, a containerd and a registry holding the fixture images (scripts/bench.sh
            prepares them and runs this). Starts its own flintlockd with a fresh state directory.
            Images are pulled once before measuring (the figures are for cached images).
            """)

    @Option(help: "containerd socket.") var containerdSocket = "/tmp/lm-test-env/containerd/containerd.sock"
    @Option(help: "Registry holding lm-test/kernel and lm-test/root.") var registry = "127.0.0.1:5111"
    @Option(help: "Bridge for the VMs' TAPs (created if missing).") var bridge = "lmbench0"
    @Option(help: "flintlockd binary. (default: next to lm-bench)") var flintlockd: String?
    @Option(help: "Sequential create rounds for latencies.") var rounds = 10
    @Option(help: "VMs created at once for the parallel figure.") var parallel = 10
    @Option(help: "Memory per VM in MiB.") var memory = 128
    @Option(help: "Console marker that means the guest reached userspace.") var marker = "LIQUIDMETAL-GUEST-READY"

    func run() async throws {
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        let agentBin = flintlockd ?? "\(binDir)/flintlockd"
        if !HostFiles.exists("/sys/class/net/\(bridge)") {
            try await HostProcess.run(["ip", "link", "add", bridge, "type", "bridge"])
            try await HostProcess.run(["ip", "link", "set", bridge, "up"])
        }
        let state = "/tmp/lm-bench-\(getpid())"
        try HostFiles.createDirectory(state)
        let port = 19_000 + Int(getpid() % 1000)
        let logFD = open("\(state).log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let pid = try HostProcess.spawn([agentBin, "run", "--state-dir", state, "--grpc-endpoint", "127.0.0.1:\(port)",
                                         "--containerd-socket", containerdSocket, "--containerd-ns", "lmbench",
                                         "--bridge-name", bridge, "--shutdown-timeout", "1s", "--reconcile-workers", "\(parallel)"],
                                        stdout: logFD, stderr: logFD)
        close(logFD)
        let client = try AgentClient(address: "127.0.0.1:\(port)")
        defer {
            client.close()
            kill(pid, SIGTERM)
            _ = HostProcess.waitFor(pid)
            try? HostFiles.remove(state)
        }
        for _ in 0..<100 { if (try? await client.list()) != nil { break }; try await Task.sleep(for: .milliseconds(100)) }
        try await Task.sleep(for: .seconds(2))
        let idleRSS = HostProcess.residentBytes(of: pid) ?? 0
        let idleAnon = HostProcess.statusBytes(of: pid, field: "RssAnon") ?? 0

        do {
            try await measure(client: client, agentPID: pid, idleRSS: idleRSS, idleAnon: idleAnon, state: state)
        } catch {
            // Leave no VMs behind: the agent removes their QEMU, TAPs and leases.
            for vm in (try? await client.list(namespace: "bench")) ?? [] { try? await client.delete(uid: vm.spec.uid) }
            for _ in 0..<100 where !((try? await client.list(namespace: "bench"))?.isEmpty ?? true) { try? await Task.sleep(for: .milliseconds(100)) }
            _ = try? await HostProcess.run(["ip", "link", "del", byHandTap])
            throw error
        }
    }

    func measure(client: AgentClient, agentPID pid: pid_t, idleRSS: Int, idleAnon: Int, state: String) async throws {
        func spec(_ name: String) -> Flintlock_Types_MicroVMSpec {
            .with {
                $0.id = name
                $0.namespace = "bench"
                $0.vcpu = 1
                $0.memoryInMb = Int32(memory)
                $0.kernel = .with { $0.image = "\(registry)/lm-test/kernel:latest"; $0.filename = "boot/vmlinuz" }
                $0.initrd = .with { $0.image = "\(registry)/lm-test/kernel:latest"; $0.filename = "boot/initrd" }
                $0.rootVolume = .with { $0.id = "root"; $0.source.containerSource = "\(registry)/lm-test/root:latest" }
                $0.interfaces = [.with { $0.deviceID = "eth0"; $0.type = .tap }]
            }
        }
        func consolePath(_ vm: Flintlock_Types_MicroVM) -> String {
            "\(state)/vm/\(vm.spec.namespace)/\(vm.spec.id)/\(vm.spec.uid)/console.log"
        }
        func deleteAll() async throws {
            for vm in try await client.list(namespace: "bench") { try await client.delete(uid: vm.spec.uid) }
            while try await !client.list(namespace: "bench").isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }

        // Warm-up: pull and cache the images.
        print("warming up (pulling images once)...")
        let warm = try await client.create(spec("warmup"))
        _ = try await client.wait(uid: warm.spec.uid, timeout: .seconds(180)) { $0.status.state == .created }
        _ = try await waitForMarker(consolePath(warm), timeout: .seconds(120))
        let warmArgv = HostProcess.commandLine(of: pid_t(try await client.get(uid: warm.spec.uid).status.vmmPid)) ?? []
        let handArgs = try await byHandArguments(warmArgv, directory: "\(state)/by-hand")
        let accel = try await client.get(uid: warm.spec.uid).status.accelerator
        try await deleteAll()

        // Sequential rounds: RPC latency, create → QEMU exec, create → guest marker.
        var rpc: [Double] = [], toExec: [Double] = [], toMarker: [Double] = []
        for i in 0..<rounds {
            let t0 = Date()
            let vm = try await client.create(spec("seq-\(i)"))
            rpc.append(Date().timeIntervalSince(t0) * 1000)
            let markerAt = try await waitForMarker(consolePath(vm), timeout: .seconds(120))
            toMarker.append(markerAt.timeIntervalSince(t0) * 1000)
            let got = try await client.get(uid: vm.spec.uid)
            toExec.append((got.status.vmmStartedAt.date.timeIntervalSince(got.spec.createdAt.date)) * 1000)
            try await deleteAll()
        }

        // The same QEMU command line launched by hand (own console file, overlay and sockets).
        var byHand: [Double] = []
        for _ in 0..<rounds { byHand.append(try await launchByHand(handArgs, directory: "\(state)/by-hand") * 1000) }

        // Parallel creates, then RSS with that many VMs.
        let tp = Date()
        let vms = try await withThrowingTaskGroup(of: Flintlock_Types_MicroVM.self) { group in
            for i in 0..<parallel { group.addTask { try await client.create(spec("par-\(i)")) } }
            var out: [Flintlock_Types_MicroVM] = []
            for try await v in group { out.append(v) }
            return out
        }
        for vm in vms { _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(300), interval: .milliseconds(50)) { $0.status.state == .created } }
        let allCreated = Date().timeIntervalSince(tp)
        var lastMarker = Date.distantPast
        for vm in vms { lastMarker = max(lastMarker, try await waitForMarker(consolePath(vm), timeout: .seconds(300))) }
        let allMarkers = lastMarker.timeIntervalSince(tp)
        try await Task.sleep(for: .seconds(1))
        let busyRSS = HostProcess.residentBytes(of: pid) ?? 0
        let busyAnon = HostProcess.statusBytes(of: pid, field: "RssAnon") ?? 0
        try await deleteAll()
        _ = try? await HostProcess.run(["ip", "link", "del", byHandTap])

        func pct(_ xs: [Double], _ p: Double) -> Double {
            let s = xs.sorted()
            return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
        }
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        let agentMedian = pct(toMarker, 0.5), handMedian = pct(byHand, 0.5)
        print("""

            lm-bench (\(rounds) sequential rounds, \(parallel) parallel VMs, \(memory) MiB each, accel \(accel))
            CreateMicroVM RPC latency        p50 \(f(pct(rpc, 0.5))) ms   p99 \(f(pct(rpc, 0.99))) ms   (target p99 <= 20 ms)
            create -> QEMU exec              p50 \(f(pct(toExec, 0.5))) ms   max \(f(toExec.max() ?? 0)) ms
            create -> guest marker           p50 \(f(agentMedian)) ms   max \(f(toMarker.max() ?? 0)) ms
            same QEMU by hand -> marker      p50 \(f(handMedian)) ms   max \(f(byHand.max() ?? 0)) ms
            ratio agent / by hand (p50)      \(String(format: "%.3f", agentMedian / handMedian))   (target <= 1.10)
            agent RSS idle                   \(f(Double(idleRSS) / 1_048_576)) MiB   (anonymous \(f(Double(idleAnon) / 1_048_576)) MiB, the rest clean file-backed code)
            agent RSS with \(parallel) VMs             \(f(Double(busyRSS) / 1_048_576)) MiB   (anonymous \(f(Double(busyAnon) / 1_048_576)) MiB; target <= 40 MiB)
            \(parallel) creates at once -> all CREATED  \(f(allCreated * 1000)) ms
            \(parallel) creates at once -> all at marker \(f(allMarkers * 1000)) ms
            """)
    }

    /// When the marker first appears in the console file (polled every 5 ms).
    func waitForMarker(_ path: String, timeout: Duration) async throws -> Date {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let d = FileManager.default.contents(atPath: path), d.range(of: Data(marker.utf8)) != nil { return Date() }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw ValidationError("marker \(marker) did not appear in \(path)")
    }

    var byHandTap: String { "lmbenchhand0" }

    /// The agent's QEMU command line with private files: its own console file, disk overlay (over
    /// the same cached base image) and TAP on the same bridge; no QMP sockets or pid file.
    func byHandArguments(_ argv: [String], directory dir: String) async throws -> [String] {
        guard !argv.isEmpty else { throw ValidationError("no QEMU command line captured") }
        try HostFiles.createDirectory(dir)
        var args: [String] = []
        var i = 0
        while i < argv.count {
            let a = argv[i]
            if a == "-qmp" || a == "-pidfile", i + 1 < argv.count { i += 2; continue }
            if a == "-netdev", i + 1 < argv.count, let r = argv[i + 1].range(of: "ifname=") {
                // Same NIC, on a TAP of its own on the same bridge.
                let tap = String(argv[i + 1][r.upperBound...].prefix { $0 != "," })
                args += [a, argv[i + 1].replacingOccurrences(of: "ifname=\(tap)", with: "ifname=\(byHandTap)")]
                i += 2; continue
            }
            if a == "-chardev", i + 1 < argv.count {
                args += [a, "file,id=console,path=\(dir)/console.log"]; i += 2; continue
            }
            if a == "-drive", i + 1 < argv.count, let r = argv[i + 1].range(of: "file=") {
                let path = String(argv[i + 1][r.upperBound...].prefix { $0 != "," })
                if path.hasSuffix(".qcow2") {
                    let info = try await HostProcess.run(["qemu-img", "info", "-U", "--output=json", path])
                    guard let base = (try JSONSerialization.jsonObject(with: Data(info.utf8)) as? [String: Any])?["backing-filename"] as? String else {
                        throw ValidationError("cannot read the backing file of \(path)")
                    }
                    let overlay = "\(dir)/\((path as NSString).lastPathComponent)"
                    args += [a, argv[i + 1].replacingOccurrences(of: path, with: overlay) + ",x-lm-base=\(base)"]
                    i += 2; continue
                }
            }
            args.append(a)
            i += 1
        }
        return args
    }

    /// Launches the prepared command line (fresh console and overlay each time); seconds to the marker.
    func launchByHand(_ prepared: [String], directory dir: String) async throws -> Double {
        try? HostFiles.remove("\(dir)/console.log")
        var args: [String] = []
        for a in prepared {
            if let r = a.range(of: ",x-lm-base=") {
                let base = String(a[r.upperBound...])
                let drive = String(a[..<r.lowerBound])
                let overlay = String(drive[drive.range(of: "file=")!.upperBound...].prefix { $0 != "," })
                try? HostFiles.remove(overlay)
                try await HostProcess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay])
                args.append(drive)
            } else {
                args.append(a)
            }
        }
        if !HostFiles.exists("/sys/class/net/\(byHandTap)") {
            try await HostProcess.run(["ip", "-batch", "-"], input: "tuntap add dev \(byHandTap) mode tap\nlink set dev \(byHandTap) master \(bridge)\nlink set dev \(byHandTap) up\n")
        }
        let t0 = Date()
        let pid = try HostProcess.spawn(args)
        defer { kill(pid, SIGKILL); _ = HostProcess.waitFor(pid) }
        let at = try await waitForMarker("\(dir)/console.log", timeout: .seconds(120))
        return at.timeIntervalSince(t0)
    }
}
