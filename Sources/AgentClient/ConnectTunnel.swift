import Foundation
import HostPort
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import SwiftASN1
import X509

/// An HTTP proxy that agents are reached through with `CONNECT` (CAPMVM's `microvmProxy`).
public struct HTTPConnectProxy: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// `Proxy-Authorization` value, from a URL's user and password (`Basic …`).
    public var authorization: String?

    /// Parses `http://[user:password@]host:port` or `host:port`; the port is required.
    public init(endpoint: String) throws {
        var text = endpoint.trimmingCharacters(in: .whitespaces)
        if let scheme = text.range(of: "://") {
            guard text[..<scheme.lowerBound].lowercased() == "http" else {
                throw TunnelError("proxy \"\(endpoint)\": only http:// proxies are supported (CONNECT over plain HTTP)")
            }
            text = String(text[scheme.upperBound...])
        }
        if text.hasSuffix("/") { text.removeLast() }
        if let at = text.lastIndex(of: "@") {
            let credentials = String(text[..<at])
            text = String(text[text.index(after: at)...])
            let decoded = credentials.removingPercentEncoding ?? credentials
            authorization = "Basic " + Data(decoded.utf8).base64EncodedString()
        }
        guard let hp = HostPort(parsing: text, ports: 1...65535) else {
            throw TunnelError("proxy \"\(endpoint)\" is not http://host:port or host:port")
        }
        guard !hp.host.isEmpty else { throw TunnelError("proxy \"\(endpoint)\" has no host") }
        self.host = hp.host
        self.port = hp.port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct TunnelError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// A private Unix socket whose connections are carried through an HTTP CONNECT proxy to an agent,
/// and wrapped in TLS there when the agent serves TLS. The gRPC client talks plain HTTP/2 to the
/// socket; TLS is done here so that the agent's certificate is checked against the agent's own
/// name or IP address, not the proxy's.
final class ConnectTunnel: Sendable {
    let directory: String
    let socketPath: String
    let serverChannel: any Channel
    let problems: Problems

    struct Target: Sendable {
        var host: String
        var port: Int
        var proxy: HTTPConnectProxy
        var tls: NIOSSLContext?
    }

    /// Why the last tunnel failed (nil once one is up again).
    final class Problems: Sendable {
        let last = Mutex<String?>(nil)
        func record(_ problem: String?) { last.withLock { $0 = problem } }
    }

    var lastProblem: String? { problems.last.withLock { $0 } }

    init(target: Target) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lm-agent-tunnel-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        self.directory = directory
        self.socketPath = "\(directory)/agent.sock"
        let problems = Problems()
        self.problems = problems
        let group = MultiThreadedEventLoopGroup.singleton
        do {
            self.serverChannel = try ServerBootstrap(group: group)
                .childChannelOption(.autoRead, value: false)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture { try child.pipeline.syncOperations.addHandler(TunnelEntryHandler(target: target, problems: problems)) }
                }
                .bind(unixDomainSocketPath: socketPath).wait()
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    func close() {
        serverChannel.close(promise: nil)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// On the local side: when the gRPC client connects, dials the proxy and, once the tunnel (and TLS)
/// is up, joins the two connections.
final class TunnelEntryHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let target: ConnectTunnel.Target
    let problems: ConnectTunnel.Problems

    init(target: ConnectTunnel.Target, problems: ConnectTunnel.Problems) {
        self.target = target
        self.problems = problems
    }

    func channelActive(context: ChannelHandlerContext) {
        let local = context.channel
        let target = self.target
        let problems = self.problems
        let entry = self
        let ready = context.eventLoop.makePromise(of: ByteBuffer.self)
        let connect = ClientBootstrap(group: context.eventLoop)
            .channelInitializer { remote in
                remote.eventLoop.makeCompletedFuture {
                    try remote.pipeline.syncOperations.addHandler(ProxyHandshakeHandler(target: target, ready: ready))
                }
            }
            .connect(host: target.proxy.host, port: target.proxy.port)
        connect.whenFailure { ready.fail($0) }
        connect.and(ready.futureResult).whenComplete { result in
            switch result {
            case .success(let (remote, leftover)):
                problems.record(nil)
                let (a, b) = GlueHandler.pair()
                local.pipeline.addHandler(a).and(remote.pipeline.addHandler(b)).whenComplete { added in
                    guard case .success = added else {
                        local.close(promise: nil)
                        remote.close(promise: nil)
                        return
                    }
                    if leftover.readableBytes > 0 { local.writeAndFlush(leftover, promise: nil) }
                    local.pipeline.removeHandler(entry, promise: nil)
                    local.setOption(.autoRead, value: true).whenComplete { _ in local.read() }
                }
            case .failure(let error):
                // The proxy's side closed itself; the gRPC client sees this side close and reports
                // the agent unavailable, with this reason added (AgentClient.explained).
                problems.record(error is TunnelError ? "\(error)" : "proxy \(target.proxy): \(error)")
                local.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }
}

/// On the proxy's side: sends `CONNECT host:port`, reads the answer, then does the TLS handshake
/// (checking the agent's certificate against its name or IP address) when TLS is wanted.
final class ProxyHandshakeHandler: ChannelDuplexHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let target: ConnectTunnel.Target
    let ready: EventLoopPromise<ByteBuffer>
    var response = ByteBuffer()
    var connected = false
    var done = false

    init(target: ConnectTunnel.Target, ready: EventLoopPromise<ByteBuffer>) {
        self.target = target
        self.ready = ready
    }

    var authority: String { target.host.contains(":") ? "[\(target.host)]:\(target.port)" : "\(target.host):\(target.port)" }

    func channelActive(context: ChannelHandlerContext) {
        var request = "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n"
        if let auth = target.proxy.authorization { request += "Proxy-Authorization: \(auth)\r\n" }
        request += "\r\n"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if connected {
            // Decrypted bytes after the handshake, before this handler is gone: pass them on.
            context.fireChannelRead(wrapInboundOut(bytes))
            return
        }
        response.writeBuffer(&bytes)
        let view = response.readableBytesView
        guard let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if response.readableBytes > 16 * 1024 { fail(context, "the proxy's answer to CONNECT has no end of headers") }
            return
        }
        let head = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (200..<300).contains(code) else {
            fail(context, "proxy \(target.proxy) refused CONNECT \(authority): \(statusLine)")
            return
        }
        connected = true
        response.moveReaderIndex(forwardBy: end.upperBound - view.startIndex)
        let leftover = response
        guard let tls = target.tls else {
            finish(context, leftover: leftover)
            return
        }
        do {
            // NIOSSL checks the chain and sends a DNS name as SNI (an IP address must not be sent);
            // the name or address is checked against the certificate once the handshake is done.
            let isIP = IPLiteral.bytes(target.host) != nil
            let handler = try NIOSSLClientHandler(context: tls, serverHostname: isIP ? nil : target.host)
            try context.pipeline.syncOperations.addHandler(handler, position: .before(self))
        } catch {
            fail(context, "TLS to \(authority): \(error)")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent, !done else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        do {
            guard let leaf = try context.channel.pipeline.syncOperations.nioSSL_peerCertificate() else {
                fail(context, "the agent at \(authority) presented no certificate")
                return
            }
            let certificate = try Certificate(derEncoded: try leaf.toDERBytes())
            let names = try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames()
            guard SubjectAltNameCheck.matches(names, host: target.host) else {
                let kind = IPLiteral.bytes(target.host) == nil ? "name" : "IP address"
                fail(context, "the agent's certificate is not valid for \(target.host) (no such \(kind) in its subjectAltName)")
                return
            }
        } catch {
            fail(context, "checking the agent's certificate: \(error)")
            return
        }
        finish(context, leftover: ByteBuffer())
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context, "tunnel to \(authority) through \(target.proxy): \(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(context, "proxy \(target.proxy) closed the connection before the tunnel to \(authority) was up")
        context.fireChannelInactive()
    }

    func finish(_ context: ChannelHandlerContext, leftover: ByteBuffer) {
        guard !done else { return }
        done = true
        ready.succeed(leftover)
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }

    func fail(_ context: ChannelHandlerContext, _ message: String) {
        guard !done else { return }
        done = true
        ready.fail(TunnelError(message))
        context.close(promise: nil)
    }
}

/// Copies bytes between the two joined connections, with back-pressure.
final class GlueHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var partner: GlueHandler?
    var context: ChannelHandlerContext?
    var pendingRead = false

    static func pair() -> (GlueHandler, GlueHandler) {
        let a = GlueHandler(), b = GlueHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.partnerWrite(unwrapInboundIn(data)) }
    func channelReadComplete(context: ChannelHandlerContext) { partner?.context?.flush() }
    func channelInactive(context: ChannelHandlerContext) { partner?.context?.close(promise: nil) }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? true { context.read() } else { pendingRead = true }
    }

    func partnerWrite(_ buffer: ByteBuffer) { context?.write(wrapOutboundOut(buffer), promise: nil) }

    func partnerBecameWritable() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }
}

/// IP address literals as bytes (4 or 16), as they appear in a certificate's subjectAltName.
enum IPLiteral {
    static func bytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// Whether a certificate's subjectAltNames cover a host: an IP address must equal an IP entry; a
/// DNS name must equal a DNS entry (case-insensitively), where a `*` may stand for the whole leftmost
/// label (RFC 6125, section 6.4.3). The subject's common name is not used, as in current TLS clients.
enum SubjectAltNameCheck {
    static func matches(_ names: SubjectAlternativeNames, host: String) -> Bool {
        if let ip = IPLiteral.bytes(host) {
            return names.contains { name in
                if case .ipAddress(let octets) = name { return Array(octets.bytes) == ip }
                return false
            }
        }
        return names.contains { name in
            if case .dnsName(let pattern) = name { return dnsName(host, matches: pattern) }
            return false
        }
    }

    static func dnsName(_ host: String, matches pattern: String) -> Bool {
        func labels(_ s: String) -> [Substring] {
            let trimmed = s.hasSuffix(".") ? String(s.dropLast()) : s
            return trimmed.lowercased().split(separator: ".", omittingEmptySubsequences: false)
        }
        let h = labels(host), p = labels(pattern)
        guard h.count == p.count, !h.contains(where: \.isEmpty), !p.isEmpty else { return false }
        if p[0] == "*" {
            // A wildcard covers one label, never a top-level or public-suffix-like two-label name.
            return p.count >= 3 && h.dropFirst() == p.dropFirst()
        }
        return h == p
    }
}
