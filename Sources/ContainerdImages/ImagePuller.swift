import ContainerdAPI
import Foundation
import Metrics
import GRPCCore
import Logging
import MicroVMCore
import OCIImage
import OCIRegistry
import NIOCore

/// An image recorded in containerd and unpacked into a snapshotter.
public struct PulledImage: Sendable, Equatable {
    public var name: String
    public var manifest: Descriptor
    public var config: Descriptor
    public var layers: [Descriptor]
    public var chainIDs: [String]
    /// The snapshot holding the whole filesystem.
    public var topChainID: String { chainIDs.last ?? "" }
}

struct Manifest: Decodable {
    var mediaType: String?
    var config: Descriptor
    var layers: [Descriptor]
}

struct ImageConfig: Decodable {
    struct RootFS: Decodable { var type: String; var diff_ids: [String] }
    var rootfs: RootFS
}

/// Pulls images from registries into containerd's content store and unpacks their layers into
/// snapshots, all through containerd's gRPC API, as containerd's own client does.
struct ImagePuller: Sendable {
    let conn: ContainerdConnection
    let registry: RegistryClient
    let snapshotter: String
    let logger: Logger

    static let supportedLayerTypes: Set<String> = [
        "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    ]

    /// Makes sure `ref` is in containerd and unpacked. An image already recorded with all its
    /// content and snapshots is used as it is, without asking the registry.
    func pull(_ ref: ImageReference, lease: String?) async throws -> PulledImage {
        if let local = try await localImage(ref) {
            Counter(label: "flintlockd_image_pulls_total", dimensions: [("result", "cached")]).increment()
            return local
        }
        do {
            let image = try await pullFromRegistry(ref, lease: lease)
            Counter(label: "flintlockd_image_pulls_total", dimensions: [("result", "pulled")]).increment()
            return image
        } catch {
            Counter(label: "flintlockd_image_pulls_total", dimensions: [("result", "failed")]).increment()
            throw error
        }
    }

    func pullFromRegistry(_ ref: ImageReference, lease: String?) async throws -> PulledImage {
        let start = ContinuousClock.now
        logger.info("pulling image", metadata: ["image": "\(ref)"])
        let (manifestDesc, manifestData) = try await registry.resolveManifest(ref)
        let manifest: Manifest
        do { manifest = try JSONDecoder().decode(Manifest.self, from: manifestData) } catch {
            throw RegistryError(message: "\(ref): manifest \(manifestDesc.digest) is not an image manifest: \(error)")
        }
        for l in manifest.layers where !Self.supportedLayerTypes.contains(l.mediaType) {
            throw RegistryError(message: "\(ref): layer \(l.digest) has unsupported media type \(l.mediaType)")
        }
        // Blobs first (children before parents), so GC labels never point at missing content.
        for blob in [manifest.config] + manifest.layers where try await !conn.hasContent(blob.digest) {
            try await conn.writeContent(expected: blob, labels: [:], lease: lease) { offset, emit in
                try await registry.fetchBlob(ref, digest: blob.digest, from: offset, consume: emit)
            }
            Counter(label: "flintlockd_image_pull_bytes_total").increment(by: Int(blob.size))
        }
        var labels = ["containerd.io/gc.ref.content.config": manifest.config.digest]
        for (i, l) in manifest.layers.enumerated() { labels["containerd.io/gc.ref.content.l.\(i)"] = l.digest }
        let data = manifestData
        try await conn.writeContent(expected: manifestDesc, labels: labels, lease: lease) { offset, emit in
            try await emit(ByteBuffer(data: data.dropFirst(Int(offset))))
        }
        let image = try await unpack(name: ref.description, manifest: manifestDesc, parsed: manifest, lease: lease)
        try await record(image)
        logger.info("pulled image", metadata: [
            "image": "\(ref)", "digest": "\(manifestDesc.digest)",
            "ms": "\((ContinuousClock.now - start).components.seconds * 1000 + (ContinuousClock.now - start).components.attoseconds / 1_000_000_000_000_000)",
        ])
        return image
    }

    /// The image as containerd has it, if it is recorded and fully unpacked.
    func localImage(_ ref: ImageReference) async throws -> PulledImage? {
        let record: Containerd_Services_Images_V1_Image
        do {
            record = try await conn.call("images get") {
                try await conn.images.get(.with { $0.name = ref.description }, metadata: conn.metadata(), options: ContainerdConnection.options()).image
            }
        } catch let e as RPCError where e.isNotFound {
            return nil
        }
        let desc = Descriptor(mediaType: record.target.mediaType, digest: record.target.digest, size: record.target.size)
        if let want = ref.digest, want != desc.digest { return nil }
        guard try await conn.hasContent(desc.digest) else { return nil }
        let manifest = try JSONDecoder().decode(Manifest.self, from: try await conn.readContent(desc.digest))
        for blob in [manifest.config] + manifest.layers where try await !conn.hasContent(blob.digest) { return nil }
        let config = try JSONDecoder().decode(ImageConfig.self, from: try await conn.readContent(manifest.config.digest))
        let chains = Digest.chainIDs(diffIDs: config.rootfs.diff_ids)
        guard let top = chains.last, try await snapshotExists(top) else { return nil }
        return PulledImage(name: ref.description, manifest: desc, config: manifest.config, layers: manifest.layers, chainIDs: chains)
    }

    func snapshotExists(_ key: String) async throws -> Bool {
        try await conn.call("snapshots stat") {
            do {
                _ = try await conn.snapshots.stat(.with { $0.snapshotter = snapshotter; $0.key = key }, metadata: conn.metadata(), options: ContainerdConnection.options())
                return true
            } catch let e as RPCError where e.isNotFound {
                return false
            }
        }
    }

    /// Applies each layer on top of its parent, committing snapshots named by chain id.
    func unpack(name: String, manifest: Descriptor, parsed: Manifest, lease: String?) async throws -> PulledImage {
        let config = try JSONDecoder().decode(ImageConfig.self, from: try await conn.readContent(parsed.config.digest))
        guard config.rootfs.diff_ids.count == parsed.layers.count else {
            throw RegistryError(message: "\(name): config lists \(config.rootfs.diff_ids.count) layers, manifest \(parsed.layers.count)")
        }
        let chains = Digest.chainIDs(diffIDs: config.rootfs.diff_ids)
        for (i, layer) in parsed.layers.enumerated() {
            let chain = chains[i]
            if try await snapshotExists(chain) { continue }
            let key = "lm-extract-\(UUID().uuidString) \(chain)"
            let parent = i > 0 ? chains[i - 1] : ""
            let mounts = try await conn.call("snapshots prepare") {
                try await conn.snapshots.prepare(.with {
                    $0.snapshotter = snapshotter
                    $0.key = key
                    $0.parent = parent
                }, metadata: conn.metadata(lease: lease), options: ContainerdConnection.options()).mounts
            }
            do {
                let applied = try await conn.call("diff apply") {
                    try await conn.diff.apply(.with {
                        $0.diff = .with { d in d.mediaType = layer.mediaType; d.digest = layer.digest; d.size = layer.size }
                        $0.mounts = mounts
                    }, metadata: conn.metadata(lease: lease), options: ContainerdConnection.options(timeout: .seconds(1800))).applied
                }
                guard applied.digest == config.rootfs.diff_ids[i] else {
                    throw RegistryError(message: "\(name): layer \(layer.digest) unpacked to \(applied.digest), config says \(config.rootfs.diff_ids[i])")
                }
                try await conn.call("snapshots commit") {
                    do {
                        _ = try await conn.snapshots.commit(.with {
                            $0.snapshotter = snapshotter
                            $0.name = chain
                            $0.key = key
                        }, metadata: conn.metadata(lease: lease), options: ContainerdConnection.options())
                    } catch let e as RPCError where e.isAlreadyExists {
                        try? await removeSnapshot(key)  // someone else committed the same layer
                    }
                }
                try await conn.setContentLabels(layer.digest, ["containerd.io/uncompressed": applied.digest])
            } catch {
                try? await removeSnapshot(key)
                throw error
            }
        }
        try await conn.setContentLabels(parsed.config.digest, ["containerd.io/gc.ref.snapshot.\(snapshotter)": chains.last ?? ""])
        return PulledImage(name: name, manifest: manifest, config: parsed.config, layers: parsed.layers, chainIDs: chains)
    }

    func removeSnapshot(_ key: String) async throws {
        try await conn.call("snapshots remove") {
            do {
                _ = try await conn.snapshots.remove(.with { $0.snapshotter = snapshotter; $0.key = key }, metadata: conn.metadata(), options: ContainerdConnection.options())
            } catch let e as RPCError where e.isNotFound {}
        }
    }

    /// Records (or moves) the image name to its manifest.
    func record(_ image: PulledImage) async throws {
        let img = Containerd_Services_Images_V1_Image.with {
            $0.name = image.name
            $0.target = .with { t in t.mediaType = image.manifest.mediaType; t.digest = image.manifest.digest; t.size = image.manifest.size }
        }
        try await conn.call("images create") {
            do {
                _ = try await conn.images.create(.with { $0.image = img }, metadata: conn.metadata(), options: ContainerdConnection.options())
            } catch let e as RPCError where e.isAlreadyExists {
                _ = try await conn.images.update(.with {
                    $0.image = img
                    $0.updateMask.paths = ["target"]
                }, metadata: conn.metadata(), options: ContainerdConnection.options())
            }
        }
    }
}
