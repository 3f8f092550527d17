import Foundation
import MicroVMCore
import OCIRegistry

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
    /// `progress` hears about each blob ("sent" or "already there").
    public func push(layout directory: String, tag: String, to target: ImageReference, progress: @Sendable (String) -> Void = { _ in }) async throws -> String {
        func blobPath(_ digest: String) -> String { "\(directory)/blobs/\(digest.replacingOccurrences(of: ":", with: "/"))" }
        guard let indexData = FileManager.default.contents(atPath: "\(directory)/index.json") else {
            throw ImageBuildError("\(directory) is not an OCI image layout (no index.json)")
        }
        let index = try JSONDecoder().decode(Index.self, from: indexData)
        guard let entry = index.manifests.first(where: { $0.annotations?["org.opencontainers.image.ref.name"] == tag }) else {
            throw ImageBuildError("the layout \(directory) has no tag \(tag)")
        }
        guard let manifestData = FileManager.default.contents(atPath: blobPath(entry.digest)) else {
            throw ImageBuildError("the layout \(directory) lacks its manifest blob \(entry.digest)")
        }
        let manifest = try JSONDecoder().decode(Manifest.self, from: manifestData)
        for blob in manifest.layers + [manifest.config] {
            let sent = try await client.pushBlob(target, digest: blob.digest, size: blob.size, file: blobPath(blob.digest))
            progress("\(blob.digest): \(sent ? "sent \(blob.size) bytes" : "already there")")
        }
        let digest = try await client.pushManifest(target, mediaType: entry.mediaType, data: manifestData)
        progress("manifest \(digest) -> \(target)")
        return digest
    }
}
