/// An OCI image reference: `[registry[:port]/]repository[:tag][@digest]`, normalised the way
/// containerd and Docker do (`docker.io` and `library/` when no registry is named, tag `latest`).
public struct ImageReference: Sendable, Hashable, CustomStringConvertible {
    public var registry: String
    public var repository: String
    public var tag: String?
    public var digest: String?

    public init(parsing raw: String) throws(AgentError) {
        let s = raw.trimmingCharacters(in: .whitespaces)
        func bad(_ why: String) -> AgentError { AgentError(.invalidArgument, "malformed image reference \"\(raw)\": \(why)") }
        guard !s.isEmpty else { throw bad("it is empty") }
        guard s == raw else { throw bad("it has surrounding spaces") }
        var rest = Substring(s)
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard Self.isDigest(d) else { throw bad("digest must look like sha256:<64 hex digits>") }
            digest = d
            rest = rest[..<at]
        }
        var registry = "docker.io"
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            if first.contains(".") || first.contains(":") || first == "localhost" {
                registry = String(first)
                rest = rest[rest.index(after: slash)...]
                guard Self.isHostPort(registry) else { throw bad("registry \"\(registry)\" is not host[:port]") }
            }
        }
        var tag: String?
        if let colon = rest.lastIndex(of: ":") {
            let t = String(rest[rest.index(after: colon)...])
            guard Self.isTag(t) else { throw bad("tag \"\(t)\" must be 1-128 of [A-Za-z0-9_.-] not starting with . or -") }
            tag = t
            rest = rest[..<colon]
        }
        var repository = String(rest)
        guard !repository.isEmpty else { throw bad("the repository name is empty") }
        let components = repository.split(separator: "/", omittingEmptySubsequences: false)
        for c in components {
            guard Self.isPathComponent(c) else {
                throw bad("repository component \"\(c)\" must be lowercase letters, digits and single separators (. _ __ -)")
            }
        }
        if registry == "docker.io" && components.count == 1 { repository = "library/" + repository }
        if tag == nil && digest == nil { tag = "latest" }
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    /// The full normalised name, as containerd records images.
    public var description: String {
        var s = "\(registry)/\(repository)"
        if let tag { s += ":\(tag)" }
        if let digest { s += "@\(digest)" }
        return s
    }

    /// What to ask the registry's manifest endpoint for.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    static func isDigest(_ d: String) -> Bool {
        let parts = d.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, parts[0] == "sha256", parts[1].count == 64 else { return false }
        return parts[1].allSatisfy { $0.isASCII && $0.isHexDigit && !$0.isUppercase }
    }

    static func isTag(_ t: String) -> Bool {
        guard (1...128).contains(t.count), let f = t.first, f != ".", f != "-" else { return false }
        return t.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
    }

    static func isHostPort(_ h: String) -> Bool {
        let parts = h.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), !parts[0].isEmpty else { return false }
        guard parts[0].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-".contains($0)) }) else { return false }
        if parts.count == 2 { return !parts[1].isEmpty && parts[1].allSatisfy { $0.isASCII && $0.isNumber } && UInt16(parts[1]) != nil }
        return true
    }

    static func isPathComponent(_ c: Substring) -> Bool {
        // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
        guard let f = c.first, let l = c.last, f.isLowercaseAlnum, l.isLowercaseAlnum else { return false }
        var prev: Character = f
        var underscores = 0
        for ch in c.dropFirst() {
            if ch.isLowercaseAlnum { underscores = 0; prev = ch; continue }
            switch ch {
            case ".": if !prev.isLowercaseAlnum { return false }
            case "_": underscores += 1; if underscores > 2 || (prev != "_" && !prev.isLowercaseAlnum) { return false }
            case "-": if !(prev.isLowercaseAlnum || prev == "-") { return false }
            default: return false
            }
            prev = ch
        }
        return true
    }
}

extension Character {
    fileprivate var isLowercaseAlnum: Bool { isASCII && (isNumber || (isLetter && isLowercase)) }
}
