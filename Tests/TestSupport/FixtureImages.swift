import Foundation
import HostSystem

/// The images most system tests boot, built with `lmctl image build` like a user's: the default
/// Debian 12 cloud kernel (`lm-test/kernel`) and the `minimal` busybox root (`lm-test/root`, whose
/// /sbin/init prints LIQUIDMETAL-GUEST-READY and reads lm_ip/lm_panic/lm_poweroff from the kernel
/// command line). Built once per test process into OCI layouts, then pushed with `lmctl image push`.
public enum FixtureImages {
    /// Where the layouts go: `$LM_TEST_IMAGES` or /tmp/lm-test-images (`kernel/`, `root/`, tag latest).
    public static let layoutRoot = ProcessInfo.processInfo.environment["LM_TEST_IMAGES"] ?? "/tmp/lm-test-images"
    /// The package cache every lmctl build in the tests shares, so apt downloads each .deb once.
    public static let cacheDirectory = "/tmp/lm-build-cache"

    public static var lmctl: String { "\(TestEnvironment.productsDirectory)/lmctl" }

    /// Builds both layouts (reproducible: the same inputs give the same digests).
    static func build() async throws {
        try await HostProcess.run([lmctl, "image", "build", "kernel", "--tag", "lm-test/kernel:latest",
                                   "--output", "oci-layout:\(layoutRoot)/kernel", "--cache-dir", cacheDirectory])
        try await HostProcess.run([lmctl, "image", "build", "rootfs", "--preset", "minimal", "--tag", "lm-test/root:latest",
                                   "--output", "oci-layout:\(layoutRoot)/root", "--cache-dir", cacheDirectory])
    }

    /// The `cloud` preset (Debian 12, systemd, cloud-init, openssh), built once per test process into
    /// `<layoutRoot>/cloud` and pushed to `registry` as lm-test/cloud:latest; returns the reference.
    /// (The .deb cache makes later runs on the same machine warm.)
    public static func cloud(registry: String) async throws -> String {
        try await CloudImage.instance.get(registry: registry)
    }

    actor CloudImage {
        static let instance = CloudImage()
        var task: Task<String, any Error>?
        func get(registry: String) async throws -> String {
            if let task { return try await task.value }
            let t = Task {
                try await HostProcess.run([FixtureImages.lmctl, "image", "build", "rootfs", "--preset", "cloud", "--tag", "lm-test/cloud:latest",
                                           "--output", "oci-layout:\(FixtureImages.layoutRoot)/cloud", "--cache-dir", FixtureImages.cacheDirectory])
                let ref = "\(registry)/lm-test/cloud:latest"
                try await HostProcess.run([FixtureImages.lmctl, "image", "push", "oci-layout:\(FixtureImages.layoutRoot)/cloud:latest", ref])
                return ref
            }
            task = t
            return try await t.value
        }
    }

    /// Pushes both images to `registry` as lm-test/{kernel,root}:latest; returns their manifest
    /// digests by name ("kernel", "root").
    @discardableResult
    public static func push(to registry: String, user: String? = nil, password: String? = nil) async throws -> [String: String] {
        var auth: [String] = []
        var authFile: String?
        if let user, let password {
            let file = NSTemporaryDirectory() + "/lm-fixture-auth-\(UUID().uuidString.prefix(8)).json"
            let token = Data("\(user):\(password)".utf8).base64EncodedString()
            try Data(#"{"auths": {"\#(registry)": {"auth": "\#(token)"}}}"#.utf8).write(to: URL(fileURLWithPath: file))
            auth = ["--registry-auth-file", file]
            authFile = file
        }
        defer { if let authFile { try? FileManager.default.removeItem(atPath: authFile) } }
        var digests: [String: String] = [:]
        for name in ["kernel", "root"] {
            let out = try await HostProcess.run([lmctl, "image", "push", "oci-layout:\(layoutRoot)/\(name):latest", "\(registry)/lm-test/\(name):latest"] + auth)
            guard let digest = out.split(separator: "@").last.map({ $0.trimmingCharacters(in: .whitespacesAndNewlines) }), digest.hasPrefix("sha256:") else {
                throw TestEnvironmentError("lmctl image push printed no digest for \(name): \(out)")
            }
            digests[name] = digest
        }
        return digests
    }
}
