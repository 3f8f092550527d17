import Foundation

/// Read access to an OCI image layout directory: tags, manifests, configs and blobs.
public struct OCILayout: Sendable {
    /// The layout's root.
    public let directory: URL
    /// The parsed `index.json`.
    public let index: ImageIndex

    /// Opens a layout; checks `oci-layout` (version 1.0.0) and parses `index.json`.
    public init(directory: URL) throws {
        self.directory = directory
        let layoutFile = directory.appendingPathComponent("oci-layout")
        let header: ImageLayoutHeader
        do {
            header = try JSONDecoder().decode(ImageLayoutHeader.self, from: Data(contentsOf: layoutFile))
        } catch {
            throw OCIImageError.invalidLayout("cannot read \(layoutFile.path): \(error)")
        }
        guard header.imageLayoutVersion == "1.0.0" else {
            throw OCIImageError.invalidLayout("unsupported imageLayoutVersion \(header.imageLayoutVersion)")
        }
        let indexFile = directory.appendingPathComponent("index.json")
        do {
            index = try JSONDecoder().decode(ImageIndex.self, from: Data(contentsOf: indexFile))
        } catch {
            throw OCIImageError.invalidLayout("cannot read \(indexFile.path): \(error)")
        }
    }

    /// Tag → manifest descriptor, from the `org.opencontainers.image.ref.name` annotations. If several entries
    /// carry the same tag, the last one wins.
    public var tags: [String: Descriptor] {
        var result: [String: Descriptor] = [:]
        for descriptor in index.manifests {
            if let tag = descriptor.annotations?[AnnotationKey.refName] { result[tag] = descriptor }
        }
        return result
    }

    /// The `index.json` entry for a tag.
    public func descriptor(forTag tag: String) throws -> Descriptor {
        guard let descriptor = tags[tag] else { throw OCIImageError.tagNotFound(tag) }
        return descriptor
    }

    /// Where a blob lives: `blobs/<algorithm>/<hex>`. Validates the digest's form, not the file.
    public func blobURL(for digest: String) throws -> URL {
        let (algorithm, hex) = try OCIDigest.parse(digest)
        return directory.appendingPathComponent("blobs").appendingPathComponent(algorithm).appendingPathComponent(hex)
    }

    /// Reads a whole blob and checks its digest. For large layers prefer `blobURL(for:)` and streaming.
    public func readBlob(digest: String) throws -> Data {
        let url = try blobURL(for: digest)
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw OCIImageError.io(operation: "read", path: url.path, message: "\(error)")
        }
        var hasher = try DigestHasher(algorithm: OCIDigest.parse(digest).algorithm)
        data.withUnsafeBytes { hasher.update($0) }
        let actual = hasher.finalize()
        guard actual == digest else { throw OCIImageError.digestMismatch(expected: digest, actual: actual) }
        return data
    }

    /// Reads a blob and checks its size and digest against the descriptor.
    public func readBlob(_ descriptor: Descriptor) throws -> Data {
        let data = try readBlob(digest: descriptor.digest)
        guard Int64(data.count) == descriptor.size else {
            throw OCIImageError.sizeMismatch(digest: descriptor.digest, expected: descriptor.size, actual: Int64(data.count))
        }
        return data
    }

    /// Streams a blob from disk, checking its size and digest without loading it whole.
    public func verifyBlob(_ descriptor: Descriptor) throws {
        let (algorithm, _) = try OCIDigest.parse(descriptor.digest)
        let path = try blobURL(for: descriptor.digest).path
        var hasher = try DigestHasher(algorithm: algorithm)
        let fd = try POSIX.openForReading(path)
        defer { try? POSIX.closeChecked(fd, path: path) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
        defer { buffer.deallocate() }
        var size: Int64 = 0
        while true {
            let n = try POSIX.read(fd, into: buffer, path: path)
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            size += Int64(n)
        }
        guard size == descriptor.size else {
            throw OCIImageError.sizeMismatch(digest: descriptor.digest, expected: descriptor.size, actual: size)
        }
        let actual = hasher.finalize()
        guard actual == descriptor.digest else { throw OCIImageError.digestMismatch(expected: descriptor.digest, actual: actual) }
    }

    /// The manifest a tag points to.
    public func manifest(forTag tag: String) throws -> ImageManifest {
        try manifest(try descriptor(forTag: tag))
    }

    /// Reads and decodes a manifest blob.
    public func manifest(_ descriptor: Descriptor) throws -> ImageManifest {
        try JSONDecoder().decode(ImageManifest.self, from: readBlob(descriptor))
    }

    /// Reads and decodes a manifest's config blob.
    public func configuration(of manifest: ImageManifest) throws -> ImageConfiguration {
        try JSONDecoder().decode(ImageConfiguration.self, from: readBlob(manifest.config))
    }
}
