import Foundation
import MicroVMCore
import Testing

/// Crockford's base32 alphabet, written out here independently of the code under test.
private let crockford = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")

/// Decodes the 10-character time prefix of a ULID into milliseconds since 1970.
private func decodeTimePrefix(_ ulid: String) throws -> UInt64 {
    var value: UInt64 = 0
    for ch in ulid.prefix(10) {
        let digit = try #require(crockford.firstIndex(of: ch), "\(ch) is not Crockford base32")
        value = value * 32 + UInt64(digit)
    }
    return value
}

/// A random source that always returns the same word.
private struct ConstantRNG: RandomNumberGenerator {
    var word: UInt64
    mutating func next() -> UInt64 { word }
}

/// A small deterministic generator (SplitMix64) for reproducible ids.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func date(millis: UInt64) -> Date { Date(timeIntervalSince1970: Double(millis) / 1000) }

@Suite("ULID")
struct ULIDTests {
    @Test("26 characters of the Crockford alphabet, and isValid agrees")
    func shape() {
        for _ in 0..<1000 {
            let id = ULID.make()
            #expect(id.count == 26)
            #expect(id.allSatisfy { crockford.contains($0) }, "\(id)")
            #expect(ULID.isValid(id))
        }
    }

    @Test("the first 10 characters encode the milliseconds since 1970", arguments: [
        0, 1, 31, 32, 1_000, 1_700_000_000_123, 1_712_345_678_901, 1_999_999_999_999, 4_102_444_800_000, (1 << 48) - 1,
    ] as [UInt64])
    func timePrefix(millis: UInt64) throws {
        // Half a millisecond in, so that the instant is unambiguously inside `millis`.
        let id = ULID.make(date: Date(timeIntervalSince1970: (Double(millis) + 0.5) / 1000))
        #expect(try decodeTimePrefix(id) == millis)
    }

    @Test("the time prefix is right for many random instants between 1970 and 2100")
    func timePrefixRandom() throws {
        var rng = SplitMix64(state: 42)
        for _ in 0..<2000 {
            let millis = UInt64.random(in: 0...4_102_444_800_000, using: &rng)
            let id = ULID.make(date: Date(timeIntervalSince1970: (Double(millis) + 0.5) / 1000))
            #expect(try decodeTimePrefix(id) == millis, "\(id) for \(millis) ms")
        }
    }

    @Test("a Date made from whole milliseconds encodes those milliseconds", arguments: [
        32, 156_789_673_751, 1_085_727_717_485, 2_153_457_705_022,
    ] as [UInt64])
    func wholeMillisecondDates(millis: UInt64) throws {
        let decoded = try decodeTimePrefix(ULID.make(date: date(millis: millis)))
        #expect(decoded == millis)
    }

    @Test("ULID.make() uses the current time")
    func usesNow() throws {
        let before = UInt64(Date().timeIntervalSince1970 * 1000)
        let id = ULID.make()
        let after = UInt64(Date().timeIntervalSince1970 * 1000)
        let t = try decodeTimePrefix(id)
        #expect(t >= before - 1 && t <= after + 1)
    }

    @Test("extreme time prefixes", arguments: [
        (UInt64(0), "0000000000"),
        ((UInt64(1) << 48) - 1, "7ZZZZZZZZZ"),
    ])
    func extremes(millis: UInt64, prefix: String) {
        #expect(ULID.make(date: Date(timeIntervalSince1970: (Double(millis) + 0.5) / 1000)).hasPrefix(prefix))
    }

    @Test("dates before 1970 are clamped to time 0")
    func beforeEpoch() {
        #expect(ULID.make(date: Date(timeIntervalSince1970: -5)).hasPrefix("0000000000"))
    }

    @Test("the last 16 characters carry the 80 random bits")
    func randomPart() {
        var zeros = ConstantRNG(word: 0)
        var ones = ConstantRNG(word: .max)
        let t = date(millis: 1_712_345_678_901)
        let low = ULID.make(date: t, using: &zeros)
        let high = ULID.make(date: t, using: &ones)
        #expect(low.suffix(16) == "0000000000000000")
        #expect(high.suffix(16) == "ZZZZZZZZZZZZZZZZ")
        #expect(low.prefix(10) == high.prefix(10))
    }

    @Test("the same time and random source give the same id")
    func deterministic() {
        var a = SplitMix64(state: 7)
        var b = SplitMix64(state: 7)
        let t = date(millis: 1_712_345_678_901)
        #expect(ULID.make(date: t, using: &a) == ULID.make(date: t, using: &b))
    }

    @Test("ids made 1 ms apart sort in time order")
    func sortableByTime() {
        var rng = SplitMix64(state: 1)
        var base: UInt64 = 1_712_345_678_000
        for _ in 0..<2000 {
            let earlier = ULID.make(date: date(millis: base))
            let later = ULID.make(date: date(millis: base + 1))
            #expect(earlier < later, "\(earlier) should sort before \(later)")
            base += UInt64.random(in: 1...86_400_000, using: &rng)
        }
    }

    @Test("a list of ids sorted as strings is sorted by time")
    func sortedListIsChronological() throws {
        let millis: [UInt64] = (0..<200).map { 1_600_000_000_000 + UInt64($0) * 997 }
        let ids = millis.shuffled().map { ULID.make(date: date(millis: $0)) }
        let decoded = try ids.sorted().map(decodeTimePrefix)
        #expect(decoded == millis)
    }

    @Test("10,000 ids made in the same instant are unique")
    func unique() {
        let t = Date()
        let ids = (0..<10_000).map { _ in ULID.make(date: t) }
        #expect(Set(ids).count == 10_000)
    }

    @Test("isValid", arguments: [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", true),
        ("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", true),
        ("01arz3ndektsv4rrffq69g5fav", true),  // Crockford base32 is case-insensitive
        ("", false),
        ("01ARZ3NDEKTSV4RRFFQ69G5FA", false),  // 25
        ("01ARZ3NDEKTSV4RRFFQ69G5FAVX", false),  // 27
        ("01ARZ3NDEKTSV4RRFFQ69G5FAI", false),  // I is not in the alphabet
        ("01ARZ3NDEKTSV4RRFFQ69G5FAL", false),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAO", false),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAU", false),
        ("81ARZ3NDEKTSV4RRFFQ69G5FAV", false),  // first character > 7 overflows 128 bits
        ("01ARZ3NDEKTSV4RRFFQ69G5FA-", false),
    ])
    func isValid(id: String, valid: Bool) {
        #expect(ULID.isValid(id) == valid)
    }
}
