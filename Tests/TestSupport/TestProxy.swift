#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem

/// tinyproxy (Debian's package) run for a test: an HTTP proxy on loopback that allows CONNECT only
/// to the given ports, optionally with basic authentication, logging every CONNECT.
public final class TestProxy: @unchecked Sendable {
    public let port: Int
    public let directory: String
    let pid: pid_t
    public var endpoint: String { "127.0.0.1:\(port)" }
    public var logPath: String { "\(directory)/tinyproxy.log" }

    public init(connectPorts: [Int], user: String? = nil, password: String? = nil) async throws {
        directory = "/tmp/lm-proxy-\(UUID().uuidString.prefix(6))"
        try HostFiles.createDirectory(directory)
        port = try AgentProcess.freePort()
        var conf = """
            Port \(port)
            Listen 127.0.0.1
            Timeout 120
            Allow 127.0.0.1
            LogFile "\(directory)/tinyproxy.log"
            LogLevel Connect
            PidFile "\(directory)/tinyproxy.pid"
            MaxClients 50

            """
        for p in connectPorts { conf += "ConnectPort \(p)\n" }
        if let user, let password { conf += "BasicAuth \(user) \(password)\n" }
        try Data(conf.utf8).write(to: URL(fileURLWithPath: "\(directory)/tinyproxy.conf"))
        // tinyproxy drops to "nobody" when started as root: let it write its log there.
        _ = chmod(directory, 0o777)
        let out = open("\(directory)/stdout.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(out) }
        pid = try HostProcess.spawn(["tinyproxy", "-d", "-c", "\(directory)/tinyproxy.conf"], stdout: out, stderr: out)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let t = HostProcess.reapIfExited(pid) { throw TestEnvironmentError("tinyproxy \(t): \(log())") }
            if (try? await HostProcess.run(["curl", "-s", "-o", "/dev/null", "-m", "2", "http://127.0.0.1:\(port)/"])) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestEnvironmentError("tinyproxy did not listen within 10 s: \(log())")
    }

    /// The proxy's log (its CONNECT lines name the tunnels it made).
    public func log() -> String {
        let a = HostFiles.tail(logPath, maxBytes: 8000) ?? Data()
        let b = HostFiles.tail("\(directory)/stdout.log", maxBytes: 4000) ?? Data()
        return String(decoding: a + b, as: UTF8.self)
    }

    public func stop() {
        kill(pid, SIGKILL)
        _ = HostProcess.waitFor(pid)
        try? HostFiles.remove(directory)
    }
}
