import Foundation
import HostSystem

/// Builds a root filesystem tree from Debian packages with mmdebstrap, then applies a recipe's files, users and
/// services, and removes what would make two builds differ (ssh host keys, the machine id, the host's resolv.conf).
///
/// Downloaded packages are kept in `<cacheDirectory>/debs/<suite>` and reused, so a warm build downloads nothing.
/// mmdebstrap runs with `SOURCE_DATE_EPOCH`, so users and logs it writes carry the same dates every time.
public struct DebianRootfs: Sendable {
    public var recipe: RootfsRecipe
    public var cacheDirectory: String
    public var workDirectory: String
    public var epoch: Int64
    public var progress: @Sendable (String) -> Void

    public init(recipe: RootfsRecipe, cacheDirectory: String, workDirectory: String, epoch: Int64,
                progress: @escaping @Sendable (String) -> Void) {
        self.recipe = recipe
        self.cacheDirectory = cacheDirectory
        self.workDirectory = workDirectory
        self.epoch = epoch
        self.progress = progress
    }

    /// Writes the tree into `directory` (replaced if it exists).
    public func write(to directory: String) async throws {
        try recipe.validate()
        let mmdebstrap: String
        do { mmdebstrap = try HostProcess.resolveExecutable("mmdebstrap") } catch {
            throw ImageBuildError("mmdebstrap not found: install it (apt-get install mmdebstrap)")
        }
        guard getuid() == 0 else { throw ImageBuildError("building a Debian root filesystem needs root (mmdebstrap --mode=root and chroot)") }
        let mirrors = try archiveSources()
        let extra = try recipe.sources.enumerated().map { i, s in try hostSourceLine(s, index: i) }
        try await checkReachable(mirrors.map { ($0, "the Debian archive") } + zip(extra, recipe.sources).map { ($0.0, "package source \"\($0.1.line)\"") })

        let debs = "\(cacheDirectory)/debs/\(recipe.suite)"
        try HostFiles.createDirectory(debs)
        try HostFiles.remove(directory)
        var argv = [mmdebstrap, "--mode=root", "--format=directory", "--variant=\(recipe.variant)",
                    "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
                    "--setup-hook=sync-in \(debs) /var/cache/apt/archives/",
                    "--customize-hook=sync-out /var/cache/apt/archives \(debs)"]
        if !recipe.docs {
            for dir in ["doc", "man", "info", "locale", "help", "lintian", "linda"] { argv.append("--dpkgopt=path-exclude=/usr/share/\(dir)/*") }
            argv.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        }
        if !recipe.packages.isEmpty { argv.append("--include=" + recipe.packages.joined(separator: ",")) }
        argv += [recipe.suite, directory] + mirrors + extra
        progress("mmdebstrap \(recipe.suite) (\(recipe.variant)) with \(recipe.packages.count) packages")
        var env = ProcessInfo.processInfo.environment
        env["SOURCE_DATE_EPOCH"] = String(epoch)
        env["LC_ALL"] = "C.UTF-8"
        let progress = self.progress
        let (status, output) = try await HostProcess.runCapturing(argv, environment: env) { line in
            if line.hasPrefix("I: ") || line.hasPrefix("E: ") || line.hasPrefix("W: ") { progress("mmdebstrap: \(line.dropFirst(3))") }
        }
        guard status == .exited(0) else { throw Self.explain(output: output, status: status, suite: recipe.suite) }
        try await customize(directory)
    }

    /// A failed mmdebstrap run as an error that names what was wrong when apt said so.
    static func explain(output: String, status: HostProcess.Termination, suite: String) -> ImageBuildError {
        let lines = output.split(separator: "\n").map(String.init)
        for line in lines {
            if let r = line.range(of: "Unable to locate package ") {
                return ImageBuildError("unknown package \"\(line[r.upperBound...].trimmingCharacters(in: .whitespaces))\": not in \(suite) or the recipe's sources")
            }
            if line.hasPrefix("E: Package '"), line.contains("has no installation candidate") {
                return ImageBuildError("package \(line.dropFirst(3)) (in \(suite) or the recipe's sources)")
            }
        }
        let errors = lines.filter { $0.hasPrefix("E: ") }.suffix(3).joined(separator: "\n")
        return ImageBuildError("mmdebstrap \(status)" + (errors.isEmpty ? "" : ":\n" + errors))
    }

    // MARK: Sources

    /// One-line entries for the Debian archive: the recipe's mirror, else the host's apt sources for the suite and
    /// its -updates and -security suites, else deb.debian.org.
    func archiveSources() throws -> [String] {
        if let mirror = recipe.mirror { return ["deb \(mirror) \(recipe.suite) main"] }
        // The host's entries for Debian's own archive (a mirror of it included), not third-party
        // repositories that happen to serve the same suite: their keys are not in the image.
        let host = AptSources.hostEntries().filter {
            [recipe.suite, "\(recipe.suite)-updates", "\(recipe.suite)-security"].contains($0.suite) && AptSources.isDebianArchive($0.line)
        }
        if !host.isEmpty { return host.map(\.line) }
        return ["deb http://deb.debian.org/debian \(recipe.suite) main",
                "deb http://deb.debian.org/debian-security \(recipe.suite)-security main"]
    }

    /// The recipe's source line with `signed-by=` pointing at its key on this machine.
    func hostSourceLine(_ source: RootfsRecipe.PackageSource, index: Int) throws -> String {
        let p = try RootfsRecipe.parseSourceLine(source.line, field: "sources[\(index)].line")
        var options = p.options.map { [$0] } ?? []
        if let key = source.key { options.append("signed-by=\(URL(fileURLWithPath: key).standardizedFileURL.path)") }
        return AptSources.line(options: options, uri: p.uri, suite: p.suite, components: p.components)
    }

    /// Fails at once, naming the source, when an archive's Release file cannot be fetched.
    func checkReachable(_ sources: [(line: String, what: String)]) async throws {
        for (line, what) in sources {
            let p = try RootfsRecipe.parseSourceLine(line, field: what)
            let base = p.uri.hasSuffix("/") ? String(p.uri.dropLast()) : p.uri
            let dir = p.suite.hasSuffix("/") ? "\(base)/\(p.suite == "/" ? "" : p.suite)" : "\(base)/dists/\(p.suite)/"
            progress("checking \(dir)InRelease")
            var lastError = ""
            var reachable = false
            for file in ["InRelease", "Release"] {
                let (status, out) = try await HostProcess.runCapturing(["curl", "-fsS", "-o", "/dev/null", "--connect-timeout", "10", "--max-time", "30", "\(dir)\(file)"])
                if status == .exited(0) { reachable = true; break }
                lastError = out.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            guard reachable else { throw ImageBuildError("\(what) is unreachable: \(dir)InRelease: \(lastError)") }
        }
    }

    // MARK: Customizing

    func customize(_ root: String) async throws {
        progress("applying the recipe: hostname, \(recipe.files.count) files, \(recipe.users.count) users, \(recipe.enableServices.count + recipe.disableServices.count) services")
        // Files that differ between machines or builds.
        try write(root, "/etc/hostname", Data("\(recipe.hostname)\n".utf8))
        try write(root, "/etc/hosts", Data("127.0.0.1\tlocalhost\n127.0.1.1\t\(recipe.hostname)\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n".utf8))
        try HostFiles.remove("\(root)/etc/resolv.conf")
        try write(root, "/etc/resolv.conf", Data())
        try write(root, "/etc/machine-id", Data())
        try HostFiles.remove("\(root)/var/lib/dbus/machine-id")
        if HostFiles.exists("\(root)/etc/ssh") {
            for name in try FileManager.default.contentsOfDirectory(atPath: "\(root)/etc/ssh") where name.hasPrefix("ssh_host_") {
                try HostFiles.remove("\(root)/etc/ssh/\(name)")
            }
            if HostFiles.exists("\(root)/usr/sbin/sshd") {
                try write(root, "/etc/systemd/system/lm-ssh-host-keys.service", Data(Self.sshHostKeysUnit.utf8))
                try await chroot(root, ["systemctl", "enable", "lm-ssh-host-keys.service"])
            }
        }
        try writeAptSources(root)
        if !HostFiles.exists("\(root)/etc/fstab") || (try? String(contentsOfFile: "\(root)/etc/fstab", encoding: .utf8))?.contains("UNCONFIGURED") == true {
            try write(root, "/etc/fstab", Data("# The root disk the host agent attaches (mounted read-write by the initrd).\n/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t0\n".utf8))
        }

        for user in recipe.users {
            var argv = ["useradd", "--create-home", "--shell", user.shell, "--user-group"]
            if !user.groups.isEmpty { argv += ["--groups", user.groups.joined(separator: ",")] }
            try await chroot(root, argv + [user.name], what: "user \(user.name)")
            if user.sudo {
                try write(root, "/etc/sudoers.d/90-\(user.name)", Data("\(user.name) ALL=(ALL) NOPASSWD:ALL\n".utf8), mode: 0o440)
            }
            if !user.sshAuthorizedKeys.isEmpty {
                let home = "/home/\(user.name)"
                try write(root, "\(home)/.ssh/authorized_keys", Data((user.sshAuthorizedKeys.joined(separator: "\n") + "\n").utf8), mode: 0o600)
                try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: try Self.hostPath(of: "\(home)/.ssh", in: root))
                try await chroot(root, ["chown", "-R", "\(user.name):\(user.name)", "\(home)/.ssh"], what: "user \(user.name)")
            }
        }
        for file in recipe.files {
            try write(root, file.path, file.content, mode: file.mode)
            if file.owner != "root:root" { try await chroot(root, ["chown", file.owner, file.path], what: "file \(file.path)") }
        }
        if !recipe.images.isEmpty {
            guard HostFiles.exists(try Self.hostPath(of: "/usr/bin/ctr", in: root)) else {
                throw ImageBuildError("preloaded images need containerd in the image (package containerd): /usr/bin/ctr is missing")
            }
            let bytes = try PreloadedImages.write(recipe.images, into: root) { path, data, mode in try write(root, path, data, mode: mode) }
            try await chroot(root, ["systemctl", "enable", PreloadedImages.unitName], what: "service \(PreloadedImages.unitName)")
            progress("preloaded \(recipe.images.count) container images (\(bytes / 1_048_576) MiB) for containerd's k8s.io namespace")
        }
        for service in recipe.enableServices {
            try await chroot(root, ["systemctl", "enable", service], what: "service \(service)")
        }
        for service in recipe.disableServices {
            try await chroot(root, ["systemctl", "disable", service], what: "service \(service)")
        }
    }

    /// /etc/apt/sources.list as the guest should see it, with the recipe's keys under /etc/apt/keyrings.
    func writeAptSources(_ root: String) throws {
        var lines = try archiveSources()
        for (i, s) in recipe.sources.enumerated() {
            let p = try RootfsRecipe.parseSourceLine(s.line, field: "sources[\(i)].line")
            var options = p.options.map { [$0] } ?? []
            if let key = s.key, let data = FileManager.default.contents(atPath: key) {
                let ext = String(decoding: data.prefix(64), as: UTF8.self).contains("-----BEGIN PGP") ? "asc" : "gpg"
                let inImage = "/etc/apt/keyrings/liquidmetal-source-\(i).\(ext)"
                try write(root, inImage, data)
                options.append("signed-by=\(inImage)")
            }
            lines.append(AptSources.line(options: options, uri: p.uri, suite: p.suite, components: p.components))
        }
        try write(root, "/etc/apt/sources.list", Data(("# Written by lmctl image build.\n" + lines.joined(separator: "\n") + "\n").utf8))
    }

    func write(_ root: String, _ path: String, _ data: Data, mode: UInt32 = 0o644) throws {
        let full = try Self.hostPath(of: path, in: root)
        try HostFiles.createDirectory(URL(fileURLWithPath: full).deletingLastPathComponent().path)
        if let attrs = try? FileManager.default.attributesOfItem(atPath: full), attrs[.type] as? FileAttributeType == .typeSymbolicLink {
            try FileManager.default.removeItem(atPath: full)
        }
        try data.write(to: URL(fileURLWithPath: full))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: full)
    }

    /// Where `path` of the image is on this machine: every directory on the way is resolved as the
    /// image sees it (a symlink, absolute ones included, stays inside `root`; Debian has
    /// `/var/run -> /run`), so that a write never lands on the host. The last component is not
    /// followed (`write` replaces a symlink there).
    static func hostPath(of path: String, in root: String) throws -> String {
        var pending = path.split(separator: "/").map(String.init)
        guard let last = pending.popLast(), last != ".", last != ".." else { throw ImageBuildError("\(path) is not a file path") }
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let c = pending.removeFirst()
            if c == "." { continue }
            if c == ".." { _ = resolved.popLast(); continue }
            let candidate = root + "/" + (resolved + [c]).joined(separator: "/")
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: candidate) else {
                resolved.append(c)
                continue
            }
            hops += 1
            guard hops <= 40 else { throw ImageBuildError("\(path): too many symbolic links in the image") }
            if target.hasPrefix("/") { resolved = [] }
            pending = target.split(separator: "/").map(String.init) + pending
        }
        return root + "/" + (resolved + [last]).joined(separator: "/")
    }

    func chroot(_ root: String, _ argv: [String], what: String? = nil) async throws {
        var env = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": String(epoch)]
        env["SYSTEMD_OFFLINE"] = "1"
        let (status, out) = try await HostProcess.runCapturing(["chroot", root] + argv, environment: env)
        guard status == .exited(0) else {
            let msg = out.trimmingCharacters(in: .whitespacesAndNewlines)
            throw ImageBuildError("\(what.map { "recipe \($0): " } ?? "")\(argv.joined(separator: " ")) failed in the image (\(status))" + (msg.isEmpty ? "" : ": \(msg)"))
        }
    }

    /// Makes ssh host keys on first boot: the image ships none, so that every guest gets its own.
    static let sshHostKeysUnit = """
        # Written by lmctl image build: the image ships no ssh host keys, so that each guest makes its own.
        [Unit]
        Description=Generate ssh host keys (Liquid Metal)
        ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
        Before=ssh.service
        After=cloud-init.service

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/ssh-keygen -A

        [Install]
        WantedBy=multi-user.target

        """
}

/// The host's apt sources (one-line `.list` files and deb822 `.sources` files), as one-line entries.
enum AptSources {
    struct Entry: Equatable { var line: String; var suite: String }

    /// A one-line apt source: `deb [OPTIONS] URI SUITE [COMPONENT...]`.
    static func line(options: [String], uri: String, suite: String, components: [String]) -> String {
        let opts = options.isEmpty ? "" : "[\(options.joined(separator: " "))] "
        return "deb \(opts)\(uri) \(suite)" + (components.isEmpty ? "" : " " + components.joined(separator: " "))
    }

    /// Whether a source line is Debian's archive (or a mirror of it): a path segment `debian` or
    /// `debian-security`, and Debian's archive key or none named (apt's default keyring).
    static func isDebianArchive(_ line: String) -> Bool {
        guard let p = try? RootfsRecipe.parseSourceLine(line, field: "host source"), let url = URL(string: p.uri) else { return false }
        let segments = url.path.split(separator: "/")
        guard segments.contains("debian") || segments.contains("debian-security") else { return false }
        guard let signedBy = p.options?.split(separator: " ").first(where: { $0.hasPrefix("signed-by=") }) else { return true }
        return signedBy.contains("debian-archive-keyring")
    }

    static func hostEntries(root: String = "") -> [Entry] {
        var result: [Entry] = []
        let dir = "\(root)/etc/apt/sources.list.d"
        var lists = ["\(root)/etc/apt/sources.list"]
        var deb822: [String] = []
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
            if name.hasSuffix(".list") { lists.append("\(dir)/\(name)") }
            if name.hasSuffix(".sources") { deb822.append("\(dir)/\(name)") }
        }
        for file in lists {
            for line in ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n") {
                let l = line.trimmingCharacters(in: .whitespaces)
                guard l.hasPrefix("deb "), let p = try? RootfsRecipe.parseSourceLine(l, field: file) else { continue }
                result.append(Entry(line: l, suite: p.suite))
            }
        }
        for file in deb822 { result += parseDeb822((try? String(contentsOfFile: file, encoding: .utf8)) ?? "") }
        return result
    }

    /// Entries of a deb822 sources file: one per type `deb`, URI and suite.
    static func parseDeb822(_ text: String) -> [Entry] {
        var result: [Entry] = []
        for stanza in text.components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            var last: String?
            for raw in stanza.split(separator: "\n") {
                if raw.hasPrefix("#") { continue }
                if raw.first == " " || raw.first == "\t", let k = last { fields[k, default: ""] += " " + raw.trimmingCharacters(in: .whitespaces); continue }
                guard let colon = raw.firstIndex(of: ":") else { continue }
                let key = raw[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
                fields[key] = raw[raw.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                last = key
            }
            guard fields["enabled"]?.lowercased() != "no",
                  (fields["types"] ?? "").split(separator: " ").contains("deb") else { continue }
            let uris = (fields["uris"] ?? "").split(separator: " ").map(String.init)
            let suites = (fields["suites"] ?? "").split(separator: " ").map(String.init)
            let components = (fields["components"] ?? "").split(separator: " ").map(String.init)
            var options: [String] = []
            if let k = fields["signed-by"], k.hasPrefix("/"), !k.contains(" ") { options.append("signed-by=\(k)") }
            for uri in uris {
                for suite in suites {
                    result.append(Entry(line: line(options: options, uri: uri, suite: suite, components: components), suite: suite))
                }
            }
        }
        return result
    }
}
