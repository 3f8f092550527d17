import ContainerdAPI
import Foundation
import GRPCCore
import NIOCore
import OCIImage
import OCIRegistry

/// containerd's content store: info, read, streaming write and labels.
extension ContainerdConnection {
    /// Whether the content store has `digest`.
    func hasContent(_ digest: String) async throws -> Bool {
        try await call("content info") {
            do {
                _ = try await content.info(.with { $0.digest = digest }, metadata: metadata(), options: Self.options())
                return true
            } catch let e as RPCError where e.isNotFound {
                return false
            }
        }
    }

    /// Reads a whole (small) blob.
    func readContent(_ digest: String) async throws -> Data {
        try await call("content read") {
            try await content.read(.with { $0.digest = digest }, metadata: metadata(), options: Self.options()) { response in
                var data = Data()
                for try await chunk in response.messages { data.append(chunk.data) }
                return data
            }
        }
    }

    /// Writes a blob whose bytes `produce` yields, committing it under `expected`'s digest with
    /// `labels`. A blob the store already has counts as written.
    func writeContent(
        expected: Descriptor, labels: [String: String], lease: String?,
        produce: @escaping @Sendable (_ emit: @Sendable (ByteBuffer) async throws -> Void) async throws -> Void
    ) async throws {
        // One ingest per attempt: containerd 1.6 appends to a partial ingest of the same ref
        // instead of starting over. Leftovers belong to the VM's lease and go with it.
        let ref = "lm-ingest-\(Digest.hex(expected.digest).prefix(16))-\(UUID().uuidString.prefix(8))"
        do {
            try await call("content write") {
                try await content.write(metadata: metadata(lease: lease), options: Self.options(timeout: .seconds(3600))) { writer in
                    let offset = OffsetBox()
                    try await produce { buffer in
                        var buffer = buffer
                        // Keep each message well under containerd's 16 MiB limit.
                        while buffer.readableBytes > 0 {
                            let n = min(buffer.readableBytes, 1 << 20)
                            let bytes = buffer.readData(length: n)!
                            let start = await offset.advance(by: Int64(n))
                            try await writer.write(.with {
                                $0.action = .write
                                $0.ref = ref
                                $0.total = expected.size
                                $0.expected = expected.digest
                                $0.offset = start
                                $0.data = bytes
                            })
                        }
                    }
                    let written = await offset.value
                    guard written == expected.size else {
                        throw RegistryError(message: "blob \(expected.digest): got \(written) bytes, expected \(expected.size)")
                    }
                    try await writer.write(.with {
                        $0.action = .commit
                        $0.ref = ref
                        $0.total = expected.size
                        $0.expected = expected.digest
                        $0.offset = written
                        $0.labels = labels
                    })
                } onResponse: { response in
                    for try await r in response.messages where r.action == .commit { return }
                }
            }
        } catch let e as RPCError where e.isAlreadyExists {
            if !labels.isEmpty { try await setContentLabels(expected.digest, labels) }
        }
    }

    /// Sets (adds or replaces) labels on a blob.
    func setContentLabels(_ digest: String, _ labels: [String: String]) async throws {
        try await call("content update") {
            _ = try await content.update(.with {
                $0.info.digest = digest
                $0.info.labels = labels
                $0.updateMask.paths = labels.keys.sorted().map { "labels.\($0)" }
            }, metadata: metadata(), options: Self.options())
        }
    }
}

actor OffsetBox {
    var value: Int64 = 0
    func advance(by n: Int64) -> Int64 {
        defer { value += n }
        return value
    }
}
