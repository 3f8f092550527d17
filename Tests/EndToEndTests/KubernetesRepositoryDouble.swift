#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostSystem
import TestSupport

/// A stand-in for pkgs.k8s.io, which these machines cannot reach: the signed flat apt repository
/// `scripts/k8s-apt-repo.sh` makes (the layout, package names, files and dependencies of
/// pkgs.k8s.io: kubelet's systemd unit, kubeadm's drop-in), here from stand-in programs that only
/// print a version, served on loopback. Signed with a key made for it, so that
/// `--package-source-key` is exercised the way users give pkgs.k8s.io's Release.key.
/// `scripts/e2e-cluster.sh` builds the same repository from the real binaries.
struct KubernetesRepositoryDouble {
    /// The stand-ins' Kubernetes version (below v1.32, so kubeadm depends on cri-tools, as then).
    static let kubernetesVersion = "1.31.0"
    static let version = "\(kubernetesVersion)-1.1"
    var directory: String
    var port: Int
    var pid: pid_t
    /// The armored public key that signs the repository's InRelease.
    var keyFile: String { "\(directory)/Release.key" }
    var sourceLine: String { "deb http://127.0.0.1:\(port)/ /" }

    /// Builds the repository under `directory` and serves it on 127.0.0.1 (a free port).
    static func start(in directory: String) async throws -> KubernetesRepositoryDouble {
        try HostFiles.remove(directory)
        let bin = "\(directory)/bin", cni = "\(directory)/cni"
        try HostFiles.createDirectory(bin)
        try HostFiles.createDirectory(cni)
        for name in ["kubelet", "kubeadm", "kubectl", "crictl"] {
            try Data("#!/bin/sh\n# stand-in for \(name) (Liquid Metal's tests; the real one is at pkgs.k8s.io)\necho \"\(name) v\(version) (stand-in)\"\n".utf8)
                .write(to: URL(fileURLWithPath: "\(bin)/\(name)"))
            chmod("\(bin)/\(name)", 0o755)
        }
        try Data("#!/bin/sh\nexit 0\n".utf8).write(to: URL(fileURLWithPath: "\(cni)/loopback"))
        chmod("\(cni)/loopback", 0o755)
        try await HostProcess.run(["\(TestEnvironment.packageRoot)/scripts/k8s-apt-repo.sh", "--bin", bin, "--cni", cni, "--cni-version", "1.5.1",
                                   "--version", kubernetesVersion, "--out", directory])
        let repo = "\(directory)/repo"

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
    }
}
