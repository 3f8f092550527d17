#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem

/// The real environment system tests run in: a private containerd, loopback registries (one
/// with basic auth), fixture images built by lmctl (`FixtureImages`) and pushed to both, and a bridge.
/// Everything is started by the scripts under scripts/ (the same ones the quickstart uses).
public struct TestEnvironment: Sendable {
    public var containerdSocket: String
    public var registry: String
    public var authRegistry: String
    /// A registry with bearer-token authentication (same user and password as `authRegistry`).
    public var tokenRegistry: String
    public var authUser: String
    public var authPassword: String
    public var bridge: String
    public var bridgeGateway: String
    public var packageRoot: String

    public var kernelImage: String { "\(registry)/lm-test/kernel:latest" }
    public var rootImage: String { "\(registry)/lm-test/root:latest" }

    /// True in CI (CI=true), where system tests must run and fail loudly when something is missing.
    public static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Whether this machine can run system tests: root, /dev/net/tun, QEMU and containerd.
    public static let hostIsCapable: Bool = {
        getuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0
            && ["qemu-system-x86_64", "containerd", "docker-registry", "skopeo", "umoci", "mkfs.ext4", "ctr"].allSatisfy { (try? HostProcess.resolveExecutable($0)) != nil }
    }()

    /// System tests run in CI always (and fail there if the host lacks something) and locally when
    /// the host can run them.
    public static let systemTestsEnabled = isCI || hostIsCapable

    public static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    /// Starts (once per test process) everything the system tests need.
    public static func shared() async throws -> TestEnvironment {
        try await SharedEnvironment.instance.get()
    }

    static func prepare() async throws -> TestEnvironment {
        guard hostIsCapable else {
            throw TestEnvironmentError("system tests need root, /dev/net/tun, qemu-system-x86_64, containerd, docker-registry, skopeo, umoci, e2fsprogs and ctr; run scripts/test.sh, which installs them")
        }
        let root = packageRoot
        try await HostProcess.run(["\(root)/scripts/test-env.sh", "start"])
        let env = try await scriptVariables()
        guard let sock = env["LM_CONTAINERD_SOCKET"], let reg = env["LM_REGISTRY"], let authReg = env["LM_AUTH_REGISTRY"], let tokenReg = env["LM_TOKEN_REGISTRY"] else {
            throw TestEnvironmentError("scripts/test-env.sh env printed no LM_CONTAINERD_SOCKET/LM_REGISTRY/LM_AUTH_REGISTRY/LM_TOKEN_REGISTRY: \(env)")
        }
        let user = env["LM_AUTH_USER"] ?? "lmuser", pass = env["LM_AUTH_PASS"] ?? "lmpass"
        try await FixtureImages.build()
        try await FixtureImages.push(to: reg)
        try await FixtureImages.push(to: authReg, user: user, password: pass)
        // The agent uses an image already recorded under its tag without asking the registry (as
        // Flintlock does), so records an earlier run left would shadow the images just pushed.
        for ns in try await HostProcess.run(["ctr", "--address", sock, "namespaces", "ls", "-q"]).split(separator: "\n") {
            let stale = try await HostProcess.run(["ctr", "--address", sock, "-n", String(ns), "images", "ls", "-q"])
                .split(separator: "\n").map(String.init).filter { $0.contains("/lm-test/") }
            if !stale.isEmpty { try await HostProcess.run(["ctr", "--address", sock, "-n", String(ns), "images", "rm"] + stale) }
        }
        let bridge = "lmtest0", gateway = "10.97.0.1"
        if !HostFiles.exists("/sys/class/net/\(bridge)") {
            try await HostProcess.run(["ip", "link", "add", bridge, "type", "bridge"])
        }
        _ = try? await HostProcess.run(["ip", "addr", "add", "\(gateway)/24", "dev", bridge])
        try await HostProcess.run(["ip", "link", "set", bridge, "up"])
        return TestEnvironment(containerdSocket: sock, registry: reg, authRegistry: authReg, tokenRegistry: tokenReg, authUser: user, authPassword: pass, bridge: bridge, bridgeGateway: gateway, packageRoot: root)
    }

    /// The exports `scripts/test-env.sh env` prints (LM_REGISTRY, LM_TOKEN_REGISTRY, ...).
    public static func scriptVariables() async throws -> [String: String] {
        let text = try await HostProcess.run(["\(packageRoot)/scripts/test-env.sh", "env"])
        var vars: [String: String] = [:]
        for line in text.split(separator: "\n") {
            var l = line.trimmingCharacters(in: .whitespaces)
            if l.hasPrefix("export ") { l.removeFirst("export ".count) }
            guard let eq = l.firstIndex(of: "=") else { continue }
            vars[String(l[..<eq])] = String(l[l.index(after: eq)...]).trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
        }
        return vars
    }

    /// The directory holding the built executables (next to the test bundle).
    public static var productsDirectory: String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("flintlockd").path), dir.path != "/" {
            dir.deleteLastPathComponent()
        }
        return dir.path
    }

    /// containerd's leases in the agent's namespace, via ctr.
    public func leases(namespace: String) async throws -> [String] {
        let out = try await HostProcess.run(["ctr", "--address", containerdSocket, "-n", namespace, "leases", "ls", "-q"])
        return out.split(separator: "\n").map { String($0) }.filter { !$0.isEmpty }
    }
}

public struct TestEnvironmentError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

actor SharedEnvironment {
    static let instance = SharedEnvironment()
    var task: Task<TestEnvironment, any Error>?
    func get() async throws -> TestEnvironment {
        if let task { return try await task.value }
        let t = Task { try await TestEnvironment.prepare() }
        task = t
        return try await t.value
    }
}
