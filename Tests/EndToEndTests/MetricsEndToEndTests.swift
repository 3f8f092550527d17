import AgentClient
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GRPCCore
import HostSystem
import Testing
import TestSupport

/// flintlockd's /metrics, /healthz and /readyz on --metrics-endpoint, scraped as Prometheus would.
@Suite("Agent metrics end to end", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct MetricsEndToEndTests {
    /// GET over a plain TCP connection to 127.0.0.1 (HTTP/1.1, the server closes after answering).
    func get(_ path: String, port: Int) throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironmentError("socket: \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else { throw TestEnvironmentError("connect to port \(port): \(errno)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            data += buf[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n"), let status = Int(text.split(separator: " ").dropFirst().first ?? "") else {
            throw TestEnvironmentError("not an HTTP response: \(text.prefix(200))")
        }
        return (status, String(text[split.upperBound...]))
    }

    /// The value of the sample whose name and labels start with `prefix`, summed over matches.
    func sample(_ text: String, _ prefix: String) -> Double? {
        let values = text.split(separator: "\n").filter { $0.hasPrefix(prefix) }.compactMap { Double($0.split(separator: " ").last ?? "") }
        return values.isEmpty ? nil : values.reduce(0, +)
    }

    @Test("VMs by state, plan steps, create → running, image pulls and bytes, RPCs by method and code; health and readiness")
    func scrape() async throws {
        let env = try await TestEnvironment.shared()
        let port = try AgentProcess.freePort()
        try await withAgent(env, ["--metrics-endpoint", "127.0.0.1:\(port)"]) { agent in
            #expect(try get("/healthz", port: port) == (200, "ok\n"))
            #expect(try get("/readyz", port: port) == (200, "ok\n"))
            #expect(try get("/nope", port: port).status == 404)
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(fixtureSpec(env, name: "metrics-a"))
            let bad = await rpcCode { _ = try await client.create({ var s = fixtureSpec(env, name: "metrics-bad"); s.id = "../escape"; return s }()) }
            #expect(bad == .invalidArgument)
            _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(120)) { $0.status.state == .created }

            let started = ContinuousClock.now
            let (status, text) = try get("/metrics", port: port)
            let scrapeTime = ContinuousClock.now - started
            print("metrics scrape: \(text.utf8.count) bytes in \(scrapeTime)")
            #expect(status == 200)
            #expect(sample(text, #"flintlockd_microvms{state="CREATED",provider="qemu"}"#) == 1, "\(text)")
            #expect(sample(text, #"flintlockd_microvms{state="FAILED",provider="qemu"}"#) == 0)
            #expect(sample(text, #"flintlockd_grpc_requests_total{method="microvm.services.api.v1alpha1.MicroVM/CreateMicroVM",code="OK"}"#) == 1, "\(text)")
            #expect(sample(text, #"flintlockd_grpc_requests_total{method="microvm.services.api.v1alpha1.MicroVM/CreateMicroVM",code="INVALID_ARGUMENT"}"#) == 1)
            #expect((sample(text, #"flintlockd_plan_step_duration_seconds_count{plan="create",step="start-vmm"}"#) ?? 0) >= 1, "\(text)")
            #expect(sample(text, "flintlockd_create_to_running_seconds_count") == 1)
            #expect((sample(text, #"flintlockd_reconcile_duration_seconds_count{plan="create",result="ok"}"#) ?? 0) >= 1)
            #expect((sample(text, "flintlockd_image_pulls_total") ?? 0) >= 1)

            // A VMM killed from outside is counted as an exit by signal.
            let pid = try await client.get(uid: vm.spec.uid).status.vmmPid
            #expect(pid > 0)
            kill(pid_t(pid), SIGKILL)
            var exits: Double = 0
            for _ in 0..<60 where exits < 1 {
                try await Task.sleep(for: .seconds(1))
                exits = sample(try get("/metrics", port: port).body, #"flintlockd_vmm_exits_total{reason="signal"}"#) ?? 0
            }
            #expect(exits >= 1, "a SIGKILLed VMM counts as an exit by signal")
            try await client.delete(uid: vm.spec.uid)
        }
    }
}
