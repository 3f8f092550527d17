import Foundation

/// Writes a reproducible POSIX tar stream (ustar headers, PAX extended headers when needed) to a `ByteSink`.
///
/// Every entry gets the same metadata apart from its name, type, permission bits, size, link target and
/// device numbers:
/// - mtime = `sourceDateEpoch`; no atime/ctime (no PAX time records).
/// - numeric uid and gid as the entry says (0 unless set), empty user/group names.
/// - mode = permission bits only (`mode & 0o7777`, setuid/setgid/sticky kept).
/// - the entry's extended attributes (none unless set) as PAX `SCHILY.xattr.NAME` records in name order;
///   no ACLs; sockets are skipped.
///
/// A name longer than 100 bytes is split into the ustar prefix/name fields when it can be, otherwise stored in a
/// PAX `path` record; a link target longer than 100 bytes goes into a PAX `linkpath` record, a size of 8 GiB or
/// more into a PAX `size` record. File contents are read in chunks, so archives of any size stream in constant memory.
///
/// `append(_:)` writes entries in the order given. For a reproducible archive use
/// `appendDirectory(_:extraEntries:)` or `append(contentsOf:)` once per archive: they sort all entries by the
/// bytes of their archive names (directories, which end in "/", come before their contents), add missing parent
/// directories (mode 0755) and turn repeated inodes into hard links. Then call `finish()` to write the two
/// zero blocks that end the archive.
public final class TarWriter {
    /// The mtime of every entry.
    public let sourceDateEpoch: SourceDateEpoch
    /// Bytes written to the sink so far.
    public private(set) var bytesWritten: Int64 = 0

    private let sink: any ByteSink
    private var finished = false
    private let readBuffer: UnsafeMutableRawBufferPointer
    private static let blockSize = 512
    private static let readChunk = 256 * 1024
    private static let zeroBlock = [UInt8](repeating: 0, count: 512)

    /// - Parameters:
    ///   - sink: receives the archive.
    ///   - sourceDateEpoch: mtime of every entry; must fit the header (0 through 8^11 - 1).
    public init(sink: any ByteSink, sourceDateEpoch: SourceDateEpoch = .zero) {
        self.sink = sink
        self.sourceDateEpoch = sourceDateEpoch
        self.readBuffer = .allocate(byteCount: TarWriter.readChunk, alignment: 16)
    }

    deinit { readBuffer.deallocate() }

    // MARK: High level

    /// Scans `directory`, merges `extraEntries` (which replace scanned entries with the same path), sorts
    /// everything and appends it. The directory itself is not an entry; symlinks inside it are not followed.
    public func appendDirectory(_ directory: URL, extraEntries: [TarEntry] = [], detectHardLinks: Bool = true) throws {
        let scanned = try TarWriter.entries(inDirectory: directory, metadata: .none)
        try append(contentsOf: scanned + extraEntries, detectHardLinks: detectHardLinks)
    }

    /// Puts `entries` in canonical order (see `canonicalOrder(_:detectHardLinks:)`) and appends them.
    public func append(contentsOf entries: [TarEntry], detectHardLinks: Bool = true) throws {
        for entry in try TarWriter.canonicalOrder(entries, detectHardLinks: detectHardLinks) {
            try append(entry)
        }
    }

    /// Writes a whole archive: entries in canonical order and the end-of-archive blocks.
    public static func write(entries: [TarEntry], to sink: any ByteSink, sourceDateEpoch: SourceDateEpoch = .zero) throws {
        let writer = TarWriter(sink: sink, sourceDateEpoch: sourceDateEpoch)
        try writer.append(contentsOf: entries)
        try writer.finish()
    }

    /// What `entries(inDirectory:metadata:)` records besides names, types, modes and contents.
    public enum ScannedMetadata: Sendable {
        /// Everything owned by 0:0, no extended attributes: for trees staged by the builder itself.
        case none
        /// Numeric uid/gid from disk and the extended attributes in `xattrNames` that are present
        /// (for root filesystems installed from packages, whose files belong to system users and carry
        /// file capabilities).
        case ownersAndXattrs(xattrNames: [String])

        /// Owners plus `security.capability` (file capabilities, as `setcap` writes them).
        public static let ownersAndCapabilities = ScannedMetadata.ownersAndXattrs(xattrNames: ["security.capability"])
    }

    /// The entries of a directory tree (not including the root), unsorted. Regular files are referenced, not
    /// read; symlinks are not followed and get mode 0777; sockets are skipped. Names that are not valid UTF-8
    /// are an error.
    public static func entries(inDirectory directory: URL, metadata: ScannedMetadata = .none) throws -> [TarEntry] {
        let root = directory.path
        let rootStatus = try POSIX.status(root)
        guard rootStatus.fileType == POSIX.typeDirectory else {
            throw OCIImageError.invalidEntries("\(root) is not a directory")
        }
        var result: [TarEntry] = []
        var pending: [(diskPath: String, archivePath: String)] = [(root, "")]
        while let (diskDir, archiveDir) = pending.popLast() {
            for name in try POSIX.directoryNames(diskDir) {
                let diskPath = diskDir.hasSuffix("/") ? diskDir + name : diskDir + "/" + name
                let archivePath = archiveDir.isEmpty ? name : archiveDir + "/" + name
                let st = try POSIX.lstatus(diskPath)
                let kind: TarEntry.Kind
                var inode: TarEntry.InodeKey?
                switch st.fileType {
                case POSIX.typeDirectory:
                    kind = .directory
                    pending.append((diskPath, archivePath))
                case POSIX.typeRegular:
                    kind = .regularFile(.file(path: diskPath, size: st.size))
                    if st.linkCount > 1 { inode = .init(device: st.device, inode: st.inode) }
                case POSIX.typeSymlink:
                    kind = .symlink(target: try POSIX.readLink(diskPath))
                case POSIX.typeCharacter:
                    let (major, minor) = POSIX.splitDevice(st.rdev)
                    kind = .characterDevice(major: major, minor: minor)
                case POSIX.typeBlock:
                    let (major, minor) = POSIX.splitDevice(st.rdev)
                    kind = .blockDevice(major: major, minor: minor)
                case POSIX.typeFIFO:
                    kind = .fifo
                default:
                    continue // sockets and unknown types cannot be archived
                }
                // Symlink permissions mean nothing on Linux and follow the umask on macOS: always 0777.
                let mode: UInt32 = st.fileType == POSIX.typeSymlink ? 0o777 : st.mode
                var entry = try TarEntry(path: archivePath, kind: kind, mode: mode)
                entry.inode = inode
                if case .ownersAndXattrs(let names) = metadata {
                    entry.owner = st.uid
                    entry.group = st.gid
                    if st.fileType != POSIX.typeSymlink {
                        for name in names {
                            if let value = try POSIX.xattr(diskPath, name: name) { entry.xattrs[name] = value }
                        }
                    }
                }
                result.append(entry)
            }
        }
        return result
    }

    /// The order `append(contentsOf:)` writes: later entries replace earlier ones with the same path, missing
    /// parent directories are added (mode 0755), entries are sorted by the UTF-8 bytes of `archiveName`, and —
    /// if `detectHardLinks` — a scanned file whose inode already appeared becomes a hard link to the first path.
    /// Throws if an entry sits below a non-directory or a hard link points to a path not written before it.
    public static func canonicalOrder(_ entries: [TarEntry], detectHardLinks: Bool = true) throws -> [TarEntry] {
        var byPath: [String: TarEntry] = [:]
        byPath.reserveCapacity(entries.count)
        for entry in entries { byPath[entry.path] = entry }
        // Add missing parents.
        for path in Array(byPath.keys) {
            var parent = path
            while let slash = parent.lastIndex(of: "/") {
                parent = String(parent[..<slash])
                if let existing = byPath[parent] {
                    guard existing.isDirectory else {
                        throw OCIImageError.invalidEntries("\(path) is inside \(parent), which is not a directory")
                    }
                    break
                }
                byPath[parent] = try TarEntry.directory(parent)
            }
        }
        var sorted = byPath.values.map { (key: Array($0.archiveName.utf8), entry: $0) }
        sorted.sort { $0.key.lexicographicallyPrecedes($1.key) }
        var result: [TarEntry] = []
        result.reserveCapacity(sorted.count)
        var firstPathOfInode: [TarEntry.InodeKey: String] = [:]
        var written = Set<String>()
        for (_, var entry) in sorted {
            if detectHardLinks, let inode = entry.inode {
                if let first = firstPathOfInode[inode] {
                    entry.kind = .hardLink(target: first)
                } else {
                    firstPathOfInode[inode] = entry.path
                }
            }
            if case .hardLink(let target) = entry.kind {
                guard let targetEntry = byPath[target], written.contains(target) else {
                    throw OCIImageError.invalidEntries("hard link \(entry.path) points to \(target), which is not written before it")
                }
                guard case .regularFile = targetEntry.kind else {
                    throw OCIImageError.invalidEntries("hard link \(entry.path) points to \(target), which is not a regular file")
                }
            }
            entry.inode = nil
            written.insert(entry.path)
            result.append(entry)
        }
        return result
    }

    // MARK: Low level

    /// Writes one entry (header and content) where the archive currently stands; no sorting or checks across entries.
    public func append(_ entry: TarEntry) throws {
        guard !finished else { throw OCIImageError.alreadyFinished }
        let name = Array(entry.archiveName.utf8)
        let meta = HeaderMetadata(owner: entry.owner, group: entry.group, xattrs: entry.xattrs)
        switch entry.kind {
        case .regularFile(let content):
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "0"), mode: entry.mode, size: content.size)
            switch content {
            case .bytes(let bytes):
                try emit(bytes)
            case .file(let path, let size):
                try copyFile(path: path, size: size)
            }
            try pad(content.size)
        case .directory:
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "5"), mode: entry.mode)
        case .symlink(let target):
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "2"), mode: entry.mode, linkName: Array(target.utf8))
        case .hardLink(let target):
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "1"), mode: entry.mode, linkName: Array(target.utf8))
        case .characterDevice(let major, let minor):
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "3"), mode: entry.mode, major: major, minor: minor)
        case .blockDevice(let major, let minor):
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "4"), mode: entry.mode, major: major, minor: minor)
        case .fifo:
            try writeHeader(name: name, meta: meta, type: UInt8(ascii: "6"), mode: entry.mode)
        }
    }

    /// Writes the end of the archive (two 512-byte zero blocks). The sink is not closed.
    public func finish() throws {
        guard !finished else { throw OCIImageError.alreadyFinished }
        try emit(TarWriter.zeroBlock)
        try emit(TarWriter.zeroBlock)
        finished = true
    }

    // MARK: Encoding

    private func emit(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try emit($0) }
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        guard !bytes.isEmpty else { return }
        try sink.write(bytes)
        bytesWritten += Int64(bytes.count)
    }

    private func pad(_ size: Int64) throws {
        let remainder = Int(size % Int64(TarWriter.blockSize))
        if remainder != 0 {
            try TarWriter.zeroBlock.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<(TarWriter.blockSize - remainder)])) }
        }
    }

    private func copyFile(path: String, size: Int64) throws {
        let fd = try POSIX.openForReading(path)
        defer { try? POSIX.closeChecked(fd, path: path) }
        var remaining = size
        while remaining > 0 {
            let want = Int(min(Int64(readBuffer.count), remaining))
            let n = try POSIX.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: readBuffer[0..<want]), path: path)
            if n == 0 { throw OCIImageError.fileChanged(path: path) }
            try emit(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
            remaining -= Int64(n)
        }
        // The file must not have grown either.
        if try POSIX.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: readBuffer[0..<1]), path: path) != 0 {
            throw OCIImageError.fileChanged(path: path)
        }
    }

    private static let maxOctal7: UInt64 = 0o7777777
    private static let maxOctal11: UInt64 = 0o77777777777

    /// Per-entry header fields besides name, type, mode, size, link and device.
    private struct HeaderMetadata {
        var owner: UInt32
        var group: UInt32
        var xattrs: [String: [UInt8]]
    }

    private func writeHeader(name: [UInt8], meta: HeaderMetadata, type: UInt8, mode: UInt32, size: Int64 = 0,
                             linkName: [UInt8] = [], major: UInt32 = 0, minor: UInt32 = 0) throws {
        guard sourceDateEpoch.seconds >= 0, UInt64(sourceDateEpoch.seconds) <= TarWriter.maxOctal11 else {
            throw OCIImageError.valueOutOfRange(field: "mtime", value: sourceDateEpoch.description)
        }
        guard UInt64(major) <= TarWriter.maxOctal7, UInt64(minor) <= TarWriter.maxOctal7 else {
            throw OCIImageError.valueOutOfRange(field: "device number", value: "\(major),\(minor)")
        }
        var records: [(key: String, value: [UInt8])] = []
        var ustarName = name
        var ustarPrefix: [UInt8] = []
        if name.count > 100 {
            if let (prefix, rest) = TarWriter.splitUstarName(name) {
                ustarPrefix = prefix
                ustarName = rest
            } else {
                records.append(("path", name))
                ustarName = TarWriter.truncateUTF8(name, to: 100)
            }
        }
        var ustarLink = linkName
        if linkName.count > 100 {
            records.append(("linkpath", linkName))
            ustarLink = TarWriter.truncateUTF8(linkName, to: 100)
        }
        var ustarSize = UInt64(size)
        if ustarSize > TarWriter.maxOctal11 {
            records.append(("size", Array(String(size).utf8)))
            ustarSize = 0
        }
        guard UInt64(meta.owner) <= TarWriter.maxOctal7, UInt64(meta.group) <= TarWriter.maxOctal7 else {
            throw OCIImageError.valueOutOfRange(field: "uid/gid", value: "\(meta.owner):\(meta.group)")
        }
        for key in meta.xattrs.keys.sorted() {
            guard !key.isEmpty, !key.utf8.contains(0), !key.utf8.contains(UInt8(ascii: "=")) else {
                throw OCIImageError.invalidEntries("invalid extended attribute name \"\(key)\"")
            }
            records.append(("SCHILY.xattr." + key, meta.xattrs[key]!))
        }
        if !records.isEmpty {
            var body: [UInt8] = []
            for record in records { body += TarWriter.paxRecord(key: record.key, value: record.value) }
            var baseName = name
            if baseName.last == UInt8(ascii: "/") { baseName.removeLast() }
            if let slash = baseName.lastIndex(of: UInt8(ascii: "/")) { baseName = Array(baseName[(slash + 1)...]) }
            let paxName = TarWriter.truncateUTF8(Array("PaxHeaders/".utf8) + baseName, to: 100)
            try emit(header(name: paxName, prefix: [], type: UInt8(ascii: "x"), mode: 0o644, size: UInt64(body.count),
                            linkName: [], major: 0, minor: 0))
            try emit(body)
            try pad(Int64(body.count))
        }
        try emit(header(name: ustarName, prefix: ustarPrefix, type: type, mode: mode, size: ustarSize,
                        linkName: ustarLink, major: major, minor: minor, owner: meta.owner, group: meta.group))
    }

    /// One ustar header block.
    private func header(name: [UInt8], prefix: [UInt8], type: UInt8, mode: UInt32, size: UInt64, linkName: [UInt8],
                        major: UInt32, minor: UInt32, owner: UInt32 = 0, group: UInt32 = 0) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: TarWriter.blockSize)
        func put(_ bytes: [UInt8], at offset: Int, width: Int) {
            precondition(bytes.count <= width)
            for (i, b) in bytes.enumerated() { block[offset + i] = b }
        }
        func putOctal(_ value: UInt64, at offset: Int, width: Int) {
            // width - 1 zero-padded octal digits, then NUL.
            var digits = [UInt8](repeating: UInt8(ascii: "0"), count: width - 1)
            var v = value
            var i = width - 2
            while v > 0 && i >= 0 {
                digits[i] = UInt8(ascii: "0") + UInt8(v & 7)
                v >>= 3
                i -= 1
            }
            put(digits, at: offset, width: width)
        }
        put(name, at: 0, width: 100)
        putOctal(UInt64(mode & 0o7777), at: 100, width: 8)
        putOctal(UInt64(owner), at: 108, width: 8) // uid
        putOctal(UInt64(group), at: 116, width: 8) // gid
        putOctal(size, at: 124, width: 12)
        putOctal(UInt64(sourceDateEpoch.seconds), at: 136, width: 12)
        block[156] = type
        put(linkName, at: 157, width: 100)
        put(Array("ustar\0".utf8), at: 257, width: 6)
        put(Array("00".utf8), at: 263, width: 2)
        // uname (265) and gname (297) stay empty.
        putOctal(UInt64(major), at: 329, width: 8)
        putOctal(UInt64(minor), at: 337, width: 8)
        put(prefix, at: 345, width: 155)
        // Checksum: sum of all bytes with the checksum field read as spaces; 6 octal digits, NUL, space.
        for i in 148..<156 { block[i] = UInt8(ascii: " ") }
        let sum = block.reduce(0) { $0 + UInt64($1) }
        putOctal(sum, at: 148, width: 7)
        block[155] = UInt8(ascii: " ")
        return block
    }

    /// Splits a name into ustar prefix (≤ 155 bytes) and name (1...100 bytes) at a "/", keeping the name part as long as possible.
    static func splitUstarName(_ name: [UInt8]) -> (prefix: [UInt8], name: [UInt8])? {
        guard name.count <= 256 else { return nil }
        let slash = UInt8(ascii: "/")
        for i in 0..<name.count where name[i] == slash {
            let restCount = name.count - i - 1
            if restCount > 100 { continue }
            guard i > 0, i <= 155, restCount > 0 else { return nil }
            return (Array(name[..<i]), Array(name[(i + 1)...]))
        }
        return nil
    }

    /// The first bytes of a UTF-8 string, cut at a character boundary.
    static func truncateUTF8(_ bytes: [UInt8], to limit: Int) -> [UInt8] {
        guard bytes.count > limit else { return bytes }
        var end = limit
        while end > 0 && bytes[end] & 0xC0 == 0x80 { end -= 1 }
        return Array(bytes[..<end])
    }

    /// A PAX record "<length> <key>=<value>\n", where length counts the whole record including its own digits.
    static func paxRecord(key: String, value: [UInt8]) -> [UInt8] {
        let rest = 1 + key.utf8.count + 1 + value.count + 1 // " " key "=" value "\n"
        var length = rest + String(rest).utf8.count
        while rest + String(length).utf8.count != length { length = rest + String(length).utf8.count }
        return Array(String(length).utf8) + [UInt8(ascii: " ")] + Array(key.utf8) + [UInt8(ascii: "=")] + value + [UInt8(ascii: "\n")]
    }
}
