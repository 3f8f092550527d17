import AgentClient
import FlintlockAPI
import Foundation
import GRPCCore
import HostSystem
import Testing
import TestSupport

/// Guests that configure themselves: a real Debian 12 cloud-init guest configured through the API
/// (hostname, user and ssh key, runcmd, static and allocated addresses, an extra volume), the agent's
/// own bridge with address allocation and NAT, macvtap, and bad input.
@Suite("guest configuration", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, a registry, QEMU, TAP, nftables (always runs in CI)"))
struct GuestConfigEndToEndTests {
    func lmctl(_ args: [String]) async throws -> String {
        try await HostProcess.run([FixtureImages.lmctl] + args)
    }

    func ssh(_ key: String, _ host: String, _ command: String) async throws -> (HostProcess.Termination, String) {
        try await HostProcess.runCapturing(["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                                            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "lm@\(host)", command])
    }

    @Test("a cloud-init guest created with lmctl: hostname, ssh user, runcmd, static and allocated addresses, NAT'd bridge, extra volume mounted")
    func cloudInitGuest() async throws {
        let env = try await TestEnvironment.shared()
        let cloud = try await FixtureImages.cloud(registry: env.registry)
        let dir = "/tmp/lm-guest-\(UUID().uuidString.prefix(6))"
        try HostFiles.createDirectory(dir)
        defer { try? HostFiles.remove(dir) }
        try await HostProcess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lm-e2e", "-f", "\(dir)/key"])
        try Data("""
            #cloud-config
            runcmd:
              - [sh, -c, 'echo "LM-RUNCMD-MARKER host=$(hostname)" > /dev/console']

            """.utf8).write(to: URL(fileURLWithPath: "\(dir)/user-data"))

        // The agent owns lmown0 (10.96.0.1/24): TAPs without an override join it and get an address.
        try await withAgent(env, ["--bridge-name", "lmown0", "--bridge-cidr", "10.96.0.1/24", "--bridge-nameservers", "10.96.0.1"]) { agent in
            let nft = try await HostProcess.run(["nft", "list", "table", "ip", "liquidmetal_lmown0"])
            #expect(nft.contains("masquerade") && nft.contains("10.96.0.0/24"), "\(nft)")
            #expect(try await HostProcess.run(["ip", "-o", "-4", "addr", "show", "dev", "lmown0"]).contains("10.96.0.1/24"))
            #expect(try String(contentsOfFile: "/proc/sys/net/ipv4/ip_forward", encoding: .utf8).hasPrefix("1"))

            let created = try await lmctl([
                "create", "--host", agent.address, "-o", "json", "--name", "cloud-guest", "--namespace", "e2e", "--vcpu", "2", "--memory", "768",
                "--kernel-image", env.kernelImage, "--initrd-image", env.kernelImage, "--root-image", cloud,
                "--tap", "eth0:\(env.bridge)", "--address", "eth0=10.97.0.43/24,10.97.0.1", "--tap", "eth1", "--add-network-config",
                "--volume", "data,\(env.rootImage),/data,ro",
                "--hostname", "lm-e2e-node", "--ssh-key-file", "\(dir)/key.pub", "--user-data-file", "\(dir)/user-data",
            ])
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any])
            let uid = try #require((obj["spec"] as? [String: Any])?["uid"] as? String)
            let client = try agent.client()
            defer { client.close() }

            // Addresses are in the status from the start: the static one, and the allocated one.
            let vm = try await client.get(uid: uid)
            #expect(vm.status.networkInterfaces["eth0"]?.address == "10.97.0.43/24")
            #expect(vm.status.networkInterfaces["eth0"]?.addressAllocated == false)
            #expect(vm.status.networkInterfaces["eth1"]?.address == "10.96.0.2/24")
            #expect(vm.status.networkInterfaces["eth1"]?.addressAllocated == true)

            _ = try await client.wait(uid: uid, timeout: .seconds(180)) { $0.status.state == .created }
            let text = try await waitForConsole(client, uid: uid, marker: " finished at ", timeout: .seconds(420))
            #expect(text.contains("DataSourceNoCloud"), "cloud-init used the seed disk: \(text.suffix(2000))")
            #expect(text.contains("LM-RUNCMD-MARKER host=lm-e2e-node"), "runcmd ran with the meta-data hostname")
            #expect(!text.contains("util.py[WARNING]"), "no cloud-init module failed: \(text.suffix(3000))")
            #expect(await ping("10.97.0.43"), "the static address answers")

            // Log in with the key from user-data and look around.
            var login: (HostProcess.Termination, String) = (.exited(255), "")
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                login = try await ssh("\(dir)/key", "10.97.0.43", "hostname")
                if login.0 == .exited(0) { break }
                try await Task.sleep(for: .seconds(2))
            }
            #expect(login.0 == .exited(0) && login.1.contains("lm-e2e-node"), "ssh login: \(login.1)")
            let (st, out) = try await ssh("\(dir)/key", "10.97.0.43", """
                ip -4 -o addr show; echo ---; ping -c 2 -W 3 10.96.0.1 && echo GATEWAY-OK; echo ---; \
                findmnt -n -o SOURCE,TARGET,OPTIONS /data; cat /data/etc/os-release; echo ---; sudo -n true && echo SUDO-OK
                """)
            #expect(st == .exited(0), "\(out)")
            #expect(out.contains("inet 10.96.0.2/24"), "the allocated address is configured: \(out)")
            #expect(out.contains("GATEWAY-OK"), "the guest reaches the agent bridge's gateway: \(out)")
            let mount = out.split(separator: "\n").first { $0.hasPrefix("/dev/vdb /data ") }.map { $0.split(separator: " ") } ?? []
            #expect(mount.count == 3 && mount[2].split(separator: ",").contains("ro"), "the extra volume is mounted read-only at /data: \(out)")
            #expect(out.contains("Liquid Metal minimal"), "the volume holds the image's files")
            #expect(out.contains("SUDO-OK"))

            try await client.delete(uid: uid)
            try await waitGone(client, uid: uid)
        }
    }

    @Test("the agent's bridge: allocations are stable across restarts, never handed out twice, freed on delete; its rules go when it is no longer configured")
    func addressAllocation() async throws {
        let env = try await TestEnvironment.shared()
        // An unrelated table that must survive everything the agent does.
        try await HostProcess.run(["nft", "add", "table", "ip", "lmtest_unrelated"])
        defer { Task { _ = try? await HostProcess.run(["nft", "delete", "table", "ip", "lmtest_unrelated"]) } }
        let owned = ["--bridge-name", "lmown1", "--bridge-cidr", "10.94.0.1/24"]
        let agent = try AgentProcess(environment: env, extraArguments: owned)
        try await agent.start()
        do {
            var client = try agent.client()
            defer { client.close() }
            func spec(_ name: String, address: String? = nil) -> Flintlock_Types_MicroVMSpec {
                var s = fixtureSpec(env, name: name)
                s.interfaces = [.with { i in
                    i.deviceID = "eth0"
                    i.type = .tap
                    if let address { i.address = .with { $0.address = address } }
                }]
                return s
            }
            let a = try await client.create(spec("ipam-a"))
            let b = try await client.create(spec("ipam-b"))
            #expect(a.status.networkInterfaces["eth0"]?.address == "10.94.0.2/24")
            #expect(b.status.networkInterfaces["eth0"]?.address == "10.94.0.3/24")
            let taken = await rpcError { _ = try await client.create(spec("ipam-c", address: "10.94.0.3/24")) }
            #expect(taken?.code == .alreadyExists && taken?.message.contains("interfaces[0].address.address") == true, "\(String(describing: taken))")
            #expect(try await client.list().map(\.spec.id).sorted() == ["ipam-a", "ipam-b"], "nothing of the refused VM is left")

            // Restart: the same addresses.
            client.close()
            agent.kill(SIGTERM)
            try await agent.start()
            client = try agent.client()
            #expect(try await client.get(uid: a.spec.uid).status.networkInterfaces["eth0"]?.address == "10.94.0.2/24")
            #expect(try await client.get(uid: b.spec.uid).status.networkInterfaces["eth0"]?.address == "10.94.0.3/24")
            let c = try await client.create(spec("ipam-c"))
            #expect(c.status.networkInterfaces["eth0"]?.address == "10.94.0.4/24")

            // Deleting frees the address; the next VM gets it.
            try await client.delete(uid: a.spec.uid)
            try await waitGone(client, uid: a.spec.uid)
            let d = try await client.create(spec("ipam-d"))
            #expect(d.status.networkInterfaces["eth0"]?.address == "10.94.0.2/24")

            for vm in [b, c, d] { try await client.delete(uid: vm.spec.uid) }
            for vm in [b, c, d] { try await waitGone(client, uid: vm.spec.uid) }
            agent.kill(SIGTERM)
        } catch {
            await agent.cleanUp()
            throw TestEnvironmentError("\(error)\n--- agent log ---\n\(agent.log())")
        }
        // Started again without --bridge-cidr: its table and the bridge it created go; nothing else.
        agent.extraArguments = []
        do { try await agent.start() } catch {
            await agent.cleanUp()
            throw error
        }
        #expect((try? await HostProcess.run(["nft", "list", "table", "ip", "liquidmetal_lmown1"])) == nil, "the agent's table is removed")
        #expect(!HostFiles.exists("/sys/class/net/lmown1"), "the bridge the agent created is removed")
        #expect((try? await HostProcess.run(["nft", "list", "table", "ip", "lmtest_unrelated"])) != nil, "unrelated rules are untouched")
        await agent.cleanUp()
    }

    @Test("macvtap on --parent-iface: the guest is reachable on the parent's network; MAC in status; device removed on delete")
    func macvtap() async throws {
        let env = try await TestEnvironment.shared()
        // The parent: one end of a veth pair whose other end lives in a namespace with 10.95.0.1/24.
        let ns = "lmtest-mv"
        _ = try? await HostProcess.run(["ip", "netns", "del", ns])
        _ = try? await HostProcess.run(["ip", "link", "del", "lmmv0"])
        try await HostProcess.run(["ip", "netns", "add", ns])
        try await HostProcess.run(["ip", "link", "add", "lmmv0", "type", "veth", "peer", "name", "lmmv1", "netns", ns])
        try await HostProcess.run(["ip", "link", "set", "lmmv0", "up"])
        try await HostProcess.run(["ip", "-n", ns, "addr", "add", "10.95.0.1/24", "dev", "lmmv1"])
        try await HostProcess.run(["ip", "-n", ns, "link", "set", "lmmv1", "up"])
        defer {
            Task {
                _ = try? await HostProcess.run(["ip", "link", "del", "lmmv0"])
                _ = try? await HostProcess.run(["ip", "netns", "del", ns])
            }
        }
        try await withAgent(env, ["--parent-iface", "lmmv0"]) { agent in
            let client = try agent.client()
            defer { client.close() }
            var s = fixtureSpec(env, name: "macvtap", cmdline: ["lm_ip": "10.95.0.2/24"])
            s.interfaces = [.with { $0.deviceID = "eth0"; $0.type = .macvtap; $0.guestMac = "02:95:00:00:00:02" }]
            let vm = try await client.create(s)
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "LIQUIDMETAL-NET-READY", timeout: .seconds(90))
            let st = try await client.get(uid: vm.spec.uid).status.networkInterfaces["eth0"]
            #expect(st?.macAddress == "02:95:00:00:00:02")
            let device = try #require(st?.hostDeviceName)
            #expect(HostFiles.exists("/sys/class/net/\(device)/macvtap"), "\(device) is a macvtap")
            let (t, out) = try await HostProcess.runCapturing(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "3", "10.95.0.2"])
            #expect(t == .exited(0), "the guest answers on the parent's network: \(out)")
            try await client.delete(uid: vm.spec.uid)
            try await waitGone(client, uid: vm.spec.uid)
            #expect(!HostFiles.exists("/sys/class/net/\(device)"), "the macvtap is removed on delete")
        }
    }

    @Test("bad guest configuration is refused naming the field, and nothing is left behind")
    func badInput() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, ["--bridge-name", "lmown2", "--bridge-cidr", "10.93.0.1/24"]) { agent in
            let client = try agent.client()
            defer { client.close() }
            func tap(_ id: String, address: String? = nil, gateway: String? = nil, mac: String? = nil) -> Flintlock_Types_NetworkInterface {
                .with { i in
                    i.deviceID = id
                    i.type = .tap
                    if let mac { i.guestMac = mac }
                    if let address { i.address = .with { $0.address = address; if let gateway { $0.gateway = gateway } } }
                }
            }
            let taken = try await client.create({ var s = fixtureSpec(env, name: "holder"); s.interfaces = [tap("eth0", address: "10.93.0.9/24")]; return s }())
            let cases: [(String, RPCError.Code, String, (inout Flintlock_Types_MicroVMSpec) -> Void)] = [
                ("malformed CIDR", .invalidArgument, "interfaces[0].address.address", { $0.interfaces = [tap("eth0", address: "10.93.0.300/24")] }),
                ("gateway outside the subnet", .invalidArgument, "interfaces[0].address.gateway", { $0.interfaces = [tap("eth0", address: "10.93.0.20/24", gateway: "10.92.0.1")] }),
                ("duplicate MACs", .invalidArgument, "interfaces[1].guest_mac", { $0.interfaces = [tap("eth0", mac: "02:00:00:00:00:aa"), tap("eth1", mac: "02:00:00:00:00:AA")] }),
                ("duplicate device_ids", .invalidArgument, "interfaces[1].device_id", { $0.interfaces = [tap("eth0"), tap("eth0")] }),
                ("metadata not base64", .invalidArgument, "metadata[user-data]", { $0.metadata = ["user-data": "#cloud-config\nruncmd: [ls]"] }),
                ("meta-data not a mapping", .invalidArgument, "metadata[meta-data]", { $0.metadata = ["meta-data": Data("- a\n- b\n".utf8).base64EncodedString()] }),
                ("an address already allocated", .alreadyExists, "interfaces[1].address.address", { $0.interfaces = [tap("eth0"), tap("eth1", address: "10.93.0.9/24")] }),
                ("the bridge's own address", .invalidArgument, "interfaces[0].address.address", { $0.interfaces = [tap("eth0", address: "10.93.0.1/24")] }),
                ("mount point with ..", .invalidArgument, "additional_volumes[0].mount_point", {
                    $0.additionalVolumes = [.with { v in v.id = "data"; v.source.containerSource = env.rootImage; v.mountPoint = "/../etc" }]
                }),
                ("vendor-data that is a script, with a mount point", .invalidArgument, "metadata[vendor-data]", {
                    $0.additionalVolumes = [.with { v in v.id = "data"; v.source.containerSource = env.rootImage; v.mountPoint = "/data" }]
                    $0.metadata = ["vendor-data": Data("#!/bin/sh\necho hi\n".utf8).base64EncodedString()]
                }),
            ]
            for (label, code, field, change) in cases {
                var s = fixtureSpec(env, name: "bad")
                change(&s)
                let e = await rpcError { _ = try await client.create(s) }
                #expect(e?.code == code, "\(label): \(String(describing: e))")
                #expect(e?.message.hasPrefix("\(field): ") == true, "\(label) names \(field): \(String(describing: e?.message))")
            }
            #expect(try await client.list().map(\.spec.uid) == [taken.spec.uid], "no half-created VM: validation and address claims happen before anything is stored or created")
        }
    }
}

/// Waits until the VM is gone from the agent.
func waitGone(_ client: AgentClient, uid: String, timeout: Duration = .seconds(60)) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await client.list().allSatisfy({ $0.spec.uid != uid }) { return }
        try await Task.sleep(for: .milliseconds(200))
    }
    throw TestEnvironmentError("\(uid) was not deleted within \(timeout)")
}

