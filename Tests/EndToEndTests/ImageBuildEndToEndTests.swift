import AgentClient
import FlintlockAPI
import Foundation
import HostSystem
import Testing
import TestSupport

/// `lmctl image build` as a user runs it: reproducible digests, and images that boot through the agent.
@Suite("lmctl image build", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, apt, containerd, a registry and QEMU (always runs in CI)"))
struct ImageBuildEndToEndTests {
    /// Runs lmctl; builds share one package cache so apt downloads each .deb once.
    func lmctl(_ args: [String]) async throws -> String {
        try await HostProcess.run(["\(TestEnvironment.productsDirectory)/lmctl"] + args + ["--cache-dir", FixtureImages.cacheDirectory])
    }

    /// The manifest digest lmctl prints last (`REF@sha256:...`).
    func digest(_ out: String) -> String { String(out.split(separator: "@").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }

    @Test("the same build twice gives the same digest (kernel, kernel-modules, minimal rootfs)", arguments: [["kernel"], ["kernel-modules"], ["rootfs", "--preset", "minimal"]])
    func reproducible(kind: [String]) async throws {
        _ = try await TestEnvironment.shared()
        let dir = "/tmp/lm-repro-\(UUID().uuidString.prefix(6))"
        defer { try? HostFiles.remove(dir) }
        let a = try await lmctl(["image", "build"] + kind + ["--tag", "x/y:a", "--output", "oci-layout:\(dir)/a"])
        let b = try await lmctl(["image", "build"] + kind + ["--tag", "x/y:a", "--output", "oci-layout:\(dir)/b"])
        #expect(digest(a).hasPrefix("sha256:"))
        #expect(digest(a) == digest(b), "\(a) vs \(b)")
        let inspected = try await HostProcess.run(["skopeo", "inspect", "--format", "{{.Digest}}", "oci:\(dir)/a:a"])
        #expect(inspected.trimmingCharacters(in: .whitespacesAndNewlines) == digest(a))
    }

    @Test("a kernel and a minimal rootfs built and pushed by lmctl pull through containerd and boot to userspace")
    func builtImagesBoot() async throws {
        let env = try await TestEnvironment.shared()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let kernel = "\(env.registry)/lm-built/kernel:\(tag)", root = "\(env.registry)/lm-built/minimal:\(tag)"
        _ = try await lmctl(["image", "build", "kernel", "--tag", kernel, "--push"])
        _ = try await lmctl(["image", "build", "rootfs", "--preset", "minimal", "--tag", root, "--push"])
        try await withAgent(env) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(.with {
                $0.id = "built"
                $0.namespace = "e2e"
                $0.vcpu = 1
                $0.memoryInMb = 256
                $0.kernel = .with { $0.image = kernel; $0.filename = "boot/vmlinuz"; $0.cmdline = ["lm_ip": "10.97.0.41/24"] }
                $0.initrd = .with { $0.image = kernel; $0.filename = "boot/initrd" }
                $0.rootVolume = .with { $0.id = "root"; $0.source.containerSource = root }
                $0.interfaces = [.with { $0.deviceID = "eth0"; $0.type = .tap }]
            })
            _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(90)) { $0.status.state == .created }
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "LIQUIDMETAL-NET-READY", timeout: .seconds(90))
            #expect(await ping("10.97.0.41"))
        }
    }

    @Test("the cloud preset: same digest twice, owners and file capabilities kept, boots through cloud-init to a login prompt and answers ping")
    func cloudPreset() async throws {
        let env = try await TestEnvironment.shared()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let dir = "\(FixtureImages.layoutRoot)/cloud"  // the fixture's build, to a layout (shared with the guest tests)
        let kernel = "\(env.registry)/lm-built/kernel:\(tag)", cloud = "\(env.registry)/lm-built/cloud:\(tag)"
        // Cold or warm package cache, the two builds (one to a layout, one pushed) must agree.
        _ = try await FixtureImages.cloud(registry: env.registry)
        let a = try await HostProcess.run(["skopeo", "inspect", "--format", "{{.Digest}}", "oci:\(dir):latest"])
        let b = try await lmctl(["image", "build", "rootfs", "--preset", "cloud", "--tag", cloud, "--push"])
        #expect(digest(a).hasPrefix("sha256:"))
        #expect(digest(a) == digest(b), "\(a) vs \(b)")

        // The layer keeps the packages' owners and file capabilities and ships no ssh host keys.
        let layer = try layerPath(layout: dir)
        let listing = try await HostProcess.run(["tar", "-tvzf", layer, "--numeric-owner"])
        let shadow = listing.split(separator: "\n").first { $0.hasSuffix(" etc/shadow") } ?? ""
        #expect(shadow.contains(" 0/42 "), "etc/shadow belongs to group shadow (42): \(shadow)")
        #expect(!listing.contains("etc/ssh/ssh_host_"), "no ssh host keys in the image")
        let extract = "/tmp/lm-cloud-\(tag)"
        try HostFiles.createDirectory(extract)
        defer { try? HostFiles.remove(extract) }
        try await HostProcess.run(["tar", "--xattrs", "--xattrs-include=security.capability", "-xzf", layer, "-C", extract, "usr/bin/ping"])
        let caps = try await HostProcess.run(["getcap", "\(extract)/usr/bin/ping"])
        #expect(caps.contains("cap_net_raw"), "ping keeps its capability: \(caps)")

        _ = try await lmctl(["image", "build", "kernel", "--tag", kernel, "--push"])
        // cloud-init's own network config from the kernel command line: a static address on eth0.
        let networkConfig = Data("version: 2\nethernets:\n  eth0:\n    addresses: [10.97.0.42/24]\n".utf8).base64EncodedString()
        try await withAgent(env) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(.with {
                $0.id = "cloud"
                $0.namespace = "e2e"
                $0.vcpu = 2
                $0.memoryInMb = 768
                $0.kernel = .with { $0.image = kernel; $0.filename = "boot/vmlinuz"; $0.cmdline = ["network-config": networkConfig] }
                $0.initrd = .with { $0.image = kernel; $0.filename = "boot/initrd" }
                $0.rootVolume = .with { $0.id = "root"; $0.source.containerSource = cloud }
                $0.interfaces = [.with { $0.deviceID = "eth0"; $0.type = .tap }]
            })
            _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(180)) { $0.status.state == .created }
            let text = try await waitForConsole(client, uid: vm.spec.uid, marker: " finished at ", timeout: .seconds(300))
            #expect(text.contains("Datasource DataSourceNone"), "no seed disk: cloud-init runs with no datasource")
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "lm-guest login:", timeout: .seconds(120))
            #expect(!text.contains("util.py[WARNING]"), "no cloud-init module failed: \(text.suffix(3000))")
            #expect(await ping("10.97.0.42"))
        }
    }

    @Test("the k8s-node preset from a signed package source (a loopback double of pkgs.k8s.io): packages, CRI config, enabled units; boots with containerd running on a root disk grown to size_in_mb")
    func k8sNodePreset() async throws {
        let env = try await TestEnvironment.shared()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let dir = "/tmp/lm-k8s-\(tag)"
        defer { try? HostFiles.remove(dir) }
        let repo = try await KubernetesRepositoryDouble.start(in: "\(dir)/repo")
        defer { repo.stop() }
        let node = "\(env.registry)/lm-built/k8s-node:\(tag)", kernel = "\(env.registry)/lm-built/kernel:\(tag)"
        // An image preloaded for containerd (air-gapped nodes): the test's root fixture, under a registry.k8s.io name.
        let preloaded = "registry.k8s.io/lm-test/preloaded:v1"
        let out = try await lmctl(["image", "build", "rootfs", "--preset", "k8s-node", "--package-source", repo.sourceLine,
                                   "--package-source-key", repo.keyFile, "--preload-image", "\(preloaded)=\(FixtureImages.layoutRoot)/root:latest",
                                   "--tag", node, "--output", "oci-layout:\(dir)/layout"])
        #expect(digest(out).hasPrefix("sha256:"))

        let layer = try layerPath(layout: "\(dir)/layout")
        let listing = Set(try await HostProcess.run(["tar", "-tzf", layer]).split(separator: "\n").map(String.init))
        for path in ["usr/bin/kubelet", "usr/bin/kubeadm", "usr/bin/kubectl", "usr/bin/crictl", "usr/bin/containerd", "usr/sbin/conntrack",
                     "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
                     "etc/systemd/system/multi-user.target.wants/kubelet.service", "etc/systemd/system/multi-user.target.wants/containerd.service",
                     "etc/containerd/config.toml", "etc/sysctl.d/90-kubernetes.conf", "etc/modules-load.d/kubernetes.conf", "etc/crictl.yaml",
                     "etc/apt/keyrings/liquidmetal-source-0.asc", "usr/sbin/keepalived", "usr/local/sbin/lm-kubeadm-timeouts",
                     "usr/local/sbin/lm-registry-mirror", "usr/local/sbin/lm-control-plane-address", "usr/local/sbin/lm-bridge-cni", "usr/local/sbin/lm-kubeadm-retry",
                     "etc/systemd/system/lm-bridge-cni.service", "usr/local/sbin/lm-preload-images",
                     "etc/systemd/system/multi-user.target.wants/lm-preload-images.service", "var/lib/liquidmetal/images/00/index.json"] {
            #expect(listing.contains(path), "\(path) in the k8s-node image")
        }
        for module in ["overlay.ko", "br_netfilter.ko", "nf_conntrack.ko"] {
            #expect(listing.contains { $0.hasPrefix("usr/lib/modules/") && $0.contains("/\(module)") }, "\(module) (the cloud kernel's modules) in the image")
        }
        let extract = "\(dir)/extract"
        try HostFiles.createDirectory(extract)
        try await HostProcess.run(["tar", "-xzf", layer, "-C", extract, "etc/containerd/config.toml", "etc/apt/sources.list", "etc/apt/keyrings"])
        let containerdConfig = try String(contentsOfFile: "\(extract)/etc/containerd/config.toml", encoding: .utf8)
        #expect(containerdConfig.contains("SystemdCgroup = true") && containerdConfig.contains(#"config_path = "/etc/containerd/certs.d""#))
        let sources = try String(contentsOfFile: "\(extract)/etc/apt/sources.list", encoding: .utf8)
        #expect(sources.contains("[signed-by=/etc/apt/keyrings/liquidmetal-source-0.asc] http://127.0.0.1:\(repo.port)/ /"), "the guest keeps the source and its key")

        // The node boots: systemd starts containerd and (the double of) kubelet.
        _ = try await HostProcess.run([FixtureImages.lmctl, "image", "push", "oci-layout:\(dir)/layout:\(tag)", node])
        _ = try await lmctl(["image", "build", "kernel", "--tag", kernel, "--push"])
        try await withAgent(env) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(.with {
                $0.id = "k8s-node"
                $0.namespace = "e2e"
                $0.vcpu = 2
                $0.memoryInMb = 1024
                $0.kernel = .with { $0.image = kernel; $0.filename = "boot/vmlinuz" }
                $0.initrd = .with { $0.image = kernel; $0.filename = "boot/initrd" }
                // A root disk larger than the image (the image's ext4 is sized to its content): the agent
                // makes the disk 4 GiB, cloud-init's resizefs grows the filesystem, and runcmd reports it.
                $0.rootVolume = .with { $0.id = "root"; $0.source.containerSource = node; $0.sizeInMb = 4096 }
                $0.metadata = ["user-data": Data("""
                    #cloud-config
                    runcmd:
                    - [sh, -c, 'echo LM-ROOT-SIZE $(df -m --output=size / | tail -1)']
                    - [sh, -c, 'echo LM-CONTAINERD $(systemctl is-active containerd)']
                    - [sh, -c, 'echo LM-PRELOADED $(ctr --namespace k8s.io images ls -q | tr "\\n" " ")']
                    - [sh, -c, 'for i in $(seq 90); do journalctl -u kubelet -o cat | grep -q stand-in && break; sleep 2; done; echo LM-KUBELET $(systemctl is-enabled kubelet) $(journalctl -u kubelet -o cat | grep -m1 stand-in)']

                    """.utf8).base64EncodedString(), "meta-data": Data("instance-id: k8s-node\n".utf8).base64EncodedString()]
            })
            let created = try await client.wait(uid: vm.spec.uid, timeout: .seconds(180)) { $0.status.state == .created }
            let disk = try #require(created.status.volumes["root"]?.mount.source)
            let info = try await HostProcess.run(["qemu-img", "info", "-U", "--output=json", disk])
            let virtualSize = try #require((try JSONSerialization.jsonObject(with: Data(info.utf8)) as? [String: Any])?["virtual-size"] as? Int)
            #expect(virtualSize == 4096 << 20, "the root disk is size_in_mb large: \(info)")
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "lm-guest login:", timeout: .seconds(300))
            let text = try await waitForConsole(client, uid: vm.spec.uid, marker: "LM-ROOT-SIZE", timeout: .seconds(300))
            let reported = consoleLines(text).lazy.compactMap { line -> Int? in
                guard let r = line.range(of: "LM-ROOT-SIZE ") else { return nil }
                return Int(line[r.upperBound...].prefix { $0.isNumber })
            }.first
            #expect((reported ?? 0) > 3800, "the guest's root filesystem was grown to the disk: \(reported.map(String.init) ?? "no LM-ROOT-SIZE line"), \(text.suffix(2000))")
            // Asked from inside the guest: systemd stops printing unit status on the console once the serial getty starts.
            let units = try await waitForConsole(client, uid: vm.spec.uid, marker: "LM-CONTAINERD", timeout: .seconds(120))
            #expect(consoleLines(units).contains { $0.hasSuffix("LM-CONTAINERD active") }, "containerd runs: \(units.suffix(3000))")
            // The preloaded image is in containerd's k8s.io namespace before cloud-init's commands run.
            let listed = try await waitForConsole(client, uid: vm.spec.uid, marker: "LM-PRELOADED", timeout: .seconds(120))
            #expect(listed.contains("lm-preload-images: 1 images imported"), "\(listed.suffix(3000))")
            #expect(consoleLines(listed).contains { $0.contains("LM-PRELOADED") && $0.contains(preloaded) }, "\(listed.suffix(2000))")
            // kubelet's unit is enabled and runs the packaged binary (after the import).
            let kubelet = try await waitForConsole(client, uid: vm.spec.uid, marker: "LM-KUBELET", timeout: .seconds(240))
            let kubeletLine = consoleLines(kubelet).first { $0.contains("LM-KUBELET") && !$0.contains("journalctl") }
            #expect(kubeletLine?.contains("LM-KUBELET enabled kubelet v\(KubernetesRepositoryDouble.version) (stand-in)") == true,
                    "kubelet's unit is enabled and starts: \(kubeletLine.map(String.init) ?? "no LM-KUBELET line"), \(kubelet.suffix(2000))")
        }
    }

    @Test("an app image (the capmvm controller): entrypoint and unprivileged user in the config; the program runs from the image alone")
    func appImage() async throws {
        _ = try await TestEnvironment.shared()
        let dir = "/tmp/lm-app-\(UUID().uuidString.prefix(6))"
        defer { try? HostFiles.remove(dir) }
        let out = try await lmctl(["image", "build", "app", "--binary", "\(TestEnvironment.productsDirectory)/capmvm", "--tag", "lm/capmvm:test", "--output", "oci-layout:\(dir)/layout"])
        #expect(digest(out).hasPrefix("sha256:"))
        let config = try await HostProcess.run(["skopeo", "inspect", "--config", "oci:\(dir)/layout:test"])
        let c = try #require((try JSONSerialization.jsonObject(with: Data(config.utf8)) as? [String: Any])?["config"] as? [String: Any])
        #expect(c["Entrypoint"] as? [String] == ["/capmvm"] && c["User"] as? String == "65532:65532")
        // Run it from the extracted image only (with /proc, as a container runtime provides), as its user.
        let root = "\(dir)/root"
        try HostFiles.createDirectory("\(root)/proc")
        try await HostProcess.run(["tar", "-xzf", try layerPath(layout: "\(dir)/layout"), "-C", root])
        try await HostProcess.run(["mount", "-t", "proc", "proc", "\(root)/proc"])
        let run = try? await HostProcess.runCapturing(["chroot", "--userspec=65532:65532", root, "/capmvm", "--kubeconfig", "/nonexistent"])
        _ = try? await HostProcess.run(["umount", "\(root)/proc"])
        let (status, text) = try #require(run)
        #expect(status == .exited(64) && text.contains("kubeconfig /nonexistent cannot be read"), "the program starts and parses its flags: \(text)")
    }

    /// The first layer blob of the only image in an OCI layout.
    func layerPath(layout dir: String) throws -> String {
        func json(_ path: String) throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] ?? [:]
        }
        func blob(_ digest: String) -> String { "\(dir)/blobs/sha256/\(digest.dropFirst("sha256:".count))" }
        let index = try json("\(dir)/index.json")
        let manifestDigest = ((index["manifests"] as? [[String: Any]])?.first?["digest"] as? String) ?? ""
        let manifest = try json(blob(manifestDigest))
        let layerDigest = ((manifest["layers"] as? [[String: Any]])?.first?["digest"] as? String) ?? ""
        return blob(layerDigest)
    }

    @Test("bad recipes and unreachable package sources fail fast with a message that names them")
    func badRecipes() async throws {
        _ = try await TestEnvironment.shared()
        let bin = "\(TestEnvironment.productsDirectory)/lmctl"
        let dir = "/tmp/lm-badrecipe-\(UUID().uuidString.prefix(6))"
        try HostFiles.createDirectory(dir)
        defer { try? HostFiles.remove(dir) }
        try Data("packages: [less]\npakages: [vim]\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/typo.yaml"))
        try Data("packages: [nosuchpkg-liquidmetal]\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/unknown.yaml"))
        let out = ["--tag", "x/y:z", "--output", "oci-layout:\(dir)/out", "--cache-dir", "/tmp/lm-build-cache"]
        let cases: [([String], String, Duration)] = [
            (["image", "build", "rootfs", "--recipe", "\(dir)/typo.yaml"] + out, "unknown key \"pakages\"", .seconds(10)),
            (["image", "build", "rootfs", "--recipe", "\(dir)/missing.yaml"] + out, "\(dir)/missing.yaml", .seconds(10)),
            (["image", "build", "rootfs", "--preset", "k8s-node"] + out, "--package-source", .seconds(10)),
            (["image", "build", "rootfs", "--preset", "k8s-node", "--package-source", "deb [trusted=yes] http://127.0.0.1:9/k8s/ /"] + out,
             "package source \"deb [trusted=yes] http://127.0.0.1:9/k8s/ /\" is unreachable", .seconds(30)),
            (["image", "build", "rootfs", "--recipe", "\(dir)/unknown.yaml"] + out, "unknown package \"nosuchpkg-liquidmetal\"", .seconds(90)),
        ]
        for (args, needle, limit) in cases {
            let start = ContinuousClock.now
            let (status, text) = try await HostProcess.runCapturing([bin] + args)
            #expect(status != .exited(0), "\(args) should fail")
            #expect(text.contains(needle), "\(args): \(text.suffix(2000))")
            #expect(ContinuousClock.now - start < limit, "\(args) fails within \(limit)")
        }
    }

    @Test("bad inputs fail fast with a message that names them")
    func badInputs() async throws {
        _ = try await TestEnvironment.shared()
        let bin = "\(TestEnvironment.productsDirectory)/lmctl"
        try HostFiles.createDirectory("/tmp/lm-garbage-layout")
        try Data("not json".utf8).write(to: URL(fileURLWithPath: "/tmp/lm-garbage-layout/index.json"))
        defer { try? HostFiles.remove("/tmp/lm-garbage-layout") }
        let cases: [([String], String)] = [
            (["image", "build", "kernel", "--package", "linux-image-no-such-kernel", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "linux-image-no-such-kernel"),
            (["image", "build", "kernel", "--deb", "/tmp/no-such.deb", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "/tmp/no-such.deb"),
            (["image", "build", "rootfs", "--preset", "fedora", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "--preset must be minimal, cloud or k8s-node"),
            (["image", "build", "rootfs", "--tag", "Bad//Ref", "--push"], "--tag: "),
            (["image", "build", "rootfs", "--tag", "x/y:z"], "give exactly one of --push and --output"),
            (["image", "build", "app", "--binary", "/bin/true", "--user", "nobody", "--tag", "x/y:z", "--output", "oci-layout:/tmp/lm-x"], "must be UID or UID:GID"),
            (["image", "push", "oci-layout:/tmp/lm-garbage-layout:v1", "127.0.0.1:5111/x/y:z"], "index.json is not an OCI image index"),
            (["image", "build", "rootfs", "--push"], "--tag is required"),
            (["image", "push", "/tmp/lm-x", "x/y:z"], "oci-layout:DIR[:TAG]"),
            (["image", "push", "oci-layout:/tmp/lm-no-such-layout:v1", "127.0.0.1:5111/x/y:z"], "/tmp/lm-no-such-layout is not an OCI image layout"),
        ]
        for (args, needle) in cases {
            let start = ContinuousClock.now
            let (status, out) = try await HostProcess.runCapturing([bin] + args)
            #expect(status != .exited(0), "\(args) should fail")
            #expect(out.contains(needle), "\(args): \(out)")
            #expect(ContinuousClock.now - start < .seconds(30), "fails fast")
        }
    }
}
