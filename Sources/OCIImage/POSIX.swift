#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import CXattr

/// Thin helpers over the POSIX calls the archiver needs (lstat, readdir, read, write).
enum POSIX {
    static let typeMask: UInt32 = 0o170000
    static let typeDirectory: UInt32 = 0o040000
    static let typeRegular: UInt32 = 0o100000
    static let typeSymlink: UInt32 = 0o120000
    static let typeCharacter: UInt32 = 0o020000
    static let typeBlock: UInt32 = 0o060000
    static let typeFIFO: UInt32 = 0o010000
    static let typeSocket: UInt32 = 0o140000

    /// The parts of `struct stat` the archiver uses.
    struct Status {
        var mode: UInt32
        var size: Int64
        var device: UInt64
        var inode: UInt64
        var linkCount: UInt64
        var rdev: UInt64
        var uid: UInt32
        var gid: UInt32

        var fileType: UInt32 { mode & POSIX.typeMask }
    }

    static var errno: Int32 {
        #if canImport(Glibc)
        return Glibc.errno
        #elseif canImport(Musl)
        return Musl.errno
        #else
        return Darwin.errno
        #endif
    }

    static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }

    static func ioError(_ operation: String, _ path: String, _ code: Int32 = POSIX.errno) -> OCIImageError {
        .io(operation: operation, path: path, message: errorText(code))
    }

    private static func status(from st: stat) -> Status {
        Status(
            mode: UInt32(st.st_mode),
            size: Int64(st.st_size),
            device: UInt64(truncatingIfNeeded: st.st_dev),
            inode: UInt64(truncatingIfNeeded: st.st_ino),
            linkCount: UInt64(truncatingIfNeeded: st.st_nlink),
            rdev: UInt64(truncatingIfNeeded: st.st_rdev),
            uid: UInt32(st.st_uid),
            gid: UInt32(st.st_gid)
        )
    }

    /// `lstat(2)`: does not follow a final symlink.
    static func lstatus(_ path: String) throws -> Status {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw ioError("lstat", path) }
        return status(from: st)
    }

    /// `stat(2)`: follows symlinks.
    static func status(_ path: String) throws -> Status {
        var st = stat()
        guard stat(path, &st) == 0 else { throw ioError("stat", path) }
        return status(from: st)
    }

    /// Major and minor numbers of a device id, as the host encodes them.
    static func splitDevice(_ dev: UInt64) -> (major: UInt32, minor: UInt32) {
        #if canImport(Darwin)
        return (UInt32((dev >> 24) & 0xff), UInt32(dev & 0xff_ffff))
        #else
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        return (UInt32(truncatingIfNeeded: major), UInt32(truncatingIfNeeded: minor))
        #endif
    }

    /// An extended attribute's value, nil when the file does not have it (or the filesystem has none).
    static func xattr(_ path: String, name: String) throws -> [UInt8]? {
        #if canImport(Darwin)
        return nil
        #else
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            let n = lgetxattr(path, name, &buffer, capacity)
            if n >= 0 { return Array(buffer[0..<n]) }
            switch POSIX.errno {
            case ENODATA, ENOTSUP: return nil
            case ERANGE: capacity *= 16
            case let code: throw ioError("getxattr \(name)", path, code)
            }
        }
        #endif
    }

    /// The target of a symlink.
    static func readLink(_ path: String) throws -> String {
        var capacity = 4096
        while true {
            var buffer = [CChar](repeating: 0, count: capacity)
            let n = readlink(path, &buffer, capacity)
            guard n >= 0 else { throw ioError("readlink", path) }
            if n < capacity {
                let bytes = buffer[0..<n].map { UInt8(bitPattern: $0) }
                guard let target = String(validating: bytes, as: UTF8.self) else {
                    throw OCIImageError.invalidPath(path, reason: "symlink target is not valid UTF-8")
                }
                return target
            }
            capacity *= 4
        }
    }

    /// Names in a directory, without "." and "..", in readdir order.
    static func directoryNames(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw ioError("opendir", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while true {
            // readdir returns NULL both at the end and on error; errno tells them apart.
            setErrno(0)
            guard let entry = readdir(dir) else {
                let code = POSIX.errno
                if code != 0 { throw ioError("readdir", path, code) }
                break
            }
            let name: String? = withUnsafePointer(to: &entry.pointee.d_name) { tuple in
                tuple.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: tuple.pointee)) {
                    String(validatingCString: $0)
                }
            }
            guard let name else {
                throw OCIImageError.invalidPath(path, reason: "a name in this directory is not valid UTF-8")
            }
            if name == "." || name == ".." { continue }
            names.append(name)
        }
        return names
    }

    private static func setErrno(_ value: Int32) {
        #if canImport(Glibc)
        Glibc.errno = value
        #elseif canImport(Musl)
        Musl.errno = value
        #else
        Darwin.errno = value
        #endif
    }

    static func openForReading(_ path: String) throws -> Int32 {
        while true {
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            if fd >= 0 { return fd }
            if POSIX.errno == EINTR { continue }
            throw ioError("open", path)
        }
    }

    /// Creates a new file; fails if it exists.
    static func createExclusive(_ path: String, mode: UInt32 = 0o644) throws -> Int32 {
        while true {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode))
            if fd >= 0 { return fd }
            if POSIX.errno == EINTR { continue }
            throw ioError("create", path)
        }
    }

    /// Reads up to `buffer.count` bytes; 0 means end of file.
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws -> Int {
        while true {
            #if canImport(Darwin)
            let n = Darwin.read(fd, buffer.baseAddress, buffer.count)
            #elseif canImport(Musl)
            let n = Musl.read(fd, buffer.baseAddress, buffer.count)
            #else
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            #endif
            if n >= 0 { return n }
            if POSIX.errno == EINTR { continue }
            throw ioError("read", path)
        }
    }

    /// Writes all of `bytes`.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            #if canImport(Darwin)
            let n = Darwin.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            #elseif canImport(Musl)
            let n = Musl.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            #else
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            #endif
            if n < 0 {
                if POSIX.errno == EINTR { continue }
                throw ioError("write", path)
            }
            offset += n
        }
    }

    static func closeChecked(_ fd: Int32, path: String) throws {
        if close(fd) != 0 && POSIX.errno != EINTR { throw ioError("close", path) }
    }

    static func renameItem(_ from: String, _ to: String) throws {
        guard rename(from, to) == 0 else { throw ioError("rename", to) }
    }

    static func removeFile(_ path: String) {
        _ = unlink(path)
    }

    static func makeDirectory(_ path: String, mode: UInt32 = 0o755) throws {
        if mkdir(path, mode_t(mode)) != 0 {
            let code = POSIX.errno
            if code == EEXIST, let st = try? status(path), st.fileType == typeDirectory { return }
            throw ioError("mkdir", path, code)
        }
    }
}
