#if canImport(Glibc)
import Glibc
#endif
import AgentClient
import FlintlockAPI
import Foundation
import GRPCCore
import HostSystem
import Testing
import TestSupport

/// flintlockd as a process, real containerd, registry, QEMU (TCG) and TAP devices.
@Suite("flintlockd end to end", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct AgentEndToEndTests {
    @Test("create → CREATED → console → ping → list/stream/watch → agent killed and adopted → delete cleans up")
    func lifecycle() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, []) { agent in
            let client = try agent.client()
            defer { client.close() }

            // A watcher started before the VM exists sees it appear.
            let seen = Collected()
            let watcher = Task {
                try await client.watch(namespace: "e2e") { e in
                    await seen.add(Data("\(e.type) \(e.microvm.spec.uid) \(e.microvm.status.state)\n".utf8))
                    return true
                }
            }
            defer { watcher.cancel() }

            var spec = fixtureSpec(env, name: "life", ip: "10.97.0.11")
            spec.uid = "IGNORED-BY-THE-AGENT"
            let created = try await client.create(spec)
            let uid = created.spec.uid
            #expect(uid.count == 26 && uid != "IGNORED-BY-THE-AGENT")
            #expect(created.status.state == .pending)
            #expect(created.spec.labels == ["suite": "e2e", "case": "life"])
            #expect(created.spec.hasCreatedAt && created.spec.hasUpdatedAt)
            #expect(created.spec.namespace == "e2e")

            let running = try await client.wait(uid: uid, timeout: .seconds(90)) { $0.status.state == .created }
            #expect(running.status.vmmPid > 0)
            #expect(running.status.accelerator == "tcg" || running.status.accelerator == "kvm")
            #expect(running.status.networkInterfaces["eth0"]?.hostDeviceName.isEmpty == false)
            let tap = try #require(running.status.networkInterfaces["eth0"]?.hostDeviceName)
            #expect(HostFiles.exists("/sys/class/net/\(tap)"))

            let text = try await waitForConsole(client, uid: uid, marker: "LIQUIDMETAL-NET-READY", timeout: .seconds(90))
            #expect(text.contains("LIQUIDMETAL-GUEST-READY"))
            let afterBoot = try await client.get(uid: uid)
            #expect(afterBoot.status.hasFirstConsoleOutputAt)
            #expect(await ping("10.97.0.11"), "the guest answers ping over the bridge")

            #expect(try await client.list(namespace: "e2e").map(\.spec.uid) == [uid])
            #expect(try await client.list(namespace: "").contains { $0.spec.uid == uid })
            #expect(try await client.list(namespace: "e2e", name: "life").count == 1)
            #expect(try await client.list(namespace: "other").isEmpty)
            #expect(try await client.listStream(namespace: "e2e").map(\.spec.uid) == [uid])
            let watched = await seen.text
            #expect(watched.contains("synced"))
            #expect(watched.contains("added \(uid)"))
            #expect(watched.contains("modified \(uid) created"))

            // The agent dies; the VM keeps running and is adopted by the next agent.
            let qemuPID = running.status.vmmPid
            agent.kill(SIGKILL)
            try await Task.sleep(for: .milliseconds(300))
            #expect(HostProcess.isAlive(qemuPID), "QEMU outlives the agent")
            try await agent.start()
            let client2 = try agent.client()
            defer { client2.close() }
            let seen2 = Collected()
            let watcher2 = Task {
                try await client2.watch(namespace: "e2e") { e in
                    await seen2.add(Data("\(e.type) \(e.microvm.spec.uid) \(e.microvm.status.state)\n".utf8))
                    return true
                }
            }
            defer { watcher2.cancel() }
            try await Task.sleep(for: .seconds(2))
            #expect(await seen2.text.contains("existing \(uid) created"), "a new watch starts with the current VMs")
            let adopted = try await client2.get(uid: uid)
            #expect(adopted.status.state == .created)
            #expect(adopted.status.vmmPid == qemuPID, "the same QEMU process, not a new one")
            #expect(processes(matching: "/\(uid)/qemu.pid").count == 1)
            #expect(await ping("10.97.0.11"))

            // Delete: asynchronous, then gone with everything it had on the host.
            #expect(try await env.leases(namespace: "lmtest").contains("liquidmetal/\(uid)"))
            try await client2.delete(uid: uid)
            let deadline = ContinuousClock.now + .seconds(30)
            var code: RPCError.Code?
            while ContinuousClock.now < deadline {
                code = await rpcCode { _ = try await client2.get(uid: uid) }
                if code == .notFound { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(code == .notFound)
            #expect(!HostProcess.isAlive(qemuPID))
            #expect(!HostFiles.exists("/sys/class/net/\(tap)"))
            #expect(!HostFiles.exists("\(agent.stateDir)/vm/e2e/life/\(uid)"))
            #expect(try await !env.leases(namespace: "lmtest").contains("liquidmetal/\(uid)"))
            #expect(await seen2.text.contains("deleted \(uid)"))
        }
    }

    @Test("an agent killed in the middle of creates leaves exactly one VM each after restart", arguments: [0, 400, 1500])
    func killMidCreate(delayMS: Int) async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, []) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(fixtureSpec(env, name: "crash-\(delayMS)"))
            try await Task.sleep(for: .milliseconds(delayMS))
            agent.kill(SIGKILL)
            try await agent.start()
            let client2 = try agent.client()
            defer { client2.close() }
            _ = try await client2.wait(uid: vm.spec.uid, timeout: .seconds(90)) { $0.status.state == .created }
            try await Task.sleep(for: .seconds(2))
            #expect(processes(matching: "/\(vm.spec.uid)/qemu.pid").count == 1)
            #expect(try await client2.list(namespace: "e2e").count == 1)
        }
    }

    @Test("bad requests get INVALID_ARGUMENT naming the field, or NOT_FOUND")
    func badInputs() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, []) { agent in
            let client = try agent.client()
            defer { client.close() }
            let base = fixtureSpec(env, name: "bad", ip: "10.97.0.99")
            let cases: [(String, (inout Flintlock_Types_MicroVMSpec) -> Void)] = [
                ("id", { $0.id = "" }),
                ("interfaces[0].device_id", { $0.interfaces[0].deviceID = "Eth0" }),
                ("vcpu", { $0.vcpu = 1000 }),
                ("memory_in_mb", { $0.memoryInMb = 8 }),
                ("kernel.image", { $0.kernel.image = "" }),
                ("kernel.filename", { $0.kernel.filename = "" }),
                ("kernel.image", { $0.kernel.image = "Not A//Reference" }),
                ("id", { $0.id = "../etc" }),
                ("namespace", { $0.namespace = "a/b" }),
                ("kernel.filename", { $0.kernel.filename = "../../etc/shadow" }),
                ("initrd.filename", { $0.initrd.filename = "/boot/initrd" }),
                ("root_volume", { $0.clearRootVolume() }),
                ("interfaces[0].address.address", { $0.interfaces[0].address = .with { $0.address = "10.0.0.2" } }),
                ("metadata[user-data]", { $0.metadata = ["user-data": "not base64!"] }),
            ]
            for (field, mutate) in cases {
                var spec = base
                mutate(&spec)
                let err = await rpcError { _ = try await client.create(spec) }
                #expect(err?.code == .invalidArgument, "\(field): \(String(describing: err))")
                #expect(err?.message.contains(field) == true, "message names \(field): \(err?.message ?? "-")")
        }
        #expect(try await client.list().isEmpty, "nothing half-created")
        #expect(await rpcCode { _ = try await client.get(uid: "01ARZ3NDEKTSV4RRFFQ69G5FAV") } == .notFound)
        #expect(await rpcCode { try await client.delete(uid: "01ARZ3NDEKTSV4RRFFQ69G5FAV") } == .notFound)
        #expect(await rpcCode { _ = try await client.get(uid: "") } == .invalidArgument)
        #expect(await rpcCode { _ = try await client.get(uid: "../x") } == .invalidArgument)
        let dup = try await client.create(fixtureSpec(env, name: "dup"))
        #expect(await rpcCode { _ = try await client.create(fixtureSpec(env, name: "dup")) } == .alreadyExists)
        try await client.delete(uid: dup.spec.uid)
        }
    }

    @Test("an image that does not exist ends FAILED with the registry's error")
    func missingImage() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, ["--max-retries", "1"]) { agent in
            let client = try agent.client()
            defer { client.close() }
            var spec = fixtureSpec(env, name: "noimage")
            spec.rootVolume.source.containerSource = "\(env.registry)/lm-test/does-not-exist:v1"
            let vm = try await client.create(spec)
            let failed = try await client.wait(uid: vm.spec.uid, timeout: .seconds(60)) { $0.status.state == .failed }
            #expect(failed.status.failureReason.contains("404"), "\(failed.status.failureReason)")
            #expect(failed.status.failureReason.contains("does-not-exist"))
            #expect(failed.status.retry >= 1)
        }
    }

    @Test("a guest kernel panic is seen, recorded, restarted and finally FAILED, never left CREATED")
    func kernelPanic() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, ["--max-restarts", "1"]) { agent in
            let client = try agent.client()
            defer { client.close() }
            let vm = try await client.create(fixtureSpec(env, name: "panic", cmdline: ["lm_panic": "1"]))
            let failed = try await client.wait(uid: vm.spec.uid, timeout: .seconds(120)) { $0.status.state == .failed }
            #expect(failed.status.failureReason.contains("Kernel panic"), "\(failed.status.failureReason)")
            #expect(failed.status.restartCount == 2, "one restart, then FAILED")
            let consoleText = try await console(client, uid: vm.spec.uid)
            #expect(consoleText.components(separatedBy: "Kernel panic").count - 1 == 2, "each VMM ended at its guest's first panic (no in-place reboot)")
            #expect(processes(matching: "/\(vm.spec.uid)/qemu.pid").isEmpty)
        }
    }

    @Test("basic-auth token: missing or wrong → UNAUTHENTICATED; right → served")
    func basicAuth() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, ["--basic-auth-token", "s3cret"], start: false) { agent in
            // start() probes without a token, so wait for the port by hand.
            let fd = open(agent.logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            let pid = try HostProcess.spawn(agent.arguments, stdout: fd, stderr: fd)
            close(fd)
            defer { kill(pid, SIGKILL); _ = HostProcess.waitFor(pid) }  // started by hand: start() probes without the token
            let good = try agent.client(token: "s3cret")
            defer { good.close() }
            var ok = false
            for _ in 0..<100 where !ok {
                ok = (try? await good.list()) != nil
                if !ok { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(ok)
        let none = try AgentClient(address: agent.address, token: nil, tls: nil)  // agent.client() would send the agent's token
        defer { none.close() }
        #expect(await rpcCode { _ = try await none.list() } == .unauthenticated)
        let wrong = try agent.client(token: "nope")
        defer { wrong.close() }
        #expect(await rpcCode { _ = try await wrong.list() } == .unauthenticated)
        }
    }

    @Test("containerd unreachable → UNAVAILABLE")
    func containerdUnavailable() async throws {
        let env = try await TestEnvironment.shared()
        try await withAgent(env, [], containerdSocket: "/tmp/lm-no-such-containerd.sock") { agent in
            let client = try agent.client()
            defer { client.close() }
            let err = await rpcError { _ = try await client.create(fixtureSpec(env, name: "nocd")) }
            #expect(err?.code == .unavailable)
            #expect(err?.message.contains("containerd") == true)
        }
    }

    @Test("a private registry: credentials from --registry-auth-file; without them the VM fails with the 401")
    func privateRegistry() async throws {
        let env = try await TestEnvironment.shared()
        let authFile = "/tmp/lm-auth-\(UUID().uuidString.prefix(6)).json"
        let token = Data("\(env.authUser):\(env.authPassword)".utf8).base64EncodedString()
        try Data("{\"auths\": {\"\(env.authRegistry)\": {\"auth\": \"\(token)\"}}}".utf8).write(to: URL(fileURLWithPath: authFile))
        defer { try? FileManager.default.removeItem(atPath: authFile) }

        try await withAgent(env, ["--registry-auth-file", authFile]) { withCreds in
            let client = try withCreds.client()
            defer { client.close() }
            let vm = try await client.create(fixtureSpec(env, name: "private", registry: env.authRegistry))
            _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(90)) { $0.status.state == .created }
            _ = try await waitForConsole(client, uid: vm.spec.uid, marker: "LIQUIDMETAL-GUEST-READY", timeout: .seconds(90))

            try await withAgent(env, ["--max-retries", "0"]) { without in
                let client2 = try without.client()
                defer { client2.close() }
                // A fresh containerd namespace would still share content; use an image name not pulled yet.
                var spec = fixtureSpec(env, name: "private-nocreds", registry: env.authRegistry)
                spec.kernel.image = "\(env.authRegistry)/lm-test/kernel:nocreds-\(UUID().uuidString.prefix(6).lowercased())"
                let vm2 = try await client2.create(spec)
                let failed = try await client2.wait(uid: vm2.spec.uid, timeout: .seconds(60)) { $0.status.state == .failed }
                #expect(failed.status.failureReason.contains("credentials") || failed.status.failureReason.contains("401"), "\(failed.status.failureReason)")
            }
        }
    }
}
