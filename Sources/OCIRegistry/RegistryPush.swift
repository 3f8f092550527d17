import AsyncHTTPClient
import Foundation
import MicroVMCore
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Pushing through the Docker Registry HTTP API v2: blobs the registry already has are not
/// re-sent; uploads are monolithic (POST for a location, then PUT with the digest).
extension RegistryClient {
    /// Whether the repository already has the blob.
    public func blobExists(_ ref: ImageReference, digest: String) async throws -> Bool {
        var req = HTTPClientRequest(url: "\(baseURL(ref))/v2/\(ref.repository)/blobs/\(digest)")
        req.method = .HEAD
        let resp = try await send(req, ref: ref, what: "blob \(digest)", push: true, expect: [200, 404])
        return resp.status == .ok
    }

    /// Uploads the file at `path` as the blob `digest` (size bytes), unless the registry has it.
    /// Returns false when the blob was already there. `progress` gets the bytes sent so far.
    @discardableResult
    public func pushBlob(
        _ ref: ImageReference, digest: String, size: Int64, file path: String,
        progress: (@Sendable (Int64) -> Void)? = nil
    ) async throws -> Bool {
        if try await blobExists(ref, digest: digest) { return false }
        var start = HTTPClientRequest(url: "\(baseURL(ref))/v2/\(ref.repository)/blobs/uploads/")
        start.method = .POST
        start.headers.add(name: "Content-Length", value: "0")
        let started = try await send(start, ref: ref, what: "upload of \(digest)", push: true, expect: [202])
        guard let location = started.headers.first(name: "Location") else {
            throw RegistryError(message: "registry \(ref.registry) started an upload for \(ref) without a Location")
        }
        var url = location.hasPrefix("http") ? location : baseURL(ref) + (location.hasPrefix("/") ? "" : "/") + location
        url += (url.contains("?") ? "&" : "?") + "digest=" + (digest.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? digest)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw RegistryError(message: "cannot read \(path) to push it")
        }
        defer { try? handle.close() }
        var put = HTTPClientRequest(url: url)
        put.method = .PUT
        put.headers.add(name: "Content-Type", value: "application/octet-stream")
        // Read as the upload asks for more, so a large layer is never all in memory.
        put.body = .stream(FileChunks(handle: handle, progress: progress), length: .known(size))
        _ = try await send(put, ref: ref, what: "blob \(digest)", timeout: .hours(2), push: true, expect: [201])
        return true
    }

    /// Uploads a small blob from memory (configs).
    @discardableResult
    public func pushBlob(_ ref: ImageReference, data: Data) async throws -> Bool {
        let digest = sha256Digest(data)
        let tmp = NSTemporaryDirectory() + "/lm-blob-\(UUID().uuidString)"
        try data.write(to: URL(fileURLWithPath: tmp))
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        return try await pushBlob(ref, digest: digest, size: Int64(data.count), file: tmp)
    }

    /// Puts a manifest under the reference's tag (or digest). Returns its digest.
    @discardableResult
    public func pushManifest(_ ref: ImageReference, mediaType: String, data: Data) async throws -> String {
        var req = HTTPClientRequest(url: "\(baseURL(ref))/v2/\(ref.repository)/manifests/\(ref.manifestReference)")
        req.method = .PUT
        req.headers.add(name: "Content-Type", value: mediaType)
        req.body = .bytes(ByteBuffer(data: data))
        _ = try await send(req, ref: ref, what: "manifest \(ref.manifestReference)", push: true, expect: [201])
        return sha256Digest(data)
    }
}

/// A file as 1 MiB chunks, read when the consumer asks for the next one; reports bytes read so far.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let handle: FileHandle
    let progress: (@Sendable (Int64) -> Void)?

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle
        let progress: (@Sendable (Int64) -> Void)?
        var sent: Int64 = 0
        mutating func next() async throws -> ByteBuffer? {
            guard let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else { return nil }
            sent += Int64(data.count)
            progress?(sent)
            return ByteBuffer(data: data)
        }
    }

    /// Each iteration reads the file from its start: a request sent again (after a 401) sends it whole.
    func makeAsyncIterator() -> AsyncIterator {
        try? handle.seek(toOffset: 0)
        return AsyncIterator(handle: handle, progress: progress)
    }
}
