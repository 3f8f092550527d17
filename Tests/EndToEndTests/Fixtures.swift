import AgentClient
import FlintlockAPI
import Foundation
import GRPCCore
import HostSystem
import TestSupport

/// A spec for the fixture images: busybox root, Debian cloud kernel with the fixture initrd.
func fixtureSpec(_ env: TestEnvironment, name: String, ip: String? = nil, cmdline: [String: String] = [:], registry: String? = nil) -> Flintlock_Types_MicroVMSpec {
    let reg = registry ?? env.registry
    return .with {
        $0.id = name
        $0.namespace = "e2e"
        $0.vcpu = 1
        $0.memoryInMb = 256
        $0.labels = ["suite": "e2e", "case": name]
        $0.kernel = .with { k in
            k.image = "\(reg)/lm-test/kernel:latest"
            k.filename = "boot/vmlinuz"
            k.cmdline = cmdline
            if let ip { k.cmdline["lm_ip"] = "\(ip)/24" }
        }
        $0.initrd = .with { i in
            i.image = "\(reg)/lm-test/kernel:latest"
            i.filename = "boot/initrd"
        }
        $0.rootVolume = .with { v in
            v.id = "root"
            v.source.containerSource = "\(reg)/lm-test/root:latest"
        }
        if ip != nil {
            $0.interfaces = [.with { i in i.deviceID = "eth0"; i.type = .tap }]
        }
    }
}

/// Reads the VM's console through the API until `marker` shows up.
func waitForConsole(_ client: AgentClient, uid: String, marker: String, timeout: Duration) async throws -> String {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        let text = try await console(client, uid: uid)
        if text.contains(marker) { return text }
        try await Task.sleep(for: .milliseconds(250))
    }
    throw TestEnvironmentError("marker \(marker) did not appear on \(uid)'s console within \(timeout); console ends: \(String(try await console(client, uid: uid).suffix(1500)))")
}

/// A serial console's lines: it ends them with CR LF, which Swift reads as one Character, so `split(separator: "\n")` would not split them.
func consoleLines(_ text: String) -> [Substring] {
    text.split(whereSeparator: \.isNewline)
}

func console(_ client: AgentClient, uid: String) async throws -> String {
    let box = Collected()
    try await client.consoleLog(uid: uid) { data in
        await box.add(data)
        return true
    }
    return await box.text
}

actor Collected {
    var data = Data()
    func add(_ d: Data) { data.append(d) }
    var text: String { String(decoding: data, as: UTF8.self) }
}

/// The code of an RPC failure, or nil when `body` succeeds.
func rpcCode(_ body: () async throws -> Void) async -> RPCError.Code? {
    do {
        try await body()
        return nil
    } catch let e as RPCError {
        return e.code
    } catch {
        return .unknown
    }
}

func rpcError(_ body: () async throws -> Void) async -> RPCError? {
    do {
        try await body()
        return nil
    } catch let e as RPCError {
        return e
    } catch {
        return RPCError(code: .unknown, message: "\(error)")
    }
}

func ping(_ ip: String) async -> Bool {
    for _ in 0..<5 {
        if let (t, _) = try? await HostProcess.runCapturing(["ping", "-c", "1", "-W", "2", ip]), t == .exited(0) { return true }
        try? await Task.sleep(for: .seconds(1))
    }
    return false
}
