import Foundation
import HostSystem

/// An image that runs one program (for example the capmvm controller): the executable, the shared
/// libraries it needs when it is not statically linked (as `ldd` lists them), the host's CA bundle for
/// TLS, and `/etc/passwd` with an unprivileged user it runs as.
public struct ApplicationImage: Sendable {
    /// The executable on this machine.
    public var binary: String
    /// Where it goes in the image (the entrypoint), e.g. "/capmvm".
    public var path: String
    /// "uid:gid" the program runs as.
    public var user: String
    /// Arguments after the entrypoint (the image's Cmd).
    public var arguments: [String]

    public init(binary: String, path: String? = nil, user: String = "65532:65532", arguments: [String] = []) {
        self.binary = binary
        self.path = path ?? "/" + URL(fileURLWithPath: binary).lastPathComponent
        self.user = user
        self.arguments = arguments
    }

    /// Writes the tree into `directory`; returns the libraries it copied (empty for a static binary).
    func write(to directory: String) async throws -> [String] {
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw ImageBuildError("\(binary) is not an executable file") }
        guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else { throw ImageBuildError("--path \(path) must be absolute") }
        try place(binary, at: path, in: directory, mode: 0o755)
        // Shared libraries: ldd prints "name => /path (addr)" and the interpreter "/lib64/ld-linux... (addr)".
        let (status, out) = try await HostProcess.runCapturing(["ldd", binary])
        var libraries: [String] = []
        if status == .exited(0) {
            for line in out.split(separator: "\n") {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
                if line.contains("=> not found") {
                    throw ImageBuildError("\(binary) needs \(fields.first ?? "a library") that this machine does not have (ldd: not found); the image could not run it")
                }
                if let arrow = fields.firstIndex(of: "=>"), arrow + 1 < fields.count, fields[arrow + 1].hasPrefix("/") {
                    libraries.append(fields[arrow + 1])
                } else if let first = fields.first, first.hasPrefix("/") {
                    libraries.append(first)
                }
            }
        }
        for lib in libraries {
            try place(URL(fileURLWithPath: lib).resolvingSymlinksInPath().path, at: lib, in: directory, mode: 0o755)
        }
        guard user.wholeMatch(of: /[0-9]+(:[0-9]+)?/) != nil else { throw ImageBuildError("user \"\(user)\" must be UID or UID:GID (numbers)") }
        let (uid, gid) = (user.split(separator: ":").first.map(String.init) ?? "65532", user.split(separator: ":").last.map(String.init) ?? "65532")
        try write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:\(uid):\(gid):nonroot:/home/nonroot:/sbin/nologin\n", to: "\(directory)/etc/passwd")
        try write("root:x:0:\nnonroot:x:\(gid):\n", to: "\(directory)/etc/group")
        if let bundle = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"].first(where: { HostFiles.exists($0) }) {
            try place(bundle, at: "/etc/ssl/certs/ca-certificates.crt", in: directory, mode: 0o644)
        }
        for (dir, mode) in [("tmp", 0o1777), ("home/nonroot", 0o755)] {
            try HostFiles.createDirectory("\(directory)/\(dir)")
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: "\(directory)/\(dir)")
        }
        return libraries
    }

    func place(_ source: String, at path: String, in directory: String, mode: Int) throws {
        let target = directory + path
        try HostFiles.createDirectory(URL(fileURLWithPath: target).deletingLastPathComponent().path)
        try? FileManager.default.removeItem(atPath: target)
        try FileManager.default.copyItem(atPath: source, toPath: target)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: target)
    }

    func write(_ text: String, to file: String) throws {
        try HostFiles.createDirectory(URL(fileURLWithPath: file).deletingLastPathComponent().path)
        try Data(text.utf8).write(to: URL(fileURLWithPath: file))
    }
}
