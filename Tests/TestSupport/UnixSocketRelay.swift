#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A relay between a new Unix socket and an existing one (such as containerd's), which drops the
/// first connection once it has carried a given number of bytes from client to server: a real
/// connection loss in the middle of a stream, at a point the test chooses.
public final class UnixSocketRelay: Sendable {
    public let path: String
    let target: String
    let cutAfter: Int
    let listener: Int32
    let state = Mutex(State())

    struct State {
        var connections = 0
        var cuts = 0
        var open: [Int32] = []
        var stopped = false
    }

    /// Connections accepted so far.
    public var connections: Int { state.withLock { $0.connections } }
    /// How many connections the relay has dropped (0 or 1).
    public var cuts: Int { state.withLock { $0.cuts } }

    /// Listens on a new socket in /tmp that relays to `target`; the first connection is dropped
    /// after `cutAfter` bytes from the client.
    public init(to target: String, cutAfter: Int) throws {
        self.target = target
        self.cutAfter = cutAfter
        path = "/tmp/lm-relay-\(UUID().uuidString.prefix(8)).sock"
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw TestEnvironmentError("socket: errno \(errno)") }
        var addr = Self.address(path)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else {
            close(listener)
            throw TestEnvironmentError("cannot listen on \(path): errno \(errno)")
        }
        let relay = self
        Thread.detachNewThread { relay.acceptLoop() }
    }

    /// Stops accepting, closes every relayed connection and removes the socket.
    public func stop() {
        state.withLock { s in
            s.stopped = true
            for fd in s.open { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(path)
    }

    static func address(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes + [0])
        }
        return addr
    }

    func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            let server = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = Self.address(target)
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            let (first, keep) = state.withLock { s -> (Bool, Bool) in
                s.connections += 1
                let keep = !s.stopped && connected == 0
                if keep { s.open += [client, server] }
                return (s.connections == 1, keep)
            }
            guard keep else { close(client); close(server); continue }
            let limit = first ? cutAfter : Int.max
            let pumpsLeft = Countdown(2)
            let finish: @Sendable () -> Void = { [self] in
                guard pumpsLeft.down() else { return }
                // Under the lock, so that stop() never shuts down a descriptor number reused since.
                state.withLock { s in
                    s.open.removeAll { $0 == client || $0 == server }
                    close(client)
                    close(server)
                }
            }
            Thread.detachNewThread { self.pump(from: client, to: server, limit: limit); finish() }
            Thread.detachNewThread { self.pump(from: server, to: client, limit: .max); finish() }
        }
    }

    /// Copies bytes until either side closes or `limit` bytes have passed; then closes both ends.
    func pump(from: Int32, to: Int32, limit: Int) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var passed = 0
        while passed < limit {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, min($0.count, limit - passed)) }
            guard n > 0 else { break }
            var sent = 0
            while sent < n {
                // MSG_NOSIGNAL: a peer gone is EPIPE here, not a SIGPIPE that ends the test process.
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                guard w > 0 else { break }
                sent += w
            }
            guard sent == n else { break }
            passed += n
        }
        if passed >= limit { state.withLock { $0.cuts += 1 } }
        // Shut down both sockets: the other pump then ends too, and the last one out closes them.
        shutdown(from, Int32(SHUT_RDWR))
        shutdown(to, Int32(SHUT_RDWR))
    }
}

/// Counts down from a start value; `down()` says whether it reached zero.
final class Countdown: Sendable {
    let left: Mutex<Int>
    init(_ n: Int) { left = Mutex(n) }
    func down() -> Bool { left.withLock { $0 -= 1; return $0 == 0 } }
}
