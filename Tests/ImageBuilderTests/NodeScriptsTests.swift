import Foundation
import HostSystem
import Testing
import TestSupport
import Yams
@testable import ImageBuilder

@Suite("k8s-node preset: the lm-* commands cluster templates call")
struct NodeScriptsTests {
    static let preset = RootfsPresets.k8sNode(source: .init(line: "deb [trusted=yes] http://127.0.0.1:1/k8s/ /", key: nil))

    func file(_ path: String) throws -> String {
        let f = try #require(Self.preset.files.first { $0.path == path }, "\(path) is in the preset")
        return String(decoding: f.content, as: UTF8.self)
    }

    @Test("every lm-* command and unit the airgapped template names is in the image, executable; the scripts parse (sh -n)")
    func templateCommandsExist() async throws {
        let template = try String(contentsOfFile: TestEnvironment.packageRoot + "/templates/src/airgapped.yaml", encoding: .utf8)
        let named = Set(template.matches(of: /(?:^|[ "'])(lm-[a-z-]+(?:\.service)?)/.anchorsMatchLineEndings()).map { String($0.output.1) })
            .filter { !$0.hasPrefix("lm-guest") }
        #expect(named == ["lm-kubeadm-timeouts", "lm-registry-mirror", "lm-control-plane-address", "lm-bridge-cni.service", "lm-kubeadm-retry"], "\(named)")
        for name in named {
            let path = name.hasSuffix(".service") ? "/etc/systemd/system/\(name)" : "/usr/local/sbin/\(name)"
            let f = try #require(Self.preset.files.first { $0.path == path }, "\(path)")
            #expect(name.hasSuffix(".service") || f.mode == 0o755)
        }
        #expect(try file("/etc/systemd/system/lm-bridge-cni.service").contains("ExecStart=/usr/local/sbin/lm-bridge-cni"))
        for script in ["lm-kubeadm-timeouts", "lm-registry-mirror", "lm-control-plane-address", "lm-bridge-cni", "lm-kubeadm-retry"] {
            let dir = try makeTemporaryDirectory("lm-script")
            defer { try? HostFiles.remove(dir) }
            try Data(try file("/usr/local/sbin/\(script)").utf8).write(to: URL(fileURLWithPath: "\(dir)/s"))
            let (status, out) = try await HostProcess.runCapturing(["sh", "-n", "\(dir)/s"])
            #expect(status == .exited(0), "\(script): \(out)")
        }
    }

    @Test("lm-kubeadm-retry: nothing after a success or for init; after a failed join, reset and join again until one succeeds (sentinel written), or give up after the attempts")
    func kubeadmRetry() async throws {
        let dir = try makeTemporaryDirectory("lm-retry")
        defer { try? HostFiles.remove(dir) }
        try Data(try file("/usr/local/sbin/lm-kubeadm-retry").utf8).write(to: URL(fileURLWithPath: "\(dir)/lm-kubeadm-retry"))
        // A kubeadm stand-in: logs its arguments; "join" fails until $dir/joins-to-fail is used up.
        try Data("""
            #!/bin/sh
            echo "$*" >> \(dir)/calls
            [ "$1" = join ] || exit 0
            n=$(cat \(dir)/joins-to-fail); echo $((n - 1)) > \(dir)/joins-to-fail
            [ "$n" -le 0 ]

            """.utf8).write(to: URL(fileURLWithPath: "\(dir)/kubeadm"))
        try await HostProcess.run(["chmod", "+x", "\(dir)/kubeadm"])
        func run(_ args: String...) async throws -> (HostProcess.Termination, String, [String]) {
            var env = ProcessInfo.processInfo.environment
            env["LM_KUBEADM"] = "\(dir)/kubeadm"
            env["LM_KUBEADM_RUN"] = "\(dir)/kubeadm-run"
            env["LM_CLUSTER_API_RUN"] = "\(dir)/cluster-api"
            try? HostFiles.remove("\(dir)/calls")
            let (status, out) = try await HostProcess.runCapturing(["sh", "\(dir)/lm-kubeadm-retry"] + args, environment: env)
            let calls = (try? String(contentsOfFile: "\(dir)/calls", encoding: .utf8))?.split(separator: "\n").map(String.init) ?? []
            return (status, out, calls)
        }
        // kubeadm init failed (no join configuration): not retried, and said so.
        var (status, out, calls) = try await run("3", "0")
        #expect(status == .exited(1) && out.contains("kubeadm init is not retried") && calls.isEmpty, "\(out)")
        // A join that fails twice more: reset and join, three times; the sentinel is written.
        try HostFiles.createDirectory("\(dir)/kubeadm-run")
        try Data("kind: JoinConfiguration\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/kubeadm-run/kubeadm-join-config.yaml"))
        try Data("2\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/joins-to-fail"))
        (status, out, calls) = try await run("5", "0")
        #expect(status == .exited(0) && out.contains("joined on attempt 3"), "\(out)")
        #expect(calls == Array(repeating: ["reset -f", "join --config \(dir)/kubeadm-run/kubeadm-join-config.yaml"], count: 3).flatMap { $0 }, "\(calls)")
        #expect(try String(contentsOfFile: "\(dir)/cluster-api/bootstrap-success.complete", encoding: .utf8) == "success\n")
        // After a success (the sentinel is there): nothing.
        (status, out, calls) = try await run("5", "0")
        #expect(status == .exited(0) && calls.isEmpty, "\(out) \(calls)")
        // Fails every time: gives up after the attempts, no sentinel.
        try HostFiles.remove("\(dir)/cluster-api")
        try Data("100\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/joins-to-fail"))
        (status, out, calls) = try await run("2", "0")
        #expect(status == .exited(1) && out.contains("failed 2 more times; giving up") && calls.count == 4, "\(out) \(calls)")
        #expect(!HostFiles.exists("\(dir)/cluster-api/bootstrap-success.complete"))
    }

    @Test("lm-registry-mirror writes containerd hosts.toml per registry: plain HTTP, HTTPS with a CA, none")
    func registryMirror() async throws {
        let dir = try makeTemporaryDirectory("lm-mirror")
        defer { try? HostFiles.remove(dir) }
        try Data(try file("/usr/local/sbin/lm-registry-mirror").utf8).write(to: URL(fileURLWithPath: "\(dir)/lm-registry-mirror"))
        func run(_ args: String...) async throws -> String {
            var env = ProcessInfo.processInfo.environment
            env["LM_CONTAINERD_CERTS_D"] = "\(dir)/certs.d"
            let (status, out) = try await HostProcess.runCapturing(["sh", "\(dir)/lm-registry-mirror"] + args, environment: env)
            #expect(status == .exited(0), "\(out)")
            return out
        }
        #expect(try await run("none", "none").contains("no mirror"))
        #expect(!HostFiles.exists("\(dir)/certs.d"))
        _ = try await run("http://10.0.0.9:5000", "none")
        let k8s = try String(contentsOfFile: "\(dir)/certs.d/registry.k8s.io/hosts.toml", encoding: .utf8)
        #expect(k8s.contains(#"server = "https://registry.k8s.io""#) && k8s.contains(#"[host."http://10.0.0.9:5000"]"#) && k8s.contains(#"capabilities = ["pull", "resolve"]"#) && !k8s.contains("ca ="))
        #expect(try String(contentsOfFile: "\(dir)/certs.d/docker.io/hosts.toml", encoding: .utf8).contains(#"server = "https://registry-1.docker.io""#))
        for r in ["ghcr.io", "quay.io"] { #expect(HostFiles.exists("\(dir)/certs.d/\(r)/hosts.toml")) }
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        _ = try await run("mirror.local:5443", Data(pem.utf8).base64EncodedString(), "registry.k8s.io")
        let withCA = try String(contentsOfFile: "\(dir)/certs.d/registry.k8s.io/hosts.toml", encoding: .utf8)
        #expect(withCA.contains(#"[host."https://mirror.local:5443"]"#) && withCA.contains(#"ca = "\#(dir)/certs.d/registry.k8s.io/mirror-ca.crt""#), "\(withCA)")
        #expect(try String(contentsOfFile: "\(dir)/certs.d/registry.k8s.io/mirror-ca.crt", encoding: .utf8) == pem)
    }

    /// /run/kubeadm/kubeadm.yaml as Cluster API v1.13's kubeadm bootstrap wrote it for the airgapped template
    /// (KUBEADM_TIMEOUT=20m0s), taken from a real run's bootstrap Secret.
    static let capiInitConfig = """
        ---
        apiServer:
          certSANs:
          - 10.99.70.250
          - localhost
          - 127.0.0.1
        apiVersion: kubeadm.k8s.io/v1beta4
        clusterName: e2e-nodes
        controlPlaneEndpoint: 10.99.70.250:6443
        controllerManager: {}
        dns: {}
        etcd: {}
        kind: ClusterConfiguration
        kubernetesVersion: v1.36.2
        networking:
          podSubnet: 10.244.0.0/16
          serviceSubnet: 10.96.0.0/12
        proxy: {}
        scheduler: {}

        ---
        apiVersion: kubeadm.k8s.io/v1beta4
        kind: InitConfiguration
        localAPIEndpoint: {}
        nodeRegistration:
          kubeletExtraArgs:
          - name: provider-id
            value: microvm://{{ ds.meta_data.vm_host }}/{{ ds.meta_data.instance_id }}
          taints: null
        skipPhases:
        - addon/coredns
        timeouts:
          controlPlaneComponentHealthCheck: 20m0s

        """

    @Test("lm-kubeadm-timeouts sets all six v1beta4 timeouts in Cluster API's init and join configurations, keeps the rest, leaves v1beta3 alone")
    func kubeadmTimeouts() async throws {
        let dir = try makeTemporaryDirectory("lm-timeouts")
        defer { try? HostFiles.remove(dir) }
        try Data(try file("/usr/local/sbin/lm-kubeadm-timeouts").utf8).write(to: URL(fileURLWithPath: "\(dir)/lm-kubeadm-timeouts"))
        let join = """
            apiVersion: kubeadm.k8s.io/v1beta4
            discovery:
              bootstrapToken:
                apiServerEndpoint: 10.99.70.250:6443
                token: abcdef.0123456789abcdef
            kind: JoinConfiguration
            nodeRegistration:
              kubeletExtraArgs:
              - name: provider-id
                value: microvm://x/y
            """
        let old = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\n"
        try Data(Self.capiInitConfig.utf8).write(to: URL(fileURLWithPath: "\(dir)/init.yaml"))
        try Data(join.utf8).write(to: URL(fileURLWithPath: "\(dir)/join.yaml"))
        try Data(old.utf8).write(to: URL(fileURLWithPath: "\(dir)/old.yaml"))
        let (status, out) = try await HostProcess.runCapturing(["sh", "\(dir)/lm-kubeadm-timeouts", "45m0s", "\(dir)/init.yaml", "\(dir)/join.yaml", "\(dir)/old.yaml", "\(dir)/absent.yaml"])
        #expect(status == .exited(0), "\(out)")
        #expect(out.contains("left as it is"))
        let keys: Set = ["controlPlaneComponentHealthCheck", "kubeletHealthCheck", "kubernetesAPICall", "etcdAPICall", "tlsBootstrap", "discovery"]
        func docs(_ name: String) throws -> [[String: Any]] {
            try Yams.load_all(yaml: String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8)).compactMap { $0 as? [String: Any] }
        }
        let initDocs = try docs("init.yaml")
        #expect(initDocs.count == 2)
        let cluster = try #require(initDocs.first { $0["kind"] as? String == "ClusterConfiguration" })
        #expect(cluster["timeouts"] == nil && cluster["controlPlaneEndpoint"] as? String == "10.99.70.250:6443")
        let initConfig = try #require(initDocs.first { $0["kind"] as? String == "InitConfiguration" })
        let timeouts = try #require(initConfig["timeouts"] as? [String: String])
        #expect(Set(timeouts.keys) == keys && timeouts.values.allSatisfy { $0 == "45m0s" }, "\(timeouts)")
        #expect(initConfig["skipPhases"] as? [String] == ["addon/coredns"] && initConfig["nodeRegistration"] != nil)
        let joinConfig = try #require(try docs("join.yaml").first)
        #expect(Set((joinConfig["timeouts"] as? [String: String] ?? [:]).keys) == keys)
        #expect((joinConfig["discovery"] as? [String: Any])?["bootstrapToken"] != nil)
        #expect(try String(contentsOfFile: "\(dir)/old.yaml", encoding: .utf8) == old)
    }
}
