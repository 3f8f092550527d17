#if canImport(Glibc)
import Glibc
#endif
import AgentClient
import Foundation
import HostSystem

/// flintlockd run as a real process for system tests, with its own state directory and port.
public final class AgentProcess: @unchecked Sendable {
    public let stateDir: String
    public let port: Int
    /// Arguments after the defaults; change them between `kill` and `start` to restart differently.
    public var extraArguments: [String]
    public let containerdSocket: String
    /// How the test talks to the agent when it serves TLS (start, cleanUp and `client()` use it).
    public var clientTLS: AgentClient.TLSOptions?
    public private(set) var pid: pid_t = 0
    public var address: String { "127.0.0.1:\(port)" }
    /// The agent's `--basic-auth-token`, if it was given one (start, cleanUp and `client()` use it).
    public var token: String? { extraArguments.firstIndex(of: "--basic-auth-token").flatMap { extraArguments.indices.contains($0 + 1) ? extraArguments[$0 + 1] : nil } }
    public var logPath: String { "\(stateDir).agent.log" }

    public init(environment: TestEnvironment, extraArguments: [String] = [], containerdSocket: String? = nil) throws {
        stateDir = "/tmp/lm-agent-\(UUID().uuidString.prefix(8))"
        port = try Self.freePort()
        self.extraArguments = extraArguments
        self.containerdSocket = containerdSocket ?? environment.containerdSocket
        try HostFiles.createDirectory(stateDir)
        bridge = environment.bridge
    }

    let bridge: String

    public var arguments: [String] {
        // The test bridge is the default unless the test names its own.
        let bridgeArguments = extraArguments.contains("--bridge-name") ? [] : ["--bridge-name", bridge]
        return ["\(TestEnvironment.productsDirectory)/flintlockd", "run", "--state-dir", stateDir, "--grpc-endpoint", address,
                "--containerd-socket", containerdSocket, "--containerd-ns", "lmtest", "--shutdown-timeout", "1s", "--resync-period", "30s"]
            + bridgeArguments + extraArguments
    }

    /// Starts the agent and waits until its API answers.
    public func start() async throws {
        let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        defer { close(fd) }
        pid = try HostProcess.spawn(arguments, stdout: fd, stderr: fd)
        let client = try AgentClient(address: address, token: token, tls: clientTLS)
        defer { client.close() }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let t = HostProcess.reapIfExited(pid) {
                throw TestEnvironmentError("flintlockd \(t) at start: \(log())")
            }
            if (try? await client.list()) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestEnvironmentError("flintlockd did not answer within 30 s: \(log())")
    }

    /// Kills the agent with `signal` and reaps it.
    public func kill(_ signal: Int32 = SIGKILL) {
        guard pid > 0 else { return }
        Glibc.kill(pid, signal)
        _ = HostProcess.waitFor(pid)
        pid = 0
    }

    public func log() -> String {
        String(decoding: HostFiles.tail(logPath, maxBytes: 4000) ?? Data(), as: UTF8.self)
    }

    public func client(token: String? = nil, tls: AgentClient.TLSOptions? = nil) throws -> AgentClient {
        try AgentClient(address: address, token: token ?? self.token, tls: tls ?? clientTLS)
    }

    /// Deletes every VM through the API (so TAPs and leases go too), then stops the agent and
    /// kills anything of its that is left, then removes its state.
    public func cleanUp() async {
        if pid > 0, let client = try? client() {
            if let vms = try? await client.list() {
                for vm in vms { try? await client.delete(uid: vm.spec.uid) }
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline, let left = try? await client.list(), !left.isEmpty {
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            client.close()
        }
        kill(SIGKILL)
        for p in processes(matching: stateDir + "/") { Glibc.kill(p, SIGKILL) }
        try? await Task.sleep(for: .milliseconds(200))
        try? HostFiles.remove(stateDir)
    }

    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw TestEnvironmentError("no free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Runs `body` with a started agent and always cleans up after it, even when `body` throws.
public func withAgent<T>(_ env: TestEnvironment, _ extraArguments: [String] = [], containerdSocket: String? = nil, start: Bool = true, _ body: (AgentProcess) async throws -> T) async throws -> T {
    let agent = try AgentProcess(environment: env, extraArguments: extraArguments, containerdSocket: containerdSocket)
    do {
        if start { try await agent.start() }
        let result = try await body(agent)
        await agent.cleanUp()
        return result
    } catch {
        await agent.cleanUp()
        throw TestEnvironmentError("\(error)\n--- agent log ---\n\(agent.log())")
    }
}

/// Processes whose command line contains `needle` (e.g. a VM's directory).
public func processes(matching needle: String) -> [pid_t] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { e in
        guard let p = Int32(e), let cmd = HostProcess.commandLine(of: p), HostProcess.isAlive(p), cmd.contains(where: { $0.contains(needle) }) else { return nil }
        return p
    }
}
