/// A `host:port` address as written in flags and configuration: `10.0.0.1:9090`, `[::1]:9090`,
/// `:9090` (no host). The one parser for every such setting.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    /// The host without IPv6 brackets; empty when the text had none.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `text`, or returns nil when it is not `host:port` with a port in `ports`.
    /// An empty host becomes `defaultHost`.
    public init?(parsing text: String, defaultHost: String = "", ports: ClosedRange<Int> = 0...65535) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), ports.contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.contains(":") || text.hasPrefix("[") else { return nil }  // a bare IPv6 needs brackets
        self.host = host.isEmpty ? defaultHost : host
        self.port = port
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
