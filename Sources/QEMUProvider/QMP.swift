#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A minimal QEMU Machine Protocol client over a Unix socket. Blocking I/O runs on its own
/// thread so the concurrency pool is never blocked.
public enum QMP {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    /// Connects, negotiates capabilities, runs one command and returns its `return` value.
    public static func execute(socket: String, command: String, arguments: [String: any Sendable]? = nil, timeout: Double = 5) async throws -> Any? {
        let result: Result<Data, Failure> = await withCheckedContinuation { cont in
            Thread.detachNewThread {
                cont.resume(returning: executeBlocking(socket: socket, command: command, arguments: arguments, timeout: timeout))
            }
        }
        let data = try result.get()
        return (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["return"]
    }

    static func executeBlocking(socket path: String, command: String, arguments: [String: any Sendable]?, timeout: Double) -> Result<Data, Failure> {
        let fd: Int32
        switch connectUnix(path, timeout: timeout) {
        case .success(let f): fd = f
        case .failure(let e): return .failure(e)
        }
        defer { close(fd) }
        var reader = LineReader(fd: fd)
        guard reader.next() != nil else { return .failure(Failure(message: "no QMP greeting on \(path)")) }
        var cmd: [String: Any] = ["execute": "qmp_capabilities"]
        guard send(fd, cmd) else { return .failure(Failure(message: "QMP write failed on \(path)")) }
        guard waitReturn(&reader) != nil else { return .failure(Failure(message: "QMP capabilities negotiation failed on \(path)")) }
        cmd = ["execute": command]
        if let arguments { cmd["arguments"] = arguments }
        guard send(fd, cmd) else { return .failure(Failure(message: "QMP write failed on \(path)")) }
        guard let line = waitReturn(&reader) else { return .failure(Failure(message: "no QMP answer to \(command) on \(path)")) }
        if let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any], let err = obj["error"] as? [String: Any] {
            return .failure(Failure(message: "QMP \(command): \(err["desc"] ?? err)"))
        }
        return .success(line)
    }

    /// Reads lines until one carries `return` or `error` (skipping asynchronous events).
    static func waitReturn(_ reader: inout LineReader) -> Data? {
        while let line = reader.next() {
            if let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any], obj["return"] != nil || obj["error"] != nil {
                return line
            }
        }
        return nil
    }

    static func send(_ fd: Int32, _ obj: [String: Any]) -> Bool {
        guard var data = try? JSONSerialization.data(withJSONObject: obj) else { return false }
        data.append(0x0a)
        return data.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let n = write(fd, buf.baseAddress! + off, buf.count - off)
                if n <= 0 { return false }
                off += n
            }
            return true
        }
    }

    static func connectUnix(_ path: String, timeout: Double) -> Result<Int32, Failure> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(Failure(message: "socket: \(String(cString: strerror(errno)))")) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            return .failure(Failure(message: "socket path too long: \(path)"))
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            return .failure(Failure(message: "cannot connect to QMP socket \(path): \(e)"))
        }
        return .success(fd)
    }

    /// Follows a QMP event socket on a thread of its own: calls `onEvent` for every event and
    /// `onClose` once the socket closes (which happens when QEMU exits).
    public static func follow(socket path: String, onEvent: @escaping @Sendable (String, [String: Any]) -> Void, onClose: @escaping @Sendable () -> Void) -> Bool {
        guard case .success(let fd) = connectUnix(path, timeout: 5) else { return false }
        Thread.detachNewThread {
            defer { close(fd); onClose() }
            var reader = LineReader(fd: fd)
            guard reader.next() != nil else { return }
            var tv5 = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv5, socklen_t(MemoryLayout<timeval>.size))
            guard send(fd, ["execute": "qmp_capabilities"]), waitReturn(&reader) != nil else { return }
            // Blocking reads without a timeout from now on.
            var forever = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &forever, socklen_t(MemoryLayout<timeval>.size))
            while let line = reader.next() {
                if let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any], let event = obj["event"] as? String {
                    onEvent(event, obj["data"] as? [String: Any] ?? [:])
                }
            }
        }
        return true
    }
}

/// Splits a socket's byte stream into lines.
struct LineReader {
    let fd: Int32
    var buffer: [UInt8] = []

    mutating func next() -> Data? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0a) {
                let line = Data(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
