import Foundation
import HostPort
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server for health, readiness and metrics: GET paths answered by a handler
/// (capmvm's and flintlockd's /healthz, /readyz and /metrics).
public final class HTTPEndpoints: Sendable {
    public typealias Handler = @Sendable (_ path: String) async -> (status: Int, contentType: String, body: [UInt8])
    let channel: any Channel
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// Listens on `address` ("host:port"; an empty host means all addresses).
    public static func start(address: String, handler: @escaping Handler) async throws -> HTTPEndpoints {
        guard let hp = HostPort(parsing: address, defaultHost: "0.0.0.0") else { throw EndpointError("\"\(address)\" is not host:port") }
        let (host, port) = (hp.host == "localhost" ? "127.0.0.1" : hp.host, hp.port)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.pipeline.configureHTTPServerPipeline().flatMap { ch.pipeline.addHandler(EndpointHandler(handler: handler)) }
            }
            .bind(host: host, port: port).get()
        return HTTPEndpoints(channel: channel)
    }

    init(channel: any Channel) { self.channel = channel }

    public func stop() async throws { try await channel.close() }

    public struct EndpointError: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }
}

final class EndpointHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let handler: HTTPEndpoints.Handler
    var head: HTTPRequestHead?

    init(handler: @escaping HTTPEndpoints.Handler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            let channel = context.channel
            let handler = self.handler
            Task {
                let (status, type, body) = head.method == .GET ? await handler(path) : (405, "text/plain", Array("method not allowed\n".utf8))
                let headers = HTTPHeaders([("Content-Type", type), ("Content-Length", String(body.count)), ("Connection", "close")])
                channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: .init(statusCode: status), headers: headers)), promise: nil)
                var buf = channel.allocator.buffer(capacity: body.count)
                buf.writeBytes(body)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(buf)), promise: nil)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
