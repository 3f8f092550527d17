/// The timestamp written into every archive entry (and, if the caller wishes, the image config's `created`),
/// in seconds since 1970-01-01T00:00:00Z. See https://reproducible-builds.org/specs/source-date-epoch/.
///
/// The default, `.zero`, makes layers independent of when they were built.
public struct SourceDateEpoch: Sendable, Hashable, Comparable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    /// Seconds since the Unix epoch. Must be in `0...0o77777777777` (up to the year 2242) to fit a tar header.
    public var seconds: Int64

    public init(seconds: Int64) { self.seconds = seconds }
    public init(integerLiteral value: Int64) { self.seconds = value }

    /// 1970-01-01T00:00:00Z.
    public static let zero = SourceDateEpoch(seconds: 0)

    /// Parses the `SOURCE_DATE_EPOCH` convention: a non-negative decimal integer. Nil if absent or malformed.
    public init?(environmentValue: String?) {
        guard let value = environmentValue, !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let seconds = Int64(value) else { return nil }
        self.seconds = seconds
    }

    /// RFC 3339 UTC form, e.g. `1970-01-01T00:00:00Z`, for `ImageConfiguration.created`.
    public var rfc3339: String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        // Civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm description.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ v: Int64, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2))Z"
    }

    public var description: String { String(seconds) }

    public static func < (lhs: SourceDateEpoch, rhs: SourceDateEpoch) -> Bool { lhs.seconds < rhs.seconds }
}
