import Foundation

/// Universally unique lexicographically sortable identifiers (26 Crockford base32 characters:
/// 48 bits of milliseconds since 1970, then 80 random bits), as Flintlock uses for `uid`.
public enum ULID {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")

    public static func make(date: Date = Date()) -> String {
        var rng = SystemRandomNumberGenerator()
        return make(date: date, using: &rng)
    }

    public static func make<R: RandomNumberGenerator>(date: Date, using rng: inout R) -> String {
        // Round to whole microseconds first: Date counts seconds since 2001 as a Double, so the
        // product can fall just below a whole millisecond.
        let micros = (max(0, date.timeIntervalSince1970) * 1_000_000).rounded()
        let millis = UInt64(micros) / 1000
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: millis >> (8 * UInt64(5 - i))) }
        for i in 6..<16 { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
        // 128 bits -> 26 characters of 5 bits; the first character carries 3 bits.
        var value = bytes.reduce(into: (hi: UInt64(0), lo: UInt64(0))) { acc, b in
            acc.hi = (acc.hi << 8) | (acc.lo >> 56)
            acc.lo = (acc.lo << 8) | UInt64(b)
        }
        var chars = [Character](repeating: "0", count: 26)
        for i in stride(from: 25, through: 0, by: -1) {
            chars[i] = alphabet[Int(value.lo & 0x1f)]
            value.lo = (value.lo >> 5) | (value.hi << 59)
            value.hi >>= 5
        }
        return String(chars)
    }

    /// Whether `s` has the shape of a ULID.
    public static func isValid(_ s: String) -> Bool {
        s.count == 26 && s.uppercased().allSatisfy { alphabet.contains($0) } && (s.first.map { "01234567".contains($0) } ?? false)
    }
}
