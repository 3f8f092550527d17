import Foundation
import HostSystem
import ImageBuilder
import Logging
import MicroVMCore
import OCIRegistry
import Testing
import TestSupport

@Suite("pushing OCI layouts", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs the loopback registries (always runs in CI)"))
struct LayoutPusherTests {
    @Test("a layout's tag is pushed (twice: the second time no blob is sent) and reads back with the same digest")
    func pushLayout() async throws {
        let env = try await TestEnvironment.shared()  // also builds the fixture layouts
        let layout = FixtureImages.layoutRoot + "/root"
        let expected = try await HostProcess.run(["skopeo", "inspect", "--format", "{{.Digest}}", "oci:\(layout):latest"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let client = RegistryClient(config: RegistryConfig(credentials: [env.authRegistry: RegistryCredential(username: env.authUser, password: env.authPassword)]), logger: Logger(label: "test"))
        let target = try ImageReference(parsing: "\(env.authRegistry)/lm-test/pushed-layout:v1")
        let lines = LinesBox()
        let digest = try await LayoutPusher(client: client).push(layout: layout, tag: "latest", to: target) { lines.add($0) }
        #expect(digest == expected)
        let again = LinesBox()
        _ = try await LayoutPusher(client: client).push(layout: layout, tag: "latest", to: target) { again.add($0) }
        #expect(again.all.filter { $0.contains("already there") }.count == 2, "\(again.all)")
        let remote = try await HostProcess.run(["skopeo", "inspect", "--format", "{{.Digest}}", "--tls-verify=false", "--creds=\(env.authUser):\(env.authPassword)", "docker://\(target)"])
        #expect(remote.trimmingCharacters(in: .whitespacesAndNewlines) == expected)
        await #expect(throws: ImageBuildError.self) {
            _ = try await LayoutPusher(client: client).push(layout: layout, tag: "no-such-tag", to: target)
        }
        try await client.shutdown()
    }
}

final class LinesBox: @unchecked Sendable {
    private var lines: [String] = []
    private let lock = NSLock()
    func add(_ l: String) { lock.withLock { lines.append(l) } }
    var all: [String] { lock.withLock { lines } }
}
