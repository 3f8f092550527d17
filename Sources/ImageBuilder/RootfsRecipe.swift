import Foundation
import Yams

/// A Debian root filesystem described as data: what `lmctl image build rootfs --recipe FILE.yaml` reads, and
/// what the `cloud` and `k8s-node` presets are (see `RootfsPresets`).
///
/// ```yaml
/// title: my guest                     # image title (org.opencontainers.image.title)
/// suite: bookworm                     # Debian suite (default bookworm)
/// mirror: http://deb.debian.org/debian   # default: the host's apt sources for the suite
/// variant: minbase                    # mmdebstrap variant (default minbase)
/// hostname: lm-guest
/// docs: false                         # true keeps /usr/share/{doc,man,info,locale} (default: copyright files only)
/// packages: [systemd-sysv, openssh-server]
/// sources:                            # extra apt sources, one-line format, with their signing key
///   - line: deb https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /
///     key: kubernetes.asc             # relative to the recipe's directory
/// files:
///   - path: /etc/motd
///     content: "hello\n"              # or source: FILE (relative to the recipe's directory)
///     mode: "0644"
///     owner: root:root
/// users:
///   - name: ops
///     groups: [sudo]
///     shell: /bin/bash
///     sudo: true                      # passwordless sudo
///     ssh_authorized_keys: ["ssh-ed25519 AAAA... me@laptop"]
/// services:
///   enable: [ssh]
///   disable: []
/// images:                             # container images containerd has from first boot (needs containerd)
///   - name: registry.k8s.io/pause:3.10.2
///     layout: pause-layout            # an OCI image layout (relative to the recipe's directory)
///     tag: "3.10.2"                   # its entry there; optional when it holds one image
/// ```
public struct RootfsRecipe: Sendable, Equatable {
    /// An extra apt source: a one-line `deb URI SUITE [COMPONENT...]` entry and the key that signs it.
    public struct PackageSource: Sendable, Equatable {
        public var line: String
        /// Path of the signing key on this machine (ASCII-armored `.asc` or binary `.gpg`); nil when the
        /// line names its own `signed-by=`.
        public var key: String?
        public init(line: String, key: String?) { self.line = line; self.key = key }
    }

    /// A file written into the tree after the packages are installed.
    public struct File: Sendable, Equatable {
        public var path: String
        public var content: Data
        public var mode: UInt32
        /// `user:group` (names or numbers) as the image knows them.
        public var owner: String
        public init(path: String, content: Data, mode: UInt32 = 0o644, owner: String = "root:root") {
            self.path = path; self.content = content; self.mode = mode; self.owner = owner
        }
        public init(path: String, text: String, mode: UInt32 = 0o644) {
            self.init(path: path, content: Data(text.utf8), mode: mode)
        }
    }

    /// A container image copied into the tree for containerd (see `PreloadedImages`).
    public struct PreloadImage: Sendable, Equatable {
        /// The reference containerd knows it by, e.g. `registry.k8s.io/kube-apiserver:v1.36.2`.
        public var name: String
        /// An OCI image layout directory on this machine.
        public var layout: String
        /// Its entry in the layout (`org.opencontainers.image.ref.name`); nil when the layout holds one image.
        public var tag: String?
        public init(name: String, layout: String, tag: String? = nil) { self.name = name; self.layout = layout; self.tag = tag }
    }

    /// A user created with `useradd` (password locked).
    public struct User: Sendable, Equatable {
        public var name: String
        public var groups: [String] = []
        public var shell: String = "/bin/bash"
        public var sudo: Bool = false
        public var sshAuthorizedKeys: [String] = []
        public init(name: String, groups: [String] = [], shell: String = "/bin/bash", sudo: Bool = false, sshAuthorizedKeys: [String] = []) {
            self.name = name; self.groups = groups; self.shell = shell; self.sudo = sudo; self.sshAuthorizedKeys = sshAuthorizedKeys
        }
    }

    public var title: String
    public var suite: String = "bookworm"
    /// The Debian archive; nil: the host's apt sources for `suite` (and its -updates and -security suites).
    public var mirror: String?
    public var variant: String = "minbase"
    public var hostname: String = "lm-guest"
    /// Keep /usr/share/doc, man, info and translations (default false: only copyright files are kept).
    public var docs: Bool = false
    public var packages: [String] = []
    public var sources: [PackageSource] = []
    public var files: [File] = []
    public var users: [User] = []
    public var enableServices: [String] = []
    public var disableServices: [String] = []
    /// Container images imported into containerd on first boot, so that nothing is pulled (air-gapped nodes).
    public var images: [PreloadImage] = []

    public init(title: String) { self.title = title }

    /// mmdebstrap's variants.
    public static let variants = ["extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"]

    // MARK: Validation

    /// Checks names and paths before anything is downloaded; the error names the offending field.
    public func validate() throws {
        guard Self.matches(suite, #"^[a-z][a-z0-9.-]*$"#) else { throw ImageBuildError("recipe: suite \"\(suite)\" is not a Debian suite name") }
        guard Self.variants.contains(variant) else {
            throw ImageBuildError("recipe: variant \"\(variant)\" is not one of \(Self.variants.joined(separator: ", "))")
        }
        if let mirror { guard Self.isURL(mirror) else { throw ImageBuildError("recipe: mirror \"\(mirror)\" is not an http(s) URL") } }
        guard Self.matches(hostname, #"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$"#) else { throw ImageBuildError("recipe: hostname \"\(hostname)\" is not a valid host name") }
        for p in packages where !Self.matches(p, #"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$"#) {
            throw ImageBuildError("recipe: package \"\(p)\" is not a valid Debian package name")
        }
        for (i, s) in sources.enumerated() {
            _ = try Self.parseSourceLine(s.line, field: "sources[\(i)].line")
            if let key = s.key, !FileManager.default.isReadableFile(atPath: key) {
                throw ImageBuildError("recipe: sources[\(i)].key: cannot read \(key)")
            }
        }
        for f in files {
            guard f.path.hasPrefix("/"), !f.path.hasSuffix("/"), !f.path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                throw ImageBuildError("recipe: file path \"\(f.path)\" must be absolute, without . or .. components")
            }
            guard f.mode <= 0o7777 else { throw ImageBuildError("recipe: file \(f.path): mode \(String(f.mode, radix: 8)) is not a permission mode") }
            guard Self.matches(f.owner, #"^[A-Za-z0-9_][A-Za-z0-9_.-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$"#) else {
                throw ImageBuildError("recipe: file \(f.path): owner \"\(f.owner)\" must be user:group")
            }
        }
        var seen = Set<String>()
        for u in users {
            guard Self.matches(u.name, #"^[a-z_][a-z0-9_-]{0,31}$"#) else { throw ImageBuildError("recipe: user name \"\(u.name)\" is not valid") }
            guard seen.insert(u.name).inserted else { throw ImageBuildError("recipe: user \"\(u.name)\" is listed twice") }
            for g in u.groups where !Self.matches(g, #"^[a-z_][a-z0-9_-]{0,31}$"#) {
                throw ImageBuildError("recipe: user \(u.name): group \"\(g)\" is not valid")
            }
            guard u.shell.hasPrefix("/") else { throw ImageBuildError("recipe: user \(u.name): shell \"\(u.shell)\" must be an absolute path") }
            for k in u.sshAuthorizedKeys where k.contains("\n") || k.split(separator: " ").count < 2 {
                throw ImageBuildError("recipe: user \(u.name): ssh_authorized_keys entry \"\(k.prefix(40))\" is not one \"TYPE KEY [COMMENT]\" line")
            }
        }
        var names = Set<String>()
        for (i, image) in images.enumerated() {
            try PreloadedImages.validate(image, field: "images[\(i)]")
            guard names.insert(image.name).inserted else { throw ImageBuildError("recipe: image \(image.name) is listed twice") }
        }
        for s in enableServices + disableServices where !Self.matches(s, #"^[A-Za-z0-9@._:\\-]+$"#) {
            throw ImageBuildError("recipe: service \"\(s)\" is not a systemd unit name")
        }
    }

    /// URI and suite of a one-line apt source entry (`deb [options] URI SUITE [COMPONENT...]`).
    static func parseSourceLine(_ line: String, field: String) throws -> (options: String?, uri: String, suite: String, components: [String]) {
        var rest = line.trimmingCharacters(in: .whitespaces)
        guard rest.hasPrefix("deb ") else { throw ImageBuildError("recipe: \(field): \"\(line)\" must start with \"deb \"") }
        rest = String(rest.dropFirst(4)).trimmingCharacters(in: .whitespaces)
        var options: String?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw ImageBuildError("recipe: \(field): unclosed [ in \"\(line)\"") }
            options = String(rest[rest.index(after: rest.startIndex)..<close]).trimmingCharacters(in: .whitespaces)
            rest = String(rest[rest.index(after: close)...])
        }
        let words = rest.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard words.count >= 2, isURL(words[0]) else {
            throw ImageBuildError("recipe: \(field): \"\(line)\" must be deb [options] URI SUITE [COMPONENT...]")
        }
        if !words[1].hasSuffix("/") && words.count < 3 {
            throw ImageBuildError("recipe: \(field): \"\(line)\" names no component (a flat repository's suite ends in /)")
        }
        return (options, words[0], words[1], Array(words.dropFirst(2)))
    }

    static func isURL(_ s: String) -> Bool {
        guard let u = URL(string: s), let scheme = u.scheme, ["http", "https"].contains(scheme), u.host != nil else { return false }
        return true
    }

    static func matches(_ s: String, _ pattern: String) -> Bool {
        s.range(of: pattern, options: .regularExpression) != nil
    }

    // MARK: YAML

    /// Reads a recipe file. Unknown keys, wrong types and unreadable `source`/`key` files are errors naming them.
    public static func load(path: String) throws -> RootfsRecipe {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ImageBuildError("cannot read recipe \(path)") }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            return try parse(yaml: text, baseDirectory: base, defaultTitle: URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)
        } catch let e as ImageBuildError {
            throw ImageBuildError("\(path): \(e.description)")
        }
    }

    /// Parses recipe YAML; relative `source` and `key` paths are taken from `baseDirectory`.
    public static func parse(yaml: String, baseDirectory: String, defaultTitle: String = "root filesystem") throws -> RootfsRecipe {
        let node: Node?
        do { node = try Yams.compose(yaml: yaml) } catch { throw ImageBuildError("not valid YAML: \(error)") }
        guard let node else { throw ImageBuildError("the recipe is empty") }
        let top = try Fields(node, "recipe", allowed: ["title", "suite", "mirror", "variant", "hostname", "docs", "packages", "sources", "files", "users", "services", "images"])
        var r = RootfsRecipe(title: try top.string("title") ?? defaultTitle)
        if let v = try top.string("suite") { r.suite = v }
        r.mirror = try top.string("mirror")
        if let v = try top.string("variant") { r.variant = v }
        if let v = try top.string("hostname") { r.hostname = v }
        if let v = try top.bool("docs") { r.docs = v }
        r.packages = try top.strings("packages")
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : "\(baseDirectory)/\(p)" }
        for (i, item) in try top.list("sources").enumerated() {
            let f = try Fields(item, "sources[\(i)]", allowed: ["line", "key"])
            guard let line = try f.string("line") else { throw ImageBuildError("sources[\(i)]: line is required") }
            r.sources.append(PackageSource(line: line, key: try f.string("key").map(resolve)))
        }
        for (i, item) in try top.list("files").enumerated() {
            let f = try Fields(item, "files[\(i)]", allowed: ["path", "content", "source", "mode", "owner"])
            guard let path = try f.string("path") else { throw ImageBuildError("files[\(i)]: path is required") }
            let content: Data
            switch (try f.string("content"), try f.string("source")) {
            case (let c?, nil): content = Data(c.utf8)
            case (nil, let s?):
                guard let d = FileManager.default.contents(atPath: resolve(s)) else { throw ImageBuildError("files[\(i)] (\(path)): cannot read source \(resolve(s))") }
                content = d
            default: throw ImageBuildError("files[\(i)] (\(path)): give exactly one of content and source")
            }
            var mode: UInt32 = 0o644
            if let m = try f.string("mode") {
                guard let v = UInt32(m, radix: 8) else { throw ImageBuildError("files[\(i)] (\(path)): mode \"\(m)\" is not octal, e.g. \"0644\"") }
                mode = v
            }
            r.files.append(File(path: path, content: content, mode: mode, owner: try f.string("owner") ?? "root:root"))
        }
        for (i, item) in try top.list("users").enumerated() {
            let f = try Fields(item, "users[\(i)]", allowed: ["name", "groups", "shell", "sudo", "ssh_authorized_keys"])
            guard let name = try f.string("name") else { throw ImageBuildError("users[\(i)]: name is required") }
            var u = User(name: name)
            u.groups = try f.strings("groups")
            if let s = try f.string("shell") { u.shell = s }
            u.sudo = try f.bool("sudo") ?? false
            u.sshAuthorizedKeys = try f.strings("ssh_authorized_keys")
            r.users.append(u)
        }
        for (i, item) in try top.list("images").enumerated() {
            let f = try Fields(item, "images[\(i)]", allowed: ["name", "layout", "tag"])
            guard let name = try f.string("name"), let layout = try f.string("layout") else { throw ImageBuildError("images[\(i)]: name and layout are required") }
            r.images.append(PreloadImage(name: name, layout: resolve(layout), tag: try f.string("tag")))
        }
        if let services = top.node("services") {
            let f = try Fields(services, "services", allowed: ["enable", "disable"])
            r.enableServices = try f.strings("enable")
            r.disableServices = try f.strings("disable")
        }
        return r
    }

    /// The recipe as YAML that `parse(yaml:baseDirectory:)` reads back (file contents inline, keys by path).
    public func yaml() -> String {
        func s(_ v: String) -> Node { Node(v) }
        func list(_ v: [String]) -> Node { Node.sequence(.init(v.map { Node($0) })) }
        var top: [(Node, Node)] = [(s("title"), s(title)), (s("suite"), s(suite))]
        if let mirror { top.append((s("mirror"), s(mirror))) }
        top += [(s("variant"), s(variant)), (s("hostname"), s(hostname)),
                (s("docs"), Node(docs ? "true" : "false", Tag(.bool))), (s("packages"), list(packages))]
        if !sources.isEmpty {
            top.append((s("sources"), .sequence(.init(sources.map { src in
                var m: [(Node, Node)] = [(s("line"), s(src.line))]
                if let k = src.key { m.append((s("key"), s(k))) }
                return .mapping(.init(m))
            }))))
        }
        if !files.isEmpty {
            top.append((s("files"), .sequence(.init(files.map { f in
                .mapping(.init([(s("path"), s(f.path)), (s("mode"), s("0" + String(f.mode, radix: 8))), (s("owner"), s(f.owner)),
                                (s("content"), Node(String(decoding: f.content, as: UTF8.self), Tag(.str), .literal))]))
            }))))
        }
        if !users.isEmpty {
            top.append((s("users"), .sequence(.init(users.map { u in
                .mapping(.init([(s("name"), s(u.name)), (s("groups"), list(u.groups)), (s("shell"), s(u.shell)),
                                (s("sudo"), Node(u.sudo ? "true" : "false", Tag(.bool))), (s("ssh_authorized_keys"), list(u.sshAuthorizedKeys))]))
            }))))
        }
        top.append((s("services"), .mapping(.init([(s("enable"), list(enableServices)), (s("disable"), list(disableServices))]))))
        if !images.isEmpty {
            top.append((s("images"), .sequence(.init(images.map { image in
                var m: [(Node, Node)] = [(s("name"), s(image.name)), (s("layout"), s(image.layout))]
                if let t = image.tag { m.append((s("tag"), Node(t, Tag(.str), .doubleQuoted))) }
                return .mapping(.init(m))
            }))))
        }
        return (try? Yams.serialize(node: .mapping(.init(top)))) ?? ""
    }

    /// A YAML mapping whose keys are checked against a list.
    struct Fields {
        let mapping: Node.Mapping
        let context: String

        init(_ node: Node, _ context: String, allowed: Set<String>) throws {
            guard let m = node.mapping else { throw ImageBuildError("\(context) must be a mapping") }
            for key in m.keys {
                guard let k = key.string, allowed.contains(k) else {
                    throw ImageBuildError("\(context): unknown key \"\(key.string ?? "?")\" (known: \(allowed.sorted().joined(separator: ", ")))")
                }
            }
            mapping = m
            self.context = context
        }

        func node(_ key: String) -> Node? {
            guard let n = mapping[key] else { return nil }
            if n.scalar?.string == "" && n.scalar?.style == .plain { return nil } // `key:` with nothing
            return n
        }

        func string(_ key: String) throws -> String? {
            guard let n = node(key) else { return nil }
            guard let s = n.scalar?.string else { throw ImageBuildError("\(context).\(key) must be a string") }
            return s
        }

        func bool(_ key: String) throws -> Bool? {
            guard let n = node(key) else { return nil }
            guard let b = n.bool else { throw ImageBuildError("\(context).\(key) must be true or false") }
            return b
        }

        func list(_ key: String) throws -> [Node] {
            guard let n = node(key) else { return [] }
            guard let s = n.sequence else { throw ImageBuildError("\(context).\(key) must be a list") }
            return Array(s)
        }

        func strings(_ key: String) throws -> [String] {
            try list(key).enumerated().map { i, n in
                guard let s = n.scalar?.string else { throw ImageBuildError("\(context).\(key)[\(i)] must be a string") }
                return s
            }
        }
    }
}
