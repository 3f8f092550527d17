import Foundation

/// One entry of a tar archive: a path inside the image plus what lives there.
///
/// Paths are relative to the image root: a leading "/" or "./" is dropped, "." components and repeated
/// slashes are removed, and a ".." component is rejected. The archive writes directories with a trailing "/".
/// Timestamps are never recorded; owners are 0:0 and there are no extended attributes unless an entry carries
/// them (root filesystems built from packages do, see `TarWriter.entries(inDirectory:metadata:)`).
public struct TarEntry: Sendable, Hashable {
    /// What an entry is.
    public enum Kind: Sendable, Hashable {
        case regularFile(FileContent)
        case directory
        /// A symbolic link; the target is stored as given (it may be absolute or contain "..").
        case symlink(target: String)
        /// A hard link to an earlier entry of the same archive (a normalized archive path).
        case hardLink(target: String)
        case characterDevice(major: UInt32, minor: UInt32)
        case blockDevice(major: UInt32, minor: UInt32)
        case fifo
    }

    /// Where a regular file's bytes come from.
    public enum FileContent: Sendable, Hashable {
        /// Bytes held in memory.
        case bytes([UInt8])
        /// A file on disk of the given size, read in chunks when the archive is written.
        /// Writing fails if the file's size no longer matches.
        case file(path: String, size: Int64)

        /// Number of content bytes.
        public var size: Int64 {
            switch self {
            case .bytes(let b): Int64(b.count)
            case .file(_, let size): size
            }
        }
    }

    /// The normalized archive path (no leading "/" or "./", no trailing "/").
    public let path: String
    /// What the entry is.
    public var kind: Kind
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    public var mode: UInt32 {
        didSet { mode &= 0o7777 }
    }
    /// Numeric owner (uid) recorded in the archive; 0 unless set.
    public var owner: UInt32 = 0
    /// Numeric group (gid) recorded in the archive; 0 unless set.
    public var group: UInt32 = 0
    /// Extended attributes (for example `security.capability`), written as PAX `SCHILY.xattr.` records in name order.
    public var xattrs: [String: [UInt8]] = [:]
    /// For files scanned from disk with more than one link: identifies the inode, for hard link detection.
    var inode: InodeKey?

    struct InodeKey: Sendable, Hashable {
        var device: UInt64
        var inode: UInt64
    }

    /// Creates an entry. Throws `OCIImageError.invalidPath` for an empty path, a ".." component or a NUL byte.
    public init(path: String, kind: Kind, mode: UInt32) throws {
        self.path = try TarEntry.normalize(path)
        if case .hardLink(let target) = kind {
            self.kind = .hardLink(target: try TarEntry.normalize(target))
        } else {
            if case .symlink(let target) = kind, target.isEmpty || target.utf8.contains(0) {
                throw OCIImageError.invalidPath(target, reason: "invalid symlink target")
            }
            self.kind = kind
        }
        self.mode = mode & 0o7777
    }

    /// A regular file with in-memory content.
    public static func file(_ path: String, contents: [UInt8], mode: UInt32 = 0o644) throws -> TarEntry {
        try TarEntry(path: path, kind: .regularFile(.bytes(contents)), mode: mode)
    }

    /// A regular file with in-memory UTF-8 text.
    public static func file(_ path: String, contents: String, mode: UInt32 = 0o644) throws -> TarEntry {
        try file(path, contents: Array(contents.utf8), mode: mode)
    }

    /// A regular file whose bytes are streamed from `source` (symlinks followed) when the archive is written.
    /// - Parameter mode: permission bits; nil keeps the source file's.
    public static func file(_ path: String, copying source: URL, mode: UInt32? = nil) throws -> TarEntry {
        let status = try POSIX.status(source.path)
        guard status.fileType == POSIX.typeRegular else {
            throw OCIImageError.invalidEntries("\(source.path) is not a regular file")
        }
        return try TarEntry(path: path, kind: .regularFile(.file(path: source.path, size: status.size)),
                            mode: mode ?? status.mode)
    }

    /// A directory.
    public static func directory(_ path: String, mode: UInt32 = 0o755) throws -> TarEntry {
        try TarEntry(path: path, kind: .directory, mode: mode)
    }

    /// A symbolic link (mode 0777).
    public static func symlink(_ path: String, target: String) throws -> TarEntry {
        try TarEntry(path: path, kind: .symlink(target: target), mode: 0o777)
    }

    /// A hard link to `target`, which must come earlier in the archive.
    public static func hardLink(_ path: String, target: String, mode: UInt32 = 0o644) throws -> TarEntry {
        try TarEntry(path: path, kind: .hardLink(target: target), mode: mode)
    }

    /// A character device node.
    public static func characterDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o666) throws -> TarEntry {
        try TarEntry(path: path, kind: .characterDevice(major: major, minor: minor), mode: mode)
    }

    /// A block device node.
    public static func blockDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o660) throws -> TarEntry {
        try TarEntry(path: path, kind: .blockDevice(major: major, minor: minor), mode: mode)
    }

    /// A named pipe.
    public static func fifo(_ path: String, mode: UInt32 = 0o644) throws -> TarEntry {
        try TarEntry(path: path, kind: .fifo, mode: mode)
    }

    /// True for directories.
    public var isDirectory: Bool {
        if case .directory = kind { return true }
        return false
    }

    /// The name as written in the archive: the path, plus "/" for directories.
    public var archiveName: String { isDirectory ? path + "/" : path }

    /// Normalizes an archive path: drops a leading "/", "." components and empty components;
    /// rejects "..", NUL bytes and paths that end up empty.
    public static func normalize(_ path: String) throws -> String {
        if path.utf8.contains(0) { throw OCIImageError.invalidPath(path, reason: "contains a NUL byte") }
        var components: [Substring] = []
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            if component == "." { continue }
            if component == ".." { throw OCIImageError.invalidPath(path, reason: "contains a \"..\" component") }
            components.append(component)
        }
        if components.isEmpty { throw OCIImageError.invalidPath(path, reason: "empty path") }
        return components.joined(separator: "/")
    }
}
