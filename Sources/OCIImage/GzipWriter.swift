import CZlib
import Crypto

/// Digests and sizes of a finished gzip stream.
public struct GzipSummary: Sendable, Hashable {
    /// `sha256:<hex>` of the gzip bytes (the OCI layer digest).
    public var compressedDigest: String
    /// Number of gzip bytes.
    public var compressedSize: Int64
    /// `sha256:<hex>` of the uncompressed bytes (the OCI `diff_id`).
    public var uncompressedDigest: String
    /// Number of uncompressed bytes.
    public var uncompressedSize: Int64
}

/// Streaming gzip compression on zlib that hashes both sides as it goes.
///
/// The gzip header is fixed: no file name, no comment, mtime 0, OS byte 3 (Unix) on every platform, XFL as zlib
/// derives it from the level. The compressed bytes are deterministic for a given zlib build, level and input; the
/// uncompressed digest (`diff_id`) depends on the input only.
///
/// Write with `write(_:)` (it is a `ByteSink`, so a `TarWriter` can feed it directly), then call `finish()`.
public final class GzipWriter: ByteSink {
    /// The compression level, 0 (store) through 9 (best).
    public let level: Int

    private let sink: any ByteSink
    private let stream: UnsafeMutablePointer<z_stream>
    private let header: UnsafeMutablePointer<gz_header>
    private let output: UnsafeMutableRawBufferPointer
    private var compressedHasher = SHA256()
    private var uncompressedHasher = SHA256()
    private var compressedSize: Int64 = 0
    private var uncompressedSize: Int64 = 0
    private var ended = false
    private static let outputCapacity = 128 * 1024

    /// - Parameters:
    ///   - sink: receives the gzip bytes.
    ///   - level: zlib compression level, 0...9 (default 6, zlib's own default).
    public init(sink: any ByteSink, level: Int = 6) throws {
        guard (0...9).contains(level) else {
            throw OCIImageError.zlib(code: Z_STREAM_ERROR, message: "compression level \(level) is not in 0...9")
        }
        self.sink = sink
        self.level = level
        // zlib keeps pointers to the stream and header, so both live at fixed addresses.
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        header = .allocate(capacity: 1)
        header.initialize(to: gz_header())
        header.pointee.os = 3 // Unix, whatever the build platform
        output = .allocate(byteCount: GzipWriter.outputCapacity, alignment: 16)

        // windowBits 15 + 16 selects the gzip wrapper; memLevel 8 is zlib's default.
        var rc = deflateInit2_(stream, Int32(level), Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
                               ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        if rc == Z_OK {
            rc = deflateSetHeader(stream, header)
            if rc != Z_OK { deflateEnd(stream) }
        }
        guard rc == Z_OK else {
            let message = GzipWriter.message(stream)
            stream.deinitialize(count: 1); stream.deallocate()
            header.deinitialize(count: 1); header.deallocate()
            output.deallocate()
            throw OCIImageError.zlib(code: rc, message: message)
        }
        resetOutput()
    }

    deinit {
        if !ended { deflateEnd(stream) }
        stream.deinitialize(count: 1); stream.deallocate()
        header.deinitialize(count: 1); header.deallocate()
        output.deallocate()
    }

    /// Compresses a chunk.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !ended else { throw OCIImageError.alreadyFinished }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        uncompressedHasher.update(bufferPointer: bytes)
        uncompressedSize += Int64(bytes.count)
        var offset = 0
        while offset < bytes.count {
            // avail_in is 32 bits wide.
            let count = min(bytes.count - offset, Int(UInt32.max / 2))
            stream.pointee.next_in = UnsafeMutablePointer(mutating: (base + offset).assumingMemoryBound(to: Bytef.self))
            stream.pointee.avail_in = uInt(count)
            while stream.pointee.avail_in > 0 {
                if stream.pointee.avail_out == 0 { try flushOutput() }
                let rc = deflate(stream, Z_NO_FLUSH)
                guard rc == Z_OK else { throw OCIImageError.zlib(code: rc, message: GzipWriter.message(stream)) }
            }
            offset += count
        }
        stream.pointee.next_in = nil
    }

    /// Ends the gzip stream, writes the remaining bytes to the sink and returns the digests.
    @discardableResult
    public func finish() throws -> GzipSummary {
        guard !ended else { throw OCIImageError.alreadyFinished }
        while true {
            if stream.pointee.avail_out == 0 { try flushOutput() }
            let rc = deflate(stream, Z_FINISH)
            if rc == Z_STREAM_END { break }
            guard rc == Z_OK || rc == Z_BUF_ERROR else {
                throw OCIImageError.zlib(code: rc, message: GzipWriter.message(stream))
            }
        }
        try flushOutput()
        deflateEnd(stream)
        ended = true
        return GzipSummary(
            compressedDigest: OCIDigest.string(compressedHasher.finalize()),
            compressedSize: compressedSize,
            uncompressedDigest: OCIDigest.string(uncompressedHasher.finalize()),
            uncompressedSize: uncompressedSize
        )
    }

    private func resetOutput() {
        stream.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(output.count)
    }

    private func flushOutput() throws {
        let produced = output.count - Int(stream.pointee.avail_out)
        if produced > 0 {
            let chunk = UnsafeRawBufferPointer(rebasing: output[0..<produced])
            compressedHasher.update(bufferPointer: chunk)
            compressedSize += Int64(produced)
            try sink.write(chunk)
        }
        resetOutput()
    }

    private static func message(_ stream: UnsafeMutablePointer<z_stream>) -> String {
        stream.pointee.msg.map { String(cString: $0) } ?? "no message"
    }
}
