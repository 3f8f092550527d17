import ContainerdAPI
import Foundation
import GRPCCore
import NIOCore
import OCIImage
import OCIRegistry
import Synchronization
import MicroVMCore

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

    /// Writes a blob whose bytes `produce` yields from a given offset on, committing it under
    /// `expected`'s digest with `labels`. A blob the store already has counts as written.
    ///
    /// When the connection to containerd drops mid-write, the write resumes on a new connection from
    /// the offset containerd reports for the ingest (`produce` is called again with that offset).
    /// This matters for large layers: containerd's gRPC server sends a flow-control PING for nearly
    /// every burst of data it receives, and swift-nio-http2 closes a connection that receives more
    /// than 200 PING/SETTINGS frames in 30 s (`ExcessiveControlFrames`), which a fast upload of some
    /// tens of MB reaches. Up to `maxStalls` attempts in a row that make no progress end the write.
    func writeContent(
        expected: Descriptor, labels: [String: String], lease: String?, maxStalls: Int = 4,
        produce: @escaping @Sendable (_ offset: Int64, _ emit: @Sendable (ByteBuffer) async throws -> Void) async throws -> Void
    ) async throws {
        // One ingest ref per blob write, kept across resumptions. Leftovers belong to the VM's lease.
        let ref = "lm-ingest-\(Digest.hex(expected.digest).prefix(16))-\(UUID().uuidString.prefix(8))"
        let progress = OffsetBox()
        var stalls = 0
        while true {
            let before = await progress.value
            do {
                try await writeAttempt(ref: ref, expected: expected, labels: labels, lease: lease, progress: progress, produce: produce)
                return
            } catch let e as RPCError where e.isAlreadyExists {
                if !labels.isEmpty { try await setContentLabels(expected.digest, labels) }
                return
            } catch let e as RPCError where e.code == .unavailable {
                let reached = await progress.value
                stalls = reached > before ? 0 : stalls + 1
                guard stalls < maxStalls else {
                    let cause = e.cause.map { " (cause: \(String(reflecting: $0)))" } ?? ""
                    throw AgentError(.unavailable, "containerd at \(socketPath) is unreachable (content write of \(expected.digest) at \(reached) of \(expected.size) bytes): \(e.message)\(cause)")
                }
                logger.info("containerd connection dropped during a content write; resuming", metadata: [
                    "digest": "\(expected.digest)", "offset": "\(reached)", "size": "\(expected.size)", "error": "\(e.message)",
                ])
                try await Task.sleep(for: .milliseconds(100 << min(stalls, 4)))
            }
        }
    }

    /// One Write stream: `stat` the ingest to learn where containerd stands, send the rest, commit.
    private func writeAttempt(
        ref: String, expected: Descriptor, labels: [String: String], lease: String?, progress: OffsetBox,
        produce: @escaping @Sendable (_ offset: Int64, _ emit: @Sendable (ByteBuffer) async throws -> Void) async throws -> Void
    ) async throws {
        let (startOffsets, startContinuation) = AsyncStream.makeStream(of: Int64.self)
        // Errors of the request stream come in two kinds. The stream's own (a write on a connection that
        // dropped throws NIO's "I/O on closed channel", not an RPCError) mean containerd is to be retried.
        // The source's (the registry's, a wrong size) are thrown as they are, unretried: gRPC would
        // report them as the stream closing (UNAVAILABLE).
        let streamFailure = ErrorBox()
        let sourceFailure = ErrorBox()
        do {
            // Fails fast when containerd is gone; after a dropped connection the caller waits a little and retries.
            try await content.write(metadata: metadata(lease: lease), options: Self.options(timeout: .seconds(3600))) { writer in
                let send: @Sendable (Containerd_Services_Content_V1_WriteContentRequest) async throws -> Void = { message in
                    do { try await writer.write(message) } catch {
                        streamFailure.set(error)
                        throw error
                    }
                }
                do {
                    try await send(.with {
                        $0.action = .stat
                        $0.ref = ref
                        $0.total = expected.size
                        $0.expected = expected.digest
                    })
                    var starts = startOffsets.makeAsyncIterator()
                    guard let start = await starts.next() else { throw RPCError(code: .unavailable, message: "no answer to the ingest stat") }
                    await progress.set(start)
                    if start < expected.size {
                        try await produce(start) { buffer in
                            var buffer = buffer
                            // Keep each message well under containerd's 16 MiB limit.
                            while buffer.readableBytes > 0 {
                                let n = min(buffer.readableBytes, 1 << 20)
                                let bytes = buffer.readData(length: n)!
                                let offset = await progress.value
                                guard offset + Int64(n) <= expected.size else {
                                    throw RegistryError(message: "blob \(expected.digest): more than the expected \(expected.size) bytes")
                                }
                                try await send(.with {
                                    $0.action = .write
                                    $0.ref = ref
                                    $0.total = expected.size
                                    $0.expected = expected.digest
                                    $0.offset = offset
                                    $0.data = bytes
                                })
                                await progress.set(offset + Int64(n))
                            }
                        }
                    }
                    let written = await progress.value
                    guard written == expected.size else {
                        throw RegistryError(message: "blob \(expected.digest): got \(written) bytes, expected \(expected.size)")
                    }
                    try await send(.with {
                        $0.action = .commit
                        $0.ref = ref
                        $0.total = expected.size
                        $0.expected = expected.digest
                        $0.offset = written
                        $0.labels = labels
                    })
                } catch {
                    // gRPC cancels the request side when the response side fails first: not the source's fault.
                    if streamFailure.value == nil && !(error is RPCError) && !(error is CancellationError) { sourceFailure.set(error) }
                    throw error
                }
            } onResponse: { response in
                defer { startContinuation.finish() }
                var first = true
                for try await r in response.messages {
                    if first { startContinuation.yield(r.offset); first = false }
                    if r.action == .commit { return }
                }
            }
        } catch {
            if let source = sourceFailure.value { throw source }
            if error is RPCError || Task.isCancelled { throw error }
            // The connection went away under the stream (or took the response side with it).
            let cause = streamFailure.value ?? error
            throw RPCError(code: .unavailable, message: "content write stream ended: \(cause)", cause: cause)
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

/// The first error recorded (of a write's source, or of its gRPC stream).
final class ErrorBox: Sendable {
    let stored = Mutex<(any Error)?>(nil)
    func set(_ e: any Error) { stored.withLock { if $0 == nil { $0 = e } } }
    var value: (any Error)? { stored.withLock { $0 } }
}

/// Bytes of a blob that containerd has (as far as this writer knows).
actor OffsetBox {
    var value: Int64 = 0
    func set(_ v: Int64) { value = v }
}
