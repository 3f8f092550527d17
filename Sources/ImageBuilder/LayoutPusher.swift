import Foundation
import MicroVMCore
import OCIRegistry
import OCIImage

/// Pushes one tag of an OCI image layout directory to a registry: layers and config first (blobs
/// the registry has are skipped), the manifest last.
public struct LayoutPusher: Sendable {
    public var client: RegistryClient
    public init(client: RegistryClient) { self.client = client }

    struct Index: Decodable {
        struct Entry: Decodable {
            var mediaType: String
            var digest: String
            var size: Int64
            var annotations: [String: String]?
        }
        var manifests: [Entry]
    }

    struct Manifest: Decodable {
        struct Descriptor: Decodable { var digest: String; var size: Int64 }
        var config: Descriptor
        var layers: [Descriptor]
    }

    /// Pushes `tag` of the layout at `directory` to `target`; returns the manifest digest.
    /// `progress` hears about each blob ("sent" or "already there") and, for large ones, every
    /// 10% uploaded.
    public func push(layout directory: String, tag: String, to target: ImageReference, progress: @escaping @Sendable (String) -> Void = { _ in }) async throws -> String {
        func blobPath(_ digest: String) -> String { "\(directory)/blobs/\(digest.replacingOccurrences(of: ":", with: "/"))" }
        guard let indexData = FileManager.default.contents(atPath: "\(directory)/index.json") else {
            throw ImageBuildError("\(directory) is not an OCI image layout (no index.json)")
        }
        guard let index = try? JSONDecoder().decode(Index.self, from: indexData) else {
            throw ImageBuildError("\(directory)/index.json is not an OCI image index")
        }
        guard let entry = index.manifests.first(where: { $0.annotations?["org.opencontainers.image.ref.name"] == tag }) else {
            throw ImageBuildError("the layout \(directory) has no tag \(tag)")
        }
        guard entry.mediaType == MediaType.imageManifest || entry.mediaType == "application/vnd.docker.distribution.manifest.v2+json" else {
            throw ImageBuildError("tag \(tag) of \(directory) is a \(entry.mediaType), not one image manifest (an index of several platforms cannot be pushed by lmctl)")
        }
        guard let manifestData = FileManager.default.contents(atPath: blobPath(entry.digest)) else {
            throw ImageBuildError("the layout \(directory) lacks its manifest blob \(entry.digest)")
        }
        guard let manifest = try? JSONDecoder().decode(Manifest.self, from: manifestData) else {
            throw ImageBuildError("the manifest \(entry.digest) of \(directory) is not an OCI image manifest")
        }
        for blob in manifest.layers + [manifest.config] {
            let reporter = UploadProgress(digest: blob.digest, size: blob.size, report: progress)
            let sent = try await client.pushBlob(target, digest: blob.digest, size: blob.size, file: blobPath(blob.digest)) { reporter.update($0) }
            progress("\(blob.digest): \(sent ? "sent \(blob.size) bytes" : "already there")")
        }
        let digest = try await client.pushManifest(target, mediaType: entry.mediaType, data: manifestData)
        progress("manifest \(digest) -> \(target)")
        return digest
    }
}

/// Turns bytes-read counts into a line per 10% of a blob of 8 MiB or more.
final class UploadProgress: @unchecked Sendable {
    let digest: String, size: Int64, report: @Sendable (String) -> Void
    private var lastTenth: Int64 = 0
    private let lock = NSLock()

    init(digest: String, size: Int64, report: @escaping @Sendable (String) -> Void) {
        (self.digest, self.size, self.report) = (digest, size, report)
    }

    func update(_ sent: Int64) {
        guard size >= 8 << 20 else { return }
        let tenth = sent * 10 / size
        let line: String? = lock.withLock {
            guard tenth > lastTenth, tenth < 10 else { return nil }
            lastTenth = tenth
            return String(format: "uploading %@: %.1f of %.1f MiB", String(digest.prefix(19)), Double(sent) / 1_048_576, Double(size) / 1_048_576)
        }
        if let line { report(line) }
    }
}
