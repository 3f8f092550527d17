/// Errors thrown by the OCIImage library.
public enum OCIImageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An archive path (or hard link target) is empty, contains "..", a NUL byte, or is not UTF-8.
    case invalidPath(String, reason: String)
    /// A file system operation failed.
    case io(operation: String, path: String, message: String)
    /// A file changed size while it was being archived.
    case fileChanged(path: String)
    /// A value does not fit the tar format (e.g. a device number wider than 21 bits, a negative epoch).
    case valueOutOfRange(field: String, value: String)
    /// Two entries conflict (e.g. a file inside a path that is not a directory, a hard link to a missing entry).
    case invalidEntries(String)
    /// zlib reported an error.
    case zlib(code: Int32, message: String)
    /// A writer was used after `finish()`.
    case alreadyFinished
    /// A digest string is not `<algorithm>:<hex>` for a supported algorithm.
    case invalidDigest(String)
    /// Blob content does not match its descriptor.
    case digestMismatch(expected: String, actual: String)
    /// Blob size does not match its descriptor.
    case sizeMismatch(digest: String, expected: Int64, actual: Int64)
    /// The directory is not a usable OCI image layout.
    case invalidLayout(String)
    /// No manifest in `index.json` carries this tag.
    case tagNotFound(String)
    /// The tag is not a valid `org.opencontainers.image.ref.name`.
    case invalidTag(String)

    public var description: String {
        switch self {
        case let .invalidPath(path, reason): "invalid path \"\(path)\": \(reason)"
        case let .io(operation, path, message): "\(operation) \(path): \(message)"
        case let .fileChanged(path): "\(path) changed while it was being archived"
        case let .valueOutOfRange(field, value): "\(field) \(value) does not fit the tar format"
        case let .invalidEntries(message): "invalid entries: \(message)"
        case let .zlib(code, message): "zlib error \(code): \(message)"
        case .alreadyFinished: "writer used after finish()"
        case let .invalidDigest(digest): "invalid or unsupported digest \"\(digest)\""
        case let .digestMismatch(expected, actual): "digest mismatch: expected \(expected), got \(actual)"
        case let .sizeMismatch(digest, expected, actual): "size mismatch for \(digest): expected \(expected), got \(actual)"
        case let .invalidLayout(message): "invalid OCI image layout: \(message)"
        case let .tagNotFound(tag): "no manifest tagged \"\(tag)\""
        case let .invalidTag(tag): "invalid tag \"\(tag)\""
        }
    }
}
