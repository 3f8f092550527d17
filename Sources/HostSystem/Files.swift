#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// Small file-system helpers with crash-safe writes.
public enum HostFiles {
    /// Writes `data` to `path` atomically (temporary file, fsync, rename).
    public static func writeAtomically(_ data: Data, to path: String, mode: mode_t = 0o644) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var ok = true
        data.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let n = write(fd, buf.baseAddress! + off, buf.count - off)
                if n <= 0 { ok = false; break }
                off += n
            }
        }
        fsync(fd)
        close(fd)
        guard ok, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func createDirectory(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Removes a file or a directory tree; no error when it is already gone.
    public static func remove(_ path: String) throws {
        guard exists(path) else { return }
        try FileManager.default.removeItem(atPath: path)
    }

    public static func size(_ path: String) -> Int64? {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : nil
    }

    /// Reads the last `maxBytes` bytes of a file (all of it when `maxBytes` is 0).
    public static func tail(_ path: String, maxBytes: Int) -> Data? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        let start = maxBytes > 0 && end > UInt64(maxBytes) ? end - UInt64(maxBytes) : 0
        try? h.seek(toOffset: start)
        return try? h.readToEnd() ?? Data()
    }
}

/// The process's heap.
public enum HostMemory {
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        guard let sym = dlsym(nil, "malloc_trim") else { return nil }  // glibc; not in the Swift Glibc module
        return unsafeBitCast(sym, to: (@convention(c) (Int) -> Int32).self)
    }()

    /// Returns freed heap memory to the system (glibc keeps the high-water mark of bursts otherwise).
    public static func trim() { _ = mallocTrim?(0) }
}
