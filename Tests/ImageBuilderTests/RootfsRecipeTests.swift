import Foundation
import HostSystem
import Testing
@testable import ImageBuilder

@Suite("Root filesystem recipes")
struct RootfsRecipeTests {
    func tempDir() throws -> String { try makeTemporaryDirectory("lm-recipe") }

    @Test("a full recipe parses: files from content and from a source file, users, services, sources with keys")
    func parsesFullRecipe() throws {
        let dir = try tempDir()
        defer { try? HostFiles.remove(dir) }
        try Data("#!/bin/sh\necho hi\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/hello.sh"))
        try Data("-----BEGIN PGP PUBLIC KEY BLOCK-----\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/repo.asc"))
        let yaml = """
            title: test guest
            suite: bookworm
            mirror: http://127.0.0.1:8080/debian
            variant: minbase
            hostname: node-1
            docs: true
            packages: [systemd-sysv, openssh-server, "containerd=1.6.20~ds1-1+deb12u3"]
            sources:
              - line: deb https://pkgs.example.test/deb/ /
                key: repo.asc
            files:
              - path: /usr/local/bin/hello
                source: hello.sh
                mode: "0755"
              - path: /etc/motd
                content: |
                  welcome
                owner: root:adm
            users:
              - name: ops
                groups: [sudo, adm]
                shell: /bin/sh
                sudo: true
                ssh_authorized_keys: ["ssh-ed25519 AAAAC3Nza ops@laptop"]
            services:
              enable: [ssh.service]
              disable: [apt-daily.timer]
            """
        let r = try RootfsRecipe.parse(yaml: yaml, baseDirectory: dir)
        #expect(r.title == "test guest")
        #expect(r.mirror == "http://127.0.0.1:8080/debian")
        #expect(r.hostname == "node-1")
        #expect(r.docs)
        #expect(r.packages == ["systemd-sysv", "openssh-server", "containerd=1.6.20~ds1-1+deb12u3"])
        #expect(r.sources == [.init(line: "deb https://pkgs.example.test/deb/ /", key: "\(dir)/repo.asc")])
        #expect(r.files.count == 2)
        #expect(r.files[0].path == "/usr/local/bin/hello" && r.files[0].mode == 0o755)
        #expect(String(decoding: r.files[0].content, as: UTF8.self) == "#!/bin/sh\necho hi\n")
        #expect(r.files[1].owner == "root:adm" && r.files[1].mode == 0o644)
        #expect(r.users == [.init(name: "ops", groups: ["sudo", "adm"], shell: "/bin/sh", sudo: true, sshAuthorizedKeys: ["ssh-ed25519 AAAAC3Nza ops@laptop"])])
        #expect(r.enableServices == ["ssh.service"] && r.disableServices == ["apt-daily.timer"])
        try r.validate()
        // What --print-recipe prints reads back to the same recipe.
        let again = try RootfsRecipe.parse(yaml: r.yaml(), baseDirectory: "/")
        #expect(again == r)
    }

    @Test("defaults: bookworm, minbase, the host's archive, no docs")
    func defaults() throws {
        let r = try RootfsRecipe.parse(yaml: "packages: [less]\n", baseDirectory: "/", defaultTitle: "mine")
        #expect(r.title == "mine" && r.suite == "bookworm" && r.variant == "minbase" && r.mirror == nil && !r.docs)
    }

    @Test("bad recipes fail with a message that names the problem", arguments: [
        ("pakages: [less]\n", "unknown key \"pakages\""),
        ("packages: less\n", "packages must be a list"),
        ("packages: [Bad_Name]\n", "package \"Bad_Name\""),
        ("suite: Bookworm!\n", "suite \"Bookworm!\""),
        ("variant: huge\n", "variant \"huge\""),
        ("mirror: ftp://x\n", "mirror \"ftp://x\""),
        ("files:\n  - path: etc/x\n    content: y\n", "file path \"etc/x\""),
        ("files:\n  - path: /etc/x\n", "give exactly one of content and source"),
        ("files:\n  - path: /etc/x\n    source: nope.txt\n", "cannot read source"),
        ("files:\n  - path: /etc/x\n    content: y\n    mode: rw\n", "mode \"rw\""),
        ("files:\n  - path: /etc/x\n    content: y\n    colour: red\n", "unknown key \"colour\""),
        ("users:\n  - name: Root\n", "user name \"Root\""),
        ("users:\n  - name: a\n  - name: a\n", "user \"a\" is listed twice"),
        ("users:\n  - name: a\n    ssh_authorized_keys: [nokey]\n", "ssh_authorized_keys"),
        ("sources:\n  - line: http://x/ bookworm main\n", "must start with \"deb \""),
        ("sources:\n  - line: deb http://x/ bookworm\n", "names no component"),
        ("services:\n  enable: [\"a b\"]\n", "service \"a b\""),
        ("[unclosed\n", "not valid YAML"),
    ])
    func badRecipes(yaml: String, needle: String) throws {
        do {
            let r = try RootfsRecipe.parse(yaml: yaml, baseDirectory: "/nonexistent")
            try r.validate()
            Issue.record("\(yaml) was accepted")
        } catch let e as ImageBuildError {
            #expect(e.description.contains(needle), "\(e.description)")
        }
    }

    @Test("the presets are valid recipes; k8s-node carries the named source")
    func presets() throws {
        try RootfsPresets.cloud().validate()
        let source = RootfsRecipe.PackageSource(line: "deb [trusted=yes] http://127.0.0.1:1/k8s/ /", key: nil)
        let k8s = RootfsPresets.k8sNode(source: source)
        try k8s.validate()
        #expect(k8s.sources == [source])
        #expect(Set(["kubelet", "kubeadm", "kubectl", "containerd"]).isSubset(of: Set(k8s.packages)))
        #expect(k8s.enableServices.contains("kubelet.service"))
    }

    @Test("apt sources: one-line and deb822 entries of the host")
    func aptSources() throws {
        let deb822 = """
            Types: deb deb-src
            URIs: http://deb.debian.org/debian
            Suites: bookworm bookworm-updates
            Components: main contrib
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

            Types: deb
            URIs: http://deb.debian.org/debian-security
            Suites: bookworm-security
            Components: main
            Enabled: no
            """
        let entries = AptSources.parseDeb822(deb822)
        #expect(entries.map(\.line) == [
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main contrib",
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main contrib",
        ])
        let parsed = try RootfsRecipe.parseSourceLine("deb [arch=amd64 signed-by=/k.gpg] https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /", field: "x")
        #expect(parsed.options == "arch=amd64 signed-by=/k.gpg")
        #expect(parsed.uri == "https://pkgs.k8s.io/core:/stable:/v1.31/deb/" && parsed.suite == "/" && parsed.components.isEmpty)
        // Only Debian's archive (or a mirror of it) is taken from the host, not third-party repositories.
        #expect(entries.allSatisfy { AptSources.isDebianArchive($0.line) })
        #expect(AptSources.isDebianArchive("deb http://mirror.example/debian-security bookworm-security main"))
        #expect(AptSources.isDebianArchive("deb http://snapshot.debian.org/archive/debian/20250520T000000Z bookworm main"))
        #expect(!AptSources.isDebianArchive("deb [signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable"))
        #expect(!AptSources.isDebianArchive("deb https://packages.example.com/apt bookworm main"))
    }

    @Test("recipe files are written inside the image even through absolute symlinks (Debian's /var/run -> /run)")
    func pathsStayInTheImage() throws {
        let root = NSTemporaryDirectory() + "/lm-root-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: "\(root)/var", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(root)/run", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(root)/var/run", withDestinationPath: "/run")
        try FileManager.default.createSymbolicLink(atPath: "\(root)/up", withDestinationPath: "../../../../../../../tmp")
        #expect(try DebianRootfs.hostPath(of: "/var/run/x.conf", in: root) == "\(root)/run/x.conf")
        #expect(try DebianRootfs.hostPath(of: "/up/passwd", in: root) == "\(root)/tmp/passwd", "a relative link cannot climb out of the root")
        #expect(try DebianRootfs.hostPath(of: "/var/run", in: root) == "\(root)/var/run", "the last component is not followed")
    }

    @Test("mmdebstrap failures are explained: an unknown package is named")
    func explainsFailures() {
        let out = "I: running apt-get update...\nE: Unable to locate package nosuchpkg-xyz\nE: setup failed: E: apt-get ... failed\n"
        let e = DebianRootfs.explain(output: out, status: .exited(1), suite: "bookworm")
        #expect(e.description == "unknown package \"nosuchpkg-xyz\": not in bookworm or the recipe's sources")
        let other = DebianRootfs.explain(output: "E: mmdebstrap failed to run\n", status: .exited(1), suite: "bookworm")
        #expect(other.description.contains("mmdebstrap failed to run"))
    }
}
