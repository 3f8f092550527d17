import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A directory under the system temp dir, removed when the value is deallocated.
final class TemporaryDirectory {
    let url: URL
    var path: String { url.path }

    init(_ label: String = "ociimage") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func sub(_ name: String) -> URL { url.appendingPathComponent(name) }

    deinit { try? FileManager.default.removeItem(at: url) }
}

struct CommandResult {
    var status: Int32
    var stdout: Data
    var stderr: String
    var output: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs a program (looked up in PATH via /usr/bin/env), with TZ=UTC and LC_ALL=C.UTF-8.
@discardableResult
func run(_ program: String, _ arguments: [String], currentDirectory: URL? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [program] + arguments
    var environment = ProcessInfo.processInfo.environment
    environment["TZ"] = "UTC"
    environment["LC_ALL"] = "C.UTF-8"
    process.environment = environment
    if let currentDirectory { process.currentDirectoryURL = currentDirectory }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Drain stderr on another thread so a chatty child cannot block on a full pipe.
    let errBox = DataBox()
    let done = DispatchSemaphore(value: 0)
    let errHandle = err.fileHandleForReading
    DispatchQueue.global().async {
        errBox.data = errHandle.readDataToEndOfFile()
        done.signal()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    done.wait()
    return CommandResult(status: process.terminationStatus, stdout: outData, stderr: String(decoding: errBox.data, as: UTF8.self))
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// Runs a shell command line.
@discardableResult
func sh(_ command: String) throws -> CommandResult { try run("sh", ["-c", command]) }

func isRoot() -> Bool { getuid() == 0 }

func writeFile(_ url: URL, _ contents: [UInt8], mode: UInt32 = 0o644) throws {
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try Data(contents).write(to: url)
    try chmodChecked(url.path, mode)
}

func writeFile(_ url: URL, _ text: String, mode: UInt32 = 0o644) throws {
    try writeFile(url, Array(text.utf8), mode: mode)
}

func chmodChecked(_ path: String, _ mode: UInt32) throws {
    guard chmod(path, mode_t(mode)) == 0 else { throw POSIXFailure(call: "chmod", path: path) }
}

struct POSIXFailure: Error, CustomStringConvertible {
    var call: String
    var path: String
    var code: Int32 = errno
    var description: String { "\(call) \(path): \(String(cString: strerror(code)))" }
}

/// Sets atime and mtime of a path without following a final symlink.
func setTimes(_ path: String, seconds: Int) throws {
    var times = [timespec(tv_sec: seconds, tv_nsec: 123_456), timespec(tv_sec: seconds, tv_nsec: 654_321)]
    guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
        throw POSIXFailure(call: "utimensat", path: path)
    }
}

func lstatChecked(_ path: String) throws -> stat {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw POSIXFailure(call: "lstat", path: path) }
    return st
}

func sha256sum(_ path: String) throws -> String {
    let result = try run("sha256sum", [path])
    return String(result.output.prefix(64))
}

/// Deterministic pseudo-random bytes.
func pseudoRandomBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8]()
    out.reserveCapacity(count)
    while out.count < count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        out.append(UInt8(truncatingIfNeeded: state >> 24))
    }
    return out
}

/// Paths inside every test tree.
enum SampleTree {
    static let longDirectory = String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60)
    /// 150 bytes: fits the ustar prefix/name split.
    static let splitPath = longDirectory + "/" + String(repeating: "f", count: 28)
    /// Over 256 bytes: needs a PAX path record.
    static let paxPath = longDirectory + "/" + String(repeating: "g", count: 150) + "/" + String(repeating: "h", count: 120)
    /// Over 100 bytes: needs a PAX linkpath record.
    static let longTarget = "/usr/share/" + String(repeating: "t", count: 130) + "/target"
    static let bigFile = pseudoRandomBytes(count: 700_000, seed: 42)

    enum Node {
        case directory(String, UInt32)
        case file(String, [UInt8], UInt32)
        case symlink(String, String)
        case hardLink(String, to: String)
        case fifo(String)
        case charDevice(String, UInt32, UInt32)
        case blockDevice(String, UInt32, UInt32)

        var path: String {
            switch self {
            case .directory(let p, _), .file(let p, _, _), .symlink(let p, _), .hardLink(let p, _), .fifo(let p),
                 .charDevice(let p, _, _), .blockDevice(let p, _, _): p
            }
        }
    }

    static var nodes: [Node] {
        [
            .directory("bin", 0o755),
            .directory("etc", 0o755),
            .directory("etc/ssl", 0o750),
            .directory("tmp", 0o1777),
            .directory("var/empty", 0o700),
            .directory("dev", 0o755),
            .file("bin/tool", Array("#!/bin/sh\necho tool\n".utf8), 0o755),
            .hardLink("bin/tool-link", to: "bin/tool"),
            .file("etc/hostname", Array("builder\n".utf8), 0o644),
            .file("etc/shadow", Array("root:*:1::::::\n".utf8), 0o600),
            .file("etc/empty", [], 0o644),
            .file("etc/café", Array("unicode\n".utf8), 0o644),
            .file("usr/bin/su", Array("setuid\n".utf8), 0o4755),
            .file("usr/bin/wall", Array("setgid\n".utf8), 0o2755),
            .file("usr/lib/big.bin", bigFile, 0o644),
            .file("a-b", Array("dash\n".utf8), 0o644),
            .file("a.txt", Array("dot\n".utf8), 0o644),
            .file("a/x", Array("inside a\n".utf8), 0o640),
            .file(splitPath, Array("split\n".utf8), 0o644),
            .file(paxPath, Array("pax\n".utf8), 0o644),
            .symlink("lib", "usr/lib"),
            .symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
            .symlink("long-link", longTarget),
            .fifo("run/initctl"),
            .charDevice("dev/null", 1, 3),
            .blockDevice("dev/loop0", 7, 0),
        ]
    }

    static var canMakeDevices: Bool {
        guard isRoot(), let dir = try? TemporaryDirectory("mknod-probe") else { return false }
        return mknod(dir.path + "/probe", mode_t(0o020644), makeDevice(1, 3)) == 0
    }

    /// Builds the tree. `reverse` creates nodes in the opposite order; `mtime` stamps every path;
    /// `owner` chowns every path (root only).
    static func build(at root: URL, reverse: Bool, mtime: Int, owner: (uid: UInt32, gid: UInt32)?, devices: Bool) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: root, withIntermediateDirectories: true)
        var list = nodes.filter { node in
            switch node {
            case .charDevice, .blockDevice: devices
            default: true
            }
        }
        // Hard links need their target first, so they go last in either order.
        let links = list.filter { if case .hardLink = $0 { true } else { false } }
        list.removeAll { if case .hardLink = $0 { true } else { false } }
        if reverse { list.reverse() }
        list += links
        for node in list {
            let url = root.appendingPathComponent(node.path)
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            switch node {
            case .directory(_, _):
                try fm.createDirectory(at: url, withIntermediateDirectories: true)
            case .file(_, let bytes, let mode):
                try writeFile(url, bytes, mode: mode)
            case .symlink(_, let target):
                guard symlink(target, url.path) == 0 else { throw POSIXFailure(call: "symlink", path: url.path) }
            case .hardLink(_, let target):
                guard link(root.appendingPathComponent(target).path, url.path) == 0 else {
                    throw POSIXFailure(call: "link", path: url.path)
                }
            case .fifo:
                guard mkfifo(url.path, 0o644) == 0 else { throw POSIXFailure(call: "mkfifo", path: url.path) }
            case .charDevice(_, let major, let minor):
                guard mknod(url.path, mode_t(0o020666), makeDevice(major, minor)) == 0 else { throw POSIXFailure(call: "mknod", path: url.path) }
                try chmodChecked(url.path, 0o666)
            case .blockDevice(_, let major, let minor):
                guard mknod(url.path, mode_t(0o060660), makeDevice(major, minor)) == 0 else { throw POSIXFailure(call: "mknod", path: url.path) }
                try chmodChecked(url.path, 0o660)
            }
        }
        // Owners first: chown clears setuid/setgid bits.
        let allPaths = try fm.subpathsOfDirectory(atPath: root.path)
        if let owner {
            for path in allPaths + ["."] {
                let full = root.appendingPathComponent(path).path
                guard lchown(full, owner.uid, owner.gid) == 0 else { throw POSIXFailure(call: "lchown", path: full) }
            }
        }
        // Modes: implicitly created directories get 0755, listed nodes their own mode.
        for path in allPaths {
            let full = root.appendingPathComponent(path).path
            let st = try lstatChecked(full)
            if st.st_mode & S_IFMT == S_IFDIR { try chmodChecked(full, 0o755) }
        }
        for node in list {
            let full = root.appendingPathComponent(node.path).path
            switch node {
            case .directory(_, let mode), .file(_, _, let mode): try chmodChecked(full, mode)
            default: break
            }
        }
        // Times last, deepest first.
        for path in allPaths.sorted(by: >) + ["."] {
            let full = root.appendingPathComponent(path).path
            try setTimes(full, seconds: mtime)
        }
    }
}

/// glibc's device number encoding (gnu_dev_makedev).
func makeDevice(_ major: UInt32, _ minor: UInt32) -> dev_t {
    let ma = UInt64(major), mi = UInt64(minor)
    return dev_t(((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff))
}

/// Binds a Unix socket at `path`; returns its descriptor, or nil on failure.
func makeUnixSocket(at path: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { close(fd); return nil }
    return fd
}
