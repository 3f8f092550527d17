import Foundation

/// The two timestamp formats of the Kubernetes API, written and parsed as kube-apiserver does:
/// `Time` (RFC 3339 in UTC, whole seconds: `metadata.creationTimestamp`, condition transition times)
/// and `MicroTime` (RFC 3339 with exactly six fractional digits: a Lease's `acquireTime` and
/// `renewTime`, an Event's `eventTime`). The one place the project formats or parses either.
public enum KubernetesTime {
    /// `2026-12-02T01:02:03Z`.
    public static func time(_ date: Date) -> String {
        let c = components(date)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", c.year, c.month, c.day, c.hour, c.minute, c.second)
    }

    /// `2026-12-02T01:02:03.123456Z`.
    public static func microTime(_ date: Date) -> String {
        let c = components(date)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", c.year, c.month, c.day, c.hour, c.minute, c.second, c.micro)
    }

    /// Parses a `Time` as Go's `time.Parse(time.RFC3339, …)` does: a fraction is accepted, the zone
    /// is `Z` or `±hh:mm`.
    public static func parseTime(_ s: String) -> Date? { parse(s, fractionDigits: nil) }

    /// Parses a `MicroTime` as kube-apiserver does (Go layout `2006-01-02T15:04:05.000000Z07:00`):
    /// exactly six fractional digits, else nil.
    public static func parseMicroTime(_ s: String) -> Date? { parse(s, fractionDigits: 6) }

    // MARK: -

    struct Components {
        var year, month, day, hour, minute, second, micro: Int
    }

    static let utc: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    static func components(_ date: Date) -> Components {
        let t = date.timeIntervalSince1970
        var whole = t.rounded(.down)
        var micro = Int(((t - whole) * 1_000_000).rounded())
        if micro >= 1_000_000 { whole += 1; micro -= 1_000_000 }
        let d = utc.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: whole))
        return Components(year: d.year ?? 1970, month: d.month ?? 1, day: d.day ?? 1, hour: d.hour ?? 0, minute: d.minute ?? 0, second: d.second ?? 0, micro: micro)
    }

    /// `fractionDigits` nil: any fraction (or none); a number: exactly that many digits.
    static func parse(_ s: String, fractionDigits: Int?) -> Date? {
        let b = Array(s.utf8)
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= b.count else { return nil }
            var n = 0
            for i in from..<from + count {
                guard b[i] >= 48 && b[i] <= 57 else { return nil }
                n = n * 10 + Int(b[i] - 48)
            }
            return n
        }
        func byte(_ i: Int, _ c: Character) -> Bool { i < b.count && b[i] == c.asciiValue! }
        guard let year = number(0, 4), byte(4, "-"), let month = number(5, 2), byte(7, "-"), let day = number(8, 2),
              byte(10, "T"), let hour = number(11, 2), byte(13, ":"), let minute = number(14, 2), byte(16, ":"), let second = number(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 60 else { return nil }
        var i = 19
        var fraction = 0.0
        if byte(i, ".") {
            var j = i + 1
            while j < b.count, b[j] >= 48 && b[j] <= 57 { j += 1 }
            let digits = j - i - 1
            guard digits > 0, fractionDigits == nil || digits == fractionDigits else { return nil }
            fraction = Double("0." + String(decoding: b[(i + 1)..<j], as: UTF8.self)) ?? 0
            i = j
        } else if fractionDigits != nil {
            return nil
        }
        var offset = 0
        if byte(i, "Z") {
            i += 1
        } else if byte(i, "+") || byte(i, "-") {
            guard let oh = number(i + 1, 2), byte(i + 3, ":"), let om = number(i + 4, 2), oh < 24, om < 60 else { return nil }
            offset = (oh * 3600 + om * 60) * (byte(i, "-") ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        var dc = DateComponents()
        (dc.year, dc.month, dc.day, dc.hour, dc.minute, dc.second) = (year, month, day, hour, minute, second)
        guard let base = utc.date(from: dc), utc.component(.day, from: base) == day else { return nil }
        return base.addingTimeInterval(fraction - Double(offset))
    }
}
