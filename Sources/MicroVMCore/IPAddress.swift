#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 address as a 32-bit number.
public struct IPv4Address: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var value: UInt32
    public init(_ value: UInt32) { self.value = value }

    /// Parses dotted decimal ("10.0.0.1"); nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard (1...3).contains(p.count), p.allSatisfy({ $0.isASCII && $0.isNumber }), let b = UInt32(p), b <= 255,
                  p.count == 1 || p.first != "0" else { return nil }
            v = v << 8 | b
        }
        value = v
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }
    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

/// An IPv4 interface address with its prefix ("10.200.0.1/24"): the address and the network it is on.
public struct IPv4Interface: Sendable, Hashable, CustomStringConvertible {
    public var address: IPv4Address
    public var prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    /// Parses "A.B.C.D/N" (N 0-32); nil for anything else.
    public init?(cidr: String) {
        let parts = cidr.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(parts[0]), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
              (1...2).contains(parts[1].count), parts[1].count == 1 || parts[1].first != "0", let n = Int(parts[1]), (0...32).contains(n) else { return nil }
        address = a
        prefixLength = n
    }

    public var mask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength) }
    public var network: IPv4Address { IPv4Address(address.value & mask) }
    public var broadcast: IPv4Address { IPv4Address(address.value | ~mask) }
    /// "10.200.0.0/24"
    public var networkCIDR: String { "\(network)/\(prefixLength)" }
    public var description: String { "\(address)/\(prefixLength)" }

    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == address.value & mask }

    /// Addresses a host on this network may use: all but the network and broadcast addresses
    /// (for /31 and /32, every address).
    public var hostAddresses: ClosedRange<UInt32> {
        prefixLength >= 31 ? network.value...broadcast.value : (network.value + 1)...(broadcast.value - 1)
    }
}

/// Checks for IP addresses of either family, as the kernel parses them.
public enum IPText {
    public static func isIPv6(_ s: String) -> Bool {
        var buf = in6_addr()
        return inet_pton(AF_INET6, s, &buf) == 1
    }

    public static func isIP(_ s: String) -> Bool { IPv4Address(s) != nil || isIPv6(s) }

    /// Splits "ADDR/N" into its parts when ADDR is an IPv4 or IPv6 address and N fits the family.
    public static func cidr(_ s: String) -> (address: String, prefix: Int, v6: Bool)? {
        // IPv4 through IPv4Interface, the parser the address pool uses, so that both agree.
        if let v4 = IPv4Interface(cidr: s) { return (v4.address.description, v4.prefixLength, false) }
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), (1...3).contains(parts[1].count),
              parts[1].count == 1 || parts[1].first != "0", let n = Int(parts[1]) else { return nil }
        let a = String(parts[0])
        if isIPv6(a), n <= 128 { return (a, n, true) }
        return nil
    }
}
