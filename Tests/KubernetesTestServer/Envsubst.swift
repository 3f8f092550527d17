import Foundation

/// clusterctl's variable syntax: `${NAME}`, and `${NAME:=default}` (also `:-`, `=` and `-`).
public enum Envsubst {
    public struct Variable: Equatable, Sendable {
        public var name: String
        public var defaultValue: String?
    }

    public struct Missing: Error, CustomStringConvertible {
        public var names: [String]
        public var description: String { "variables not set: \(names.joined(separator: ", "))" }
    }

    static var pattern: Regex<(Substring, Substring, Substring?, Substring?)> { /\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[=-])([^}]*))?\}/ }

    /// Every variable the text names, in order (a name may repeat).
    public static func variables(_ text: String) -> [Variable] {
        text.matches(of: pattern).map { Variable(name: String($0.output.1), defaultValue: $0.output.3.map(String.init)) }
    }

    /// The text with every variable replaced by its value, else its default; throws when neither is there.
    public static func substitute(_ text: String, _ values: [String: String]) throws -> String {
        var missing: [String] = []
        let out = text.replacing(pattern) { m -> String in
            if let v = values[String(m.output.1)], !v.isEmpty { return v }
            if let d = m.output.3 { return String(d) }
            missing.append(String(m.output.1))
            return ""
        }
        guard missing.isEmpty else { throw Missing(names: Array(Set(missing)).sorted()) }
        return out
    }
}
