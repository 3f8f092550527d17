import Foundation

/// A layer blob written to an image layout: its descriptor (gzip) and its `diff_id` (uncompressed digest).
public struct LayerDescriptor: Codable, Sendable, Hashable {
    /// The blob's descriptor: media type `MediaType.layerTarGzip`, digest and size of the gzip bytes.
    public var descriptor: Descriptor
    /// `sha256:<hex>` of the uncompressed tar.
    public var diffID: String
    /// Size of the uncompressed tar.
    public var uncompressedSize: Int64

    public init(descriptor: Descriptor, diffID: String, uncompressedSize: Int64) {
        self.descriptor = descriptor
        self.diffID = diffID
        self.uncompressedSize = uncompressedSize
    }
}

/// Writes an OCI image layout (image-layout.md): `oci-layout`, `blobs/<alg>/<hex>` and `index.json`.
///
/// Blobs are content addressed, so writing the same blob twice is harmless. Tags are stored as the
/// `org.opencontainers.image.ref.name` annotation of the manifest descriptors in `index.json`; writing an image
/// with an existing tag replaces that entry. An existing layout is opened and extended. Old blobs are never
/// deleted. One writer per layout at a time; not thread-safe.
public final class OCILayoutWriter {
    /// The layout's root.
    public let directory: URL
    /// The contents of `index.json` as last written.
    public private(set) var index: ImageIndex

    private var blobsPath: String { directory.path + "/blobs" }

    /// Opens (creating if needed) a layout at `directory`: writes `oci-layout`, `blobs/sha256/` and an empty
    /// `index.json` when missing; loads an existing `index.json`.
    public init(directory: URL) throws {
        self.directory = directory
        let root = directory.path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let layoutFile = root + "/oci-layout"
        if FileManager.default.fileExists(atPath: layoutFile) {
            let header = try JSONDecoder().decode(ImageLayoutHeader.self, from: Data(contentsOf: URL(fileURLWithPath: layoutFile)))
            guard header.imageLayoutVersion == "1.0.0" else {
                throw OCIImageError.invalidLayout("unsupported imageLayoutVersion \(header.imageLayoutVersion)")
            }
        } else {
            try OCILayoutWriter.writeAtomically(try CanonicalJSON.encode(ImageLayoutHeader()), to: layoutFile)
        }
        try POSIX.makeDirectory(root + "/blobs")
        try POSIX.makeDirectory(root + "/blobs/sha256")
        let indexFile = root + "/index.json"
        if FileManager.default.fileExists(atPath: indexFile) {
            index = try JSONDecoder().decode(ImageIndex.self, from: Data(contentsOf: URL(fileURLWithPath: indexFile)))
        } else {
            index = ImageIndex()
            try OCILayoutWriter.writeAtomically(try CanonicalJSON.encode(index), to: indexFile)
        }
    }

    // MARK: Layers

    /// Archives a directory tree (see `TarWriter.appendDirectory`) into a gzip layer blob, streaming
    /// tar → gzip → a temporary file that is renamed to its digest.
    /// - Parameters:
    ///   - epoch: mtime of every entry.
    ///   - extraEntries: in-memory entries added to (or replacing paths of) the tree, e.g. `etc/hostname`.
    ///   - metadata: whether owners and extended attributes on disk are recorded (default: all 0:0, none).
    ///   - compressionLevel: zlib level 0...9.
    public func addLayer(fromDirectory source: URL, epoch: SourceDateEpoch = .zero, extraEntries: [TarEntry] = [],
                         metadata: TarWriter.ScannedMetadata = .none,
                         detectHardLinks: Bool = true, compressionLevel: Int = 6) throws -> LayerDescriptor {
        let entries = try TarWriter.entries(inDirectory: source, metadata: metadata) + extraEntries
        return try addLayer(entries: entries, epoch: epoch, detectHardLinks: detectHardLinks,
                            compressionLevel: compressionLevel)
    }

    /// Archives entries (in canonical order, see `TarWriter.canonicalOrder`) into a gzip layer blob.
    public func addLayer(entries: [TarEntry], epoch: SourceDateEpoch = .zero, detectHardLinks: Bool = true,
                         compressionLevel: Int = 6) throws -> LayerDescriptor {
        let ordered = try TarWriter.canonicalOrder(entries, detectHardLinks: detectHardLinks)
        var summary: GzipSummary?
        try storeBlob { file in
            let gzip = try GzipWriter(sink: file, level: compressionLevel)
            let tar = TarWriter(sink: gzip, sourceDateEpoch: epoch)
            for entry in ordered { try tar.append(entry) }
            try tar.finish()
            let result = try gzip.finish()
            summary = result
            return result.compressedDigest
        }
        let s = summary!
        return LayerDescriptor(
            descriptor: Descriptor(mediaType: MediaType.layerTarGzip, digest: s.compressedDigest, size: s.compressedSize),
            diffID: s.uncompressedDigest,
            uncompressedSize: s.uncompressedSize
        )
    }

    // MARK: Blobs

    /// Stores bytes as a blob and returns its descriptor.
    @discardableResult
    public func addBlob(_ bytes: [UInt8], mediaType: String, annotations: [String: String]? = nil) throws -> Descriptor {
        let (digest, size) = try writeBlob { try $0.write(bytes) }
        return Descriptor(mediaType: mediaType, digest: digest, size: size, annotations: annotations)
    }

    /// Streams a blob into `blobs/` through `produce`, then renames it to `blobs/sha256/<hex>`.
    /// Returns the sha256 digest and size.
    public func writeBlob(_ produce: (any ByteSink) throws -> Void) throws -> (digest: String, size: Int64) {
        var size: Int64 = 0
        let digest = try storeBlob { file in
            let digester = DigestingSink(forwardingTo: file)
            try produce(digester)
            size = digester.count
            return digester.digest
        }
        return (digest, size)
    }

    /// Writes a temporary file in `blobs/` through `produce`, which returns the content's sha256 digest,
    /// and renames it to `blobs/sha256/<hex>` (replacing an identical blob if present).
    @discardableResult
    private func storeBlob(_ produce: (FileSink) throws -> String) throws -> String {
        let temporary = blobsPath + "/.tmp-" + UUID().uuidString
        let file = try FileSink(creatingFileAt: temporary)
        var renamed = false
        defer {
            try? file.close()
            if !renamed { POSIX.removeFile(temporary) }
        }
        let digest = try produce(file)
        try file.close()
        try POSIX.renameItem(temporary, blobsPath + "/sha256/" + OCIDigest.hex(of: digest))
        renamed = true
        return digest
    }

    // MARK: Images

    /// Writes the config and manifest blobs of an image and tags it in `index.json`.
    ///
    /// `config.rootfs` is replaced by the layers' diff IDs. The returned descriptor is the `index.json` entry:
    /// the manifest's digest and size, the tag annotation and the platform from `config`.
    /// - Parameters:
    ///   - tag: value of `org.opencontainers.image.ref.name`: letters, digits and `-._:@/+`, not empty.
    ///   - annotations: manifest annotations.
    @discardableResult
    public func writeImage(layers: [LayerDescriptor], config: ImageConfiguration, tag: String,
                           annotations: [String: String]? = nil) throws -> Descriptor {
        try OCILayoutWriter.validateTag(tag)
        var config = config
        config.rootfs = RootFS(diffIDs: layers.map(\.diffID))
        let configDescriptor = try addBlob(try CanonicalJSON.encode(config), mediaType: MediaType.imageConfig)
        let manifest = ImageManifest(config: configDescriptor, layers: layers.map(\.descriptor), annotations: annotations)
        let manifestDescriptor = try addBlob(try CanonicalJSON.encode(manifest), mediaType: MediaType.imageManifest)
        var entry = manifestDescriptor
        entry.annotations = [AnnotationKey.refName: tag]
        entry.platform = config.platform
        var updated = index
        if let existing = updated.manifests.firstIndex(where: { $0.annotations?[AnnotationKey.refName] == tag }) {
            updated.manifests[existing] = entry
        } else {
            updated.manifests.append(entry)
        }
        try OCILayoutWriter.writeAtomically(try CanonicalJSON.encode(updated), to: directory.path + "/index.json")
        index = updated
        return entry
    }

    /// Checks a tag against the `org.opencontainers.image.ref.name` grammar:
    /// components of `[A-Za-z0-9]+` joined by one of `-._:@/+` or by `--`.
    static func validateTag(_ tag: String) throws {
        var separatorRun: [UInt8] = []
        var sawAlphanumeric = false
        for byte in tag.utf8 {
            let alphanumeric = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            if alphanumeric {
                if !separatorRun.isEmpty {
                    let valid = (separatorRun.count == 1 && "-._:@/+".utf8.contains(separatorRun[0]))
                        || separatorRun == Array("--".utf8)
                    guard valid, sawAlphanumeric else { throw OCIImageError.invalidTag(tag) }
                    separatorRun.removeAll()
                }
                sawAlphanumeric = true
            } else {
                separatorRun.append(byte)
            }
        }
        guard sawAlphanumeric, separatorRun.isEmpty else { throw OCIImageError.invalidTag(tag) }
    }

    static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let temporary = path + ".tmp-" + UUID().uuidString
        let file = try FileSink(creatingFileAt: temporary)
        do {
            try file.write(bytes)
            try file.close()
            try POSIX.renameItem(temporary, path)
        } catch {
            try? file.close()
            POSIX.removeFile(temporary)
            throw error
        }
    }
}
