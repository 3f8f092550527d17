import ContainerdImages
import Foundation
import HostSystem
import Logging
import MicroVMCore
import OCIRegistry
import Testing
import TestSupport

/// The containerd adapter against a real containerd and a real registry.
@Suite("containerd image service", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd and a registry (always runs in CI)"))
struct ContainerdImageServiceTests {
    func makeService(_ env: TestEnvironment, snapshotter: String = "overlayfs", namespace: String, registry: RegistryConfig = RegistryConfig(), socket: String? = nil) throws -> (ContainerdImageService, String) {
        let cache = "/tmp/lm-it-cache-\(UUID().uuidString.prefix(8))"
        let service = try ContainerdImageService(
            socketPath: socket ?? env.containerdSocket, namespace: namespace, snapshotter: snapshotter,
            cacheDirectory: cache, registry: registry, logger: Logger(label: "test"))
        return (service, cache)
    }

    func ref(_ name: String) -> MicroVMRef { MicroVMRef(uid: ULID.make(), namespace: "it", name: name) }

    /// A new one-layer image (`TinyImage`) pushed to the test registry under a unique name.
    func pushTinyImage(_ env: TestEnvironment, prefix: String, payloadBytes: Int = 0) async throws
        -> (image: (layer: String, layerDigest: String, layerSize: Int64, config: Data, manifest: Data), ref: ImageReference) {
        let image = try await TinyImage.make(payloadBytes: payloadBytes)
        let imageRef = try ImageReference(parsing: "\(env.registry)/lm-test/\(prefix)-\(UUID().uuidString.prefix(6).lowercased()):v1")
        let client = RegistryClient(config: RegistryConfig(), logger: Logger(label: "test"))
        do {
            _ = try await client.pushBlob(imageRef, digest: image.layerDigest, size: image.layerSize, file: image.layer)
            _ = try await client.pushBlob(imageRef, data: image.config)
            _ = try await client.pushManifest(imageRef, mediaType: "application/vnd.oci.image.manifest.v1+json", data: image.manifest)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
        return (image, imageRef)
    }

    @Test("pulls, unpacks and extracts a kernel file and an ext4 volume; the VM's lease holds them; release drops it", arguments: ["overlayfs", "native"])
    func pullExtractLease(snapshotter: String) async throws {
        let env = try await TestEnvironment.shared()
        let ns = "lmit-\(snapshotter)-\(UUID().uuidString.prefix(6).lowercased())"
        let (service, cache) = try makeService(env, snapshotter: snapshotter, namespace: ns)
        defer { try? HostFiles.remove(cache) }
        let vm = ref("a")

        let kernel = try await service.fetchFile(reference: env.kernelImage, filename: "boot/vmlinuz", for: vm)
        let bytes = try #require(FileManager.default.contents(atPath: kernel.path))
        #expect(bytes.count > 1_000_000)
        #expect(bytes[0x202..<0x206] == Data("HdrS".utf8), "a bzImage (Linux boot protocol header)")

        let volume = try await service.volumeImage(reference: env.rootImage, for: vm)
        let listing = try await HostProcess.run(["debugfs", "-R", "ls -l /sbin", volume.path])
        #expect(listing.contains("init"), "the ext4 volume holds the image's /sbin/init")
        // Cached: the same path again, without rebuilding.
        let modified = try FileManager.default.attributesOfItem(atPath: volume.path)[.modificationDate] as? Date
        #expect(try await service.volumeImage(reference: env.rootImage, for: ref("b")).path == volume.path)
        #expect(try FileManager.default.attributesOfItem(atPath: volume.path)[.modificationDate] as? Date == modified)

        #expect(try await service.hasLease(for: vm))
        let resources = try await HostProcess.run(["ctr", "--address", env.containerdSocket, "-n", ns, "leases", "ls"])
        #expect(resources.contains(ContainerdImageService.leaseID(for: vm)))
        let images = try await HostProcess.run(["ctr", "--address", env.containerdSocket, "-n", ns, "images", "ls", "-q"])
        #expect(images.contains("lm-test/kernel:latest") && images.contains("lm-test/root:latest"))
        let snaps = try await HostProcess.run(["ctr", "--address", env.containerdSocket, "-n", ns, "snapshots", "--snapshotter", snapshotter, "ls"])
        #expect(snaps.contains("Committed"))
        #expect(!snaps.contains("lm-view-"), "temporary views are removed")

        try await service.releaseLease(for: vm)
        #expect(try await !service.hasLease(for: vm))
        try await service.releaseLease(for: vm)  // idempotent
        await service.shutdown()
    }

    @Test("a file missing from the image and an image missing from the registry fail with messages that say so")
    func failures() async throws {
        let env = try await TestEnvironment.shared()
        let (service, cache) = try makeService(env, namespace: "lmit-fail-\(UUID().uuidString.prefix(6).lowercased())")
        defer { try? HostFiles.remove(cache) }
        let vm = ref("f")
        let missingFile = await #expect(throws: AgentError.self) {
            _ = try await service.fetchFile(reference: env.kernelImage, filename: "boot/nope", for: vm)
        }
        #expect(missingFile?.message.contains("boot/nope is not a file") == true)
        let missingImage = await #expect(throws: RegistryError.self) {
            _ = try await service.fetchFile(reference: "\(env.registry)/lm-test/absent:v9", filename: "x", for: vm)
        }
        #expect(missingImage?.message.contains("404") == true)
        #expect(missingImage?.message.contains("MANIFEST_UNKNOWN") == true)
        try await service.releaseLease(for: vm)
        await service.shutdown()
    }

    @Test("a layer the registry serves short fails the pull naming the blob, not as containerd unreachable, and without retrying the registry")
    func shortBlob() async throws {
        let env = try await TestEnvironment.shared()
        let (image, imageRef) = try await pushTinyImage(env, prefix: "short")
        // Cut the layer in the registry's storage: it now serves fewer bytes than the manifest says.
        let dir = try #require(try await TestEnvironment.scriptVariables()["LM_TEST_ENV"])
        let hex = image.layerDigest.dropFirst("sha256:".count)
        let blob = "\(dir)/registry/data/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data"
        try await HostProcess.run(["truncate", "-s", String(image.layerSize / 2), blob])

        let (service, cache) = try makeService(env, namespace: "lmit-short-\(UUID().uuidString.prefix(6).lowercased())")
        defer { try? HostFiles.remove(cache) }
        let vm = ref("s")
        let started = ContinuousClock.now
        do {
            _ = try await service.volumeImage(reference: imageRef.description, for: vm)
            Issue.record("a short layer was accepted")
        } catch {
            let text = "\(error)"
            #expect(!text.contains("unreachable") && text.contains(String(hex.prefix(12))), "\(text)")
        }
        #expect(ContinuousClock.now - started < .seconds(20), "no rounds of retries against the registry")
        try await service.releaseLease(for: vm)
        await service.shutdown()
    }

    @Test("containerd's connection dropped in the middle of a layer upload: the write resumes on a new connection and the pull succeeds")
    func connectionDroppedMidWrite() async throws {
        let env = try await TestEnvironment.shared()
        let (image, imageRef) = try await pushTinyImage(env, prefix: "dropped", payloadBytes: 8 << 20)

        // containerd through a relay that drops the first connection 3 MiB into the upload.
        let relay = try UnixSocketRelay(to: env.containerdSocket, cutAfter: 3 << 20)
        defer { relay.stop() }
        let (service, cache) = try makeService(env, namespace: "lmit-drop-\(UUID().uuidString.prefix(6).lowercased())", socket: relay.path)
        defer { try? HostFiles.remove(cache) }
        let vm = ref("d")
        let pulled: Result<String, any Error>
        do { pulled = .success(try await service.volumeImage(reference: imageRef.description, for: vm).path) } catch { pulled = .failure(error) }
        #expect(relay.cuts == 1, "the relay dropped the connection during the upload")
        #expect(relay.connections >= 2, "the write went on over a new connection")
        if case .success(let volume) = pulled {
            let stat = try await HostProcess.run(["debugfs", "-R", "stat /etc/payload", volume])
            #expect(stat.contains("Size: \(8 << 20)"), "\(stat)")
        }
        try await service.releaseLease(for: vm)
        await service.shutdown()
        _ = try pulled.get()
    }

    @Test("basic auth: configured credentials pull from the private registry; none → a clear error")
    func privateRegistry() async throws {
        let env = try await TestEnvironment.shared()
        let creds = RegistryConfig(credentials: [env.authRegistry: RegistryCredential(username: env.authUser, password: env.authPassword)])
        let (service, cache) = try makeService(env, namespace: "lmit-auth-\(UUID().uuidString.prefix(6).lowercased())", registry: creds)
        defer { try? HostFiles.remove(cache) }
        let vm = ref("p")
        let f = try await service.fetchFile(reference: "\(env.authRegistry)/lm-test/kernel:latest", filename: "boot/initrd", for: vm)
        #expect(HostFiles.size(f.path) ?? 0 > 0)
        try await service.releaseLease(for: vm)
        await service.shutdown()

        let (anonymous, cache2) = try makeService(env, namespace: "lmit-anon-\(UUID().uuidString.prefix(6).lowercased())")
        defer { try? HostFiles.remove(cache2) }
        let err = await #expect(throws: RegistryError.self) {
            _ = try await anonymous.fetchFile(reference: "\(env.authRegistry)/lm-test/kernel:latest", filename: "boot/initrd", for: vm)
        }
        #expect(err?.message.contains("requires credentials") == true)
        try await anonymous.releaseLease(for: vm)
        await anonymous.shutdown()
    }

    @Test("a snapshot view left mounted by a crashed run is unmounted and removed when the service starts")
    func leftoverMounts() async throws {
        let env = try await TestEnvironment.shared()
        let cache = "/tmp/lm-it-stale-\(UUID().uuidString.prefix(6))"
        let stale = "\(cache)/mnt/\(UUID().uuidString)"
        try HostFiles.createDirectory(stale)
        defer { try? HostFiles.remove(cache) }
        try await HostProcess.run(["mount", "-t", "tmpfs", "tmpfs", stale])
        #expect(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8).contains(stale))
        let service = try ContainerdImageService(
            socketPath: env.containerdSocket, namespace: "lmit-stale", snapshotter: "overlayfs",
            cacheDirectory: cache, registry: RegistryConfig(), logger: Logger(label: "test"))
        #expect(try !String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8).contains(stale))
        #expect(!HostFiles.exists(stale))
        await service.shutdown()
    }

    @Test("containerd not reachable → UNAVAILABLE naming the socket")
    func unavailable() async throws {
        let service = try ContainerdImageService(
            socketPath: "/tmp/lm-missing.sock", namespace: "x", snapshotter: "overlayfs",
            cacheDirectory: "/tmp/lm-it-none", registry: RegistryConfig(), logger: Logger(label: "test"))
        let err = await #expect(throws: AgentError.self) { try await service.checkAvailable() }
        #expect(err?.code == .unavailable)
        #expect(err?.message.contains("/tmp/lm-missing.sock") == true)
        await service.shutdown()
    }
}

@Suite("registry configuration")
struct RegistryConfigTests {
    @Test("docker config.json credentials: auth field, username/password, scheme prefixes")
    func credentials() throws {
        let path = NSTemporaryDirectory() + "/lm-creds-\(UUID().uuidString).json"
        let json = """
            {"auths": {"127.0.0.1:5112": {"auth": "\(Data("u1:p:w".utf8).base64EncodedString())"},
                       "https://reg.example.com/v2/": {"username": "u2", "password": "p2"}}}
            """
        try Data(json.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let creds = try RegistryConfig.loadCredentials(dockerConfigAt: path)
        #expect(creds["127.0.0.1:5112"] == RegistryCredential(username: "u1", password: "p:w"))
        #expect(creds["reg.example.com"] == RegistryCredential(username: "u2", password: "p2"))
        #expect(throws: AgentError.self) { try RegistryConfig.loadCredentials(dockerConfigAt: path + ".missing") }
    }
}
