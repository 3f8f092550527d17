import Crypto

/// A destination for a stream of bytes. Writers call `write` with chunks in order; a chunk's memory
/// is only valid during the call.
public protocol ByteSink {
    /// Consumes one chunk.
    func write(_ bytes: UnsafeRawBufferPointer) throws
}

extension ByteSink {
    /// Consumes the bytes of an array.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

/// A sink that hands every chunk to a closure.
public struct ClosureSink: ByteSink {
    private let body: (UnsafeRawBufferPointer) throws -> Void

    public init(_ body: @escaping (UnsafeRawBufferPointer) throws -> Void) { self.body = body }

    public func write(_ bytes: UnsafeRawBufferPointer) throws { try body(bytes) }
}

/// A sink that keeps everything in memory. Meant for small archives and tests.
public final class MemorySink: ByteSink {
    /// Everything written so far.
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer) throws { self.bytes.append(contentsOf: bytes) }
}

/// A sink that discards bytes but counts and hashes them (SHA-256), optionally passing them on.
public final class DigestingSink: ByteSink {
    private var hasher = SHA256()
    private let next: (any ByteSink)?
    /// Bytes seen so far.
    public private(set) var count: Int64 = 0

    /// - Parameter next: where to forward the bytes after hashing, if anywhere.
    public init(forwardingTo next: (any ByteSink)? = nil) { self.next = next }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        hasher.update(bufferPointer: bytes)
        count += Int64(bytes.count)
        try next?.write(bytes)
    }

    /// `sha256:<hex>` of the bytes seen so far.
    public var digest: String { OCIDigest.string(hasher.finalize()) }
}

/// A sink writing to a new file (created exclusively, mode 0644 before umask). Call `close()` when done.
public final class FileSink: ByteSink {
    /// The file's path.
    public let path: String
    private var fd: Int32

    /// Creates the file; fails if it already exists.
    public init(creatingFileAt path: String) throws {
        self.path = path
        self.fd = try POSIX.createExclusive(path)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard fd >= 0 else { throw OCIImageError.alreadyFinished }
        try POSIX.writeAll(fd, bytes, path: path)
    }

    /// Closes the file, reporting errors from `close(2)`.
    public func close() throws {
        guard fd >= 0 else { return }
        let d = fd
        fd = -1
        try POSIX.closeChecked(d, path: path)
    }

    deinit {
        if fd >= 0 { try? POSIX.closeChecked(fd, path: path) }
    }
}
