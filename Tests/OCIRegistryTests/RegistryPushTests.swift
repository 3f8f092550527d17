import Foundation
import HostSystem
import Logging
import MicroVMCore
import OCIRegistry
import Testing
import TestSupport

/// Pushing to real registries: plain HTTP on loopback, basic auth, bearer tokens.
@Suite("registry push", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs the loopback registries (always runs in CI)"))
struct RegistryPushTests {
    @Test("push blobs and a manifest; a second push sends no blob; the image reads back", arguments: ["plain", "basic", "token"])
    func pushAndReadBack(kind: String) async throws {
        let env = try await TestEnvironment.shared()
        let registry = kind == "plain" ? env.registry : kind == "basic" ? env.authRegistry : env.tokenRegistry
        let creds = kind == "plain" ? [:] : [registry: RegistryCredential(username: env.authUser, password: env.authPassword)]
        let client = RegistryClient(config: RegistryConfig(credentials: creds), logger: Logger(label: "test"))
        let image = try await TinyImage.make()
        let ref = try ImageReference(parsing: "\(registry)/lm-test/pushed:\(kind)")

        #expect(try await !client.blobExists(ref, digest: image.layerDigest))
        #expect(try await client.pushBlob(ref, digest: image.layerDigest, size: image.layerSize, file: image.layer))
        #expect(try await client.pushBlob(ref, data: image.config))
        let manifestDigest = try await client.pushManifest(ref, mediaType: "application/vnd.oci.image.manifest.v1+json", data: image.manifest)
        #expect(try await !client.pushBlob(ref, digest: image.layerDigest, size: image.layerSize, file: image.layer), "already there: not sent again")

        let (desc, body) = try await client.resolveManifest(ref)
        #expect(desc.digest == manifestDigest)
        #expect(body == image.manifest)
        var args = ["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(ref)"]
        if kind != "plain" { args.insert("--creds=\(env.authUser):\(env.authPassword)", at: 2) }
        #expect(try await HostProcess.run(args).contains(image.layerDigest))
        try await client.shutdown()
    }

    @Test("a push without credentials to a registry that needs them fails with a clear message")
    func pushWithoutCredentials() async throws {
        let env = try await TestEnvironment.shared()
        let client = RegistryClient(config: RegistryConfig(), logger: Logger(label: "test"))
        let image = try await TinyImage.make()
        let ref = try ImageReference(parsing: "\(env.authRegistry)/lm-test/pushed:nocreds")
        await #expect(throws: RegistryError.self) {
            try await client.pushBlob(ref, digest: image.layerDigest, size: image.layerSize, file: image.layer)
        }
        try await client.shutdown()
    }
}
