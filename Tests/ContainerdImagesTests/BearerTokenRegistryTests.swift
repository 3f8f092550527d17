import ContainerdImages
import Foundation
import HostSystem
import Logging
import MicroVMCore
import OCIImage
import OCIRegistry
import Testing
import TestSupport

/// The registry client's bearer-token flow against the real thing: scripts/test-env.sh's token
/// registry (distribution 2.8 with `auth: token`) and its token server
/// (scripts/registry-token-server.py), with the fixture images pushed to it.
@Suite("bearer-token registry", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd and the token registry of scripts/test-env.sh (always runs in CI)"))
struct BearerTokenRegistryTests {
    func makeService(_ env: TestEnvironment, namespace: String, registry: RegistryConfig) throws -> (ContainerdImageService, String) {
        let cache = "/tmp/lm-it-cache-\(UUID().uuidString.prefix(8))"
        let service = try ContainerdImageService(
            socketPath: env.containerdSocket, namespace: namespace, snapshotter: "overlayfs",
            cacheDirectory: cache, registry: registry, logger: Logger(label: "test"))
        return (service, cache)
    }

    func ref(_ name: String) -> MicroVMRef { MicroVMRef(uid: ULID.make(), namespace: "it", name: name) }

    func namespace(_ what: String) -> String { "lmit-token-\(what)-\(UUID().uuidString.prefix(6).lowercased())" }

    @Test("the registry really wants a bearer token: /v2/ answers 401 with a Bearer challenge naming the token server")
    func challenge() async throws {
        let token = try await TokenRegistry.shared()
        let head = try await HostProcess.run(["curl", "-s", "-i", "-m", "5", "http://\(token.address)/v2/lm-test/kernel/manifests/latest"])
        #expect(head.hasPrefix("HTTP/1.1 401"), "\(head)")
        #expect(head.lowercased().contains("www-authenticate: bearer realm=\"\(token.realm.lowercased())\""), "\(head)")
        #expect(head.contains("service=\"lm-token-registry\""))
        #expect(head.contains("scope=\"repository:lm-test/kernel:pull\""))
    }

    @Test("configured credentials: the client gets a token from the token server and pulls a kernel")
    func pullWithToken() async throws {
        let env = try await TestEnvironment.shared()
        let token = try await TokenRegistry.shared()
        let creds = RegistryConfig(credentials: [token.address: RegistryCredential(username: token.user, password: token.password)])
        let (service, cache) = try makeService(env, namespace: namespace("pull"), registry: creds)
        defer { try? HostFiles.remove(cache) }
        let vm = ref("t")
        let kernel = try await service.fetchFile(reference: "\(token.address)/lm-test/kernel:latest", filename: "boot/vmlinuz", for: vm)
        let bytes = try #require(FileManager.default.contents(atPath: kernel.path))
        #expect(bytes.count > 1_000_000)
        #expect(bytes[0x202..<0x206] == Data("HdrS".utf8), "a bzImage (Linux boot protocol header)")
        // A second image through the same client: another repository, so another token scope.
        let initScript = try await service.fetchFile(reference: "\(token.address)/lm-test/root:latest", filename: "sbin/init", for: vm)
        #expect(HostFiles.size(initScript.path) ?? 0 > 0)
        try await service.releaseLease(for: vm)
        await service.shutdown()
    }

    @Test("wrong or missing credentials: the error is the token service refusing access")
    func refused() async throws {
        let env = try await TestEnvironment.shared()
        let token = try await TokenRegistry.shared()
        let image = "\(token.address)/lm-test/kernel:latest"
        let cases: [(String, RegistryConfig)] = [
            ("wrong", RegistryConfig(credentials: [token.address: RegistryCredential(username: token.user, password: token.password + "-wrong")])),
            ("none", RegistryConfig()),
        ]
        for (what, config) in cases {
            let (service, cache) = try makeService(env, namespace: namespace(what), registry: config)
            defer { try? HostFiles.remove(cache) }
            let vm = ref(what)
            let err = await #expect(throws: RegistryError.self, "\(what) credentials") {
                _ = try await service.fetchFile(reference: image, filename: "boot/vmlinuz", for: vm)
            }
            let message = err?.message ?? ""
            #expect(message.contains("token service \(token.realm) refused access to \(image) (401)"), "\(what): \(message)")
            #expect(message.contains("UNAUTHORIZED"), "the token server's error code is passed on: \(message)")
            try await service.releaseLease(for: vm)
            await service.shutdown()
        }
    }

    @Test("RegistryClient: manifests by tag and digest and a blob, tokens per repository scope")
    func registryClient() async throws {
        let token = try await TokenRegistry.shared()
        let client = RegistryClient(
            config: RegistryConfig(credentials: [token.address: RegistryCredential(username: token.user, password: token.password)]),
            logger: Logger(label: "test"))
        for name in ["kernel", "root"] {
            let ref = try ImageReference(parsing: "\(token.address)/lm-test/\(name):latest")
            let (desc, data) = try await client.resolveManifest(ref)
            #expect(desc.digest == token.pushedDigests[name], "the manifest lmctl pushed for lm-test/\(name)")
            #expect(desc.size == Int64(data.count))
            struct Manifest: Decodable { var config: Descriptor; var layers: [Descriptor] }
            let manifest = try JSONDecoder().decode(Manifest.self, from: data)
            #expect(!manifest.layers.isEmpty)

            // By digest too (the client checks the bytes against it), with the cached token.
            let byDigest = try ImageReference(parsing: "\(token.address)/lm-test/\(name)@\(desc.digest)")
            #expect(try await client.resolveManifest(byDigest).1 == data)

            // The config blob, streamed; its sha256 must be its digest.
            var blob = [UInt8]()
            try await client.fetchBlob(ref, digest: manifest.config.digest) { chunk in blob += Array(chunk.readableBytesView) }
            #expect(Int64(blob.count) == manifest.config.size)
            let file = NSTemporaryDirectory() + "/lm-token-blob-\(UUID().uuidString)"
            try Data(blob).write(to: URL(fileURLWithPath: file))
            defer { try? FileManager.default.removeItem(atPath: file) }
            let sum = try await HostProcess.run(["sha256sum", file])
            #expect("sha256:" + (sum.split(separator: " ").first.map(String.init) ?? "") == manifest.config.digest)
        }
        try await client.shutdown()
    }
}

/// The token registry of scripts/test-env.sh (read from `scripts/test-env.sh env`), with the
/// fixture images pushed to it once per test process.
struct TokenRegistry: Sendable {
    var address: String
    var realm: String
    var user: String
    var password: String
    /// Manifest digests by image name ("kernel", "root"), as `lmctl image push` printed them.
    var pushedDigests: [String: String]

    static func shared() async throws -> TokenRegistry { try await TokenRegistrySetup.instance.get() }

    static func prepare() async throws -> TokenRegistry {
        let env = try await TestEnvironment.shared()  // runs scripts/test-env.sh start
        let vars = try await TestEnvironment.scriptVariables()
        guard let address = vars["LM_TOKEN_REGISTRY"] else {
            throw TestEnvironmentError("scripts/test-env.sh env printed no LM_TOKEN_REGISTRY: \(vars)")
        }
        // The token server takes the auth registry's user and password.
        let user = vars["LM_AUTH_USER"] ?? env.authUser, password = vars["LM_AUTH_PASS"] ?? env.authPassword
        let realm = vars["LM_TOKEN_REALM"] ?? "http://127.0.0.1:5114/token"
        let digests = try await FixtureImages.push(to: address, user: user, password: password)
        return TokenRegistry(address: address, realm: realm, user: user, password: password, pushedDigests: digests)
    }
}

actor TokenRegistrySetup {
    static let instance = TokenRegistrySetup()
    var task: Task<TokenRegistry, any Error>?
    func get() async throws -> TokenRegistry {
        if let task { return try await task.value }
        let t = Task { try await TokenRegistry.prepare() }
        task = t
        return try await t.value
    }
}
