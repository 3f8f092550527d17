#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem
import TestSupport

/// A stand-in for pkgs.k8s.io, which these machines cannot reach: a signed flat apt repository
/// (`deb URI /`, the layout pkgs.k8s.io uses) on loopback, holding packages with the real ones'
/// names, dependencies and the files the k8s-node preset relies on (kubelet's systemd unit and
/// kubeadm's drop-in), whose programs only print a version. Signed with a key made for the test,
/// so that `--package-source-key` is exercised the way users give pkgs.k8s.io's Release.key.
struct KubernetesRepositoryDouble {
    static let version = "1.31.0-1.1"
    var directory: String
    var port: Int
    var pid: pid_t
    /// The armored public key that signs the repository's InRelease.
    var keyFile: String { "\(directory)/Release.key" }
    var sourceLine: String { "deb http://127.0.0.1:\(port)/ /" }

    /// Builds the repository under `directory` and serves it on 127.0.0.1 (a free port).
    static func start(in directory: String) async throws -> KubernetesRepositoryDouble {
        try HostFiles.remove(directory)
        let repo = "\(directory)/repo"
        try HostFiles.createDirectory(repo)
        for package in packages {
            try await buildDeb(package, stage: "\(directory)/stage/\(package.name)", into: repo)
        }
        try await HostProcess.run(["sh", "-c", "cd '\(repo)' && apt-ftparchive packages . > Packages && gzip -9kn Packages && apt-ftparchive -o APT::FTPArchive::Release::Origin=lm-test-k8s release . > Release"])
        // A throwaway signing key, as the real repository's Release.key.
        let gnupg = "\(directory)/gnupg"
        try HostFiles.createDirectory(gnupg)
        chmod(gnupg, 0o700)
        let gpg = ["gpg", "--homedir", gnupg, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        try await HostProcess.run(gpg + ["--quick-gen-key", "Liquid Metal test repository <lm-test@invalid>", "ed25519", "sign", "1d"])
        try await HostProcess.run(gpg + ["--armor", "--output", "\(directory)/Release.key", "--export", "lm-test@invalid"])
        try await HostProcess.run(gpg + ["--clearsign", "--output", "\(repo)/InRelease", "\(repo)/Release"])
        try await HostProcess.run(gpg + ["--armor", "--detach-sign", "--output", "\(repo)/Release.gpg", "\(repo)/Release"])

        for _ in 0..<20 {
            let port = Int.random(in: 20000..<30000)
            let log = open("\(directory)/http.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            let pid = try HostProcess.spawn(["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", repo, String(port)], stdout: log, stderr: log)
            close(log)
            for _ in 0..<50 {
                if (try? await HostProcess.run(["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:\(port)/InRelease"])) != nil {
                    return KubernetesRepositoryDouble(directory: directory, port: port, pid: pid)
                }
                if HostProcess.reapIfExited(pid) != nil { break }  // port taken: try another
                try await Task.sleep(for: .milliseconds(100))
            }
            kill(pid, SIGKILL)
            _ = HostProcess.waitFor(pid)
        }
        throw TestEnvironmentError("the package repository double did not start; see \(directory)/http.log")
    }

    func stop() {
        kill(pid, SIGTERM)
        _ = HostProcess.waitFor(pid)
        // gpg started an agent for the signing key's home: stop it too.
        if let p = try? HostProcess.spawn(["gpgconf", "--homedir", "\(directory)/gnupg", "--kill", "gpg-agent"]) { _ = HostProcess.waitFor(p) }
    }

    struct Package {
        var name: String
        var depends: String
        var files: [(path: String, text: String, mode: Int)]
    }

    static func program(_ name: String) -> (String, String, Int) {
        ("/usr/bin/\(name)", "#!/bin/sh\n# test double of \(name) (Liquid Metal's tests; the real one is at pkgs.k8s.io)\necho \"\(name) v\(version) (test double)\"\n", 0o755)
    }

    /// What the real packages ship that the image relies on; names and dependencies as pkgs.k8s.io's.
    static let packages: [Package] = [
        Package(name: "kubelet", depends: "iptables (>= 1.4.21), mount, util-linux, conntrack, ethtool, socat, iproute2", files: [
            program("kubelet"),
            ("/usr/lib/systemd/system/kubelet.service", """
                [Unit]
                Description=kubelet: The Kubernetes Node Agent
                Documentation=https://kubernetes.io/docs/
                Wants=network-online.target
                After=network-online.target

                [Service]
                ExecStart=/usr/bin/kubelet
                Restart=always
                StartLimitInterval=0
                RestartSec=10

                [Install]
                WantedBy=multi-user.target

                """, 0o644),
        ]),
        Package(name: "kubectl", depends: "", files: [program("kubectl")]),
        Package(name: "cri-tools", depends: "", files: [program("crictl")]),
        Package(name: "kubernetes-cni", depends: "", files: [("/opt/cni/bin/loopback", "#!/bin/sh\nexit 0\n", 0o755)]),
        Package(name: "kubeadm", depends: "cri-tools (>= 1.30.0), kubelet, kubectl, kubernetes-cni", files: [
            program("kubeadm"),
            ("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf", """
                [Service]
                Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
                Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
                ExecStart=
                ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS

                """, 0o644),
        ]),
    ]

    static func buildDeb(_ p: Package, stage: String, into repo: String) async throws {
        try HostFiles.remove(stage)
        try HostFiles.createDirectory("\(stage)/DEBIAN")
        var control = """
            Package: \(p.name)
            Version: \(version)
            Architecture: amd64
            Maintainer: Liquid Metal tests <lm-test@invalid>
            Description: test double of \(p.name) from pkgs.k8s.io

            """
        if !p.depends.isEmpty { control = control.replacingOccurrences(of: "Architecture:", with: "Depends: \(p.depends)\nArchitecture:") }
        try Data(control.utf8).write(to: URL(fileURLWithPath: "\(stage)/DEBIAN/control"))
        for f in p.files {
            let path = stage + f.path
            try HostFiles.createDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
            try Data(f.text.utf8).write(to: URL(fileURLWithPath: path))
            chmod(path, mode_t(f.mode))
        }
        try await HostProcess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", stage, "\(repo)/\(p.name)_\(version)_amd64.deb"])
    }
}
