import Foundation
import Crypto

/// Helpers for OCI digest strings (`<algorithm>:<lowercase hex>`). Supported algorithms: sha256, sha512.
public enum OCIDigest {
    /// `sha256:<hex>` of some bytes.
    public static func sha256(_ bytes: some DataProtocol) -> String {
        string(SHA256.hash(data: bytes))
    }

    /// `sha256:<hex>` of a finished hash.
    public static func string(_ digest: SHA256.Digest) -> String { "sha256:" + hex(digest) }

    /// Splits and checks a digest: returns (algorithm, hex) for `sha256:<64 hex>` or `sha512:<128 hex>`.
    public static func parse(_ digest: String) throws -> (algorithm: String, hex: String) {
        guard let colon = digest.firstIndex(of: ":") else { throw OCIImageError.invalidDigest(digest) }
        let algorithm = String(digest[..<colon])
        let hex = String(digest[digest.index(after: colon)...])
        let expectedLength: Int
        switch algorithm {
        case "sha256": expectedLength = 64
        case "sha512": expectedLength = 128
        default: throw OCIImageError.invalidDigest(digest)
        }
        guard hex.utf8.count == expectedLength,
              hex.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
        else { throw OCIImageError.invalidDigest(digest) }
        return (algorithm, hex)
    }

    /// The hex part of a digest (after the colon).
    public static func hex(of digest: String) throws -> String { try parse(digest).hex }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(128)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Incremental hashing for a supported digest algorithm.
struct DigestHasher {
    private enum State { case sha256(SHA256), sha512(SHA512) }
    private var state: State
    let algorithm: String

    init(algorithm: String) throws {
        switch algorithm {
        case "sha256": state = .sha256(SHA256())
        case "sha512": state = .sha512(SHA512())
        default: throw OCIImageError.invalidDigest(algorithm)
        }
        self.algorithm = algorithm
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        switch state {
        case .sha256(var h): h.update(bufferPointer: bytes); state = .sha256(h)
        case .sha512(var h): h.update(bufferPointer: bytes); state = .sha512(h)
        }
    }

    func finalize() -> String {
        switch state {
        case .sha256(let h): "sha256:" + OCIDigest.hex(h.finalize())
        case .sha512(let h): "sha512:" + OCIDigest.hex(h.finalize())
        }
    }
}
