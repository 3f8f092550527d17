import Foundation
import HostSystem
import Logging
import MicroVMCore

/// TAP devices on Linux bridges, managed with iproute2. Each TAP carries an alias naming its VM
/// (`liquidmetal <namespace>/<name>/<uid> <device_id>`) so a leftover can be traced.
public final class TapNetwork: NetworkService {
    let logger: Logger
    public init(logger: Logger) { self.logger = logger }

    static func sysfs(_ name: String) -> String { "/sys/class/net/\(name)" }

    public func interfaceExists(name: String) async throws -> Bool {
        HostFiles.exists(Self.sysfs(name))
    }

    public func ensureTap(name: String, bridge: String, guestMAC: String, for vm: MicroVMRef) async throws -> InterfaceStatus {
        guard HostFiles.exists("\(Self.sysfs(bridge))/bridge") else {
            if HostFiles.exists(Self.sysfs(bridge)) {
                throw AgentError(.failedPrecondition, "\(bridge) exists on this host but is not a bridge")
            }
            throw AgentError(.failedPrecondition, "bridge \(bridge) does not exist on this host (create it, or name another with overrides.bridge_name / --bridge-name)")
        }
        var commands: [String] = []
        if !HostFiles.exists(Self.sysfs(name)) {
            commands.append("tuntap add dev \(name) mode tap")
        } else if !HostFiles.exists("\(Self.sysfs(name))/tun_flags") {
            throw AgentError(.failedPrecondition, "host device \(name) exists and is not a TAP device")
        }
        let master = (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(Self.sysfs(name))/master")).map { ($0 as NSString).lastPathComponent }
        commands.append("link set dev \(name) alias \"liquidmetal \(vm) \(name)\"")
        if master != bridge { commands.append("link set dev \(name) master \(bridge)") }
        commands.append("link set dev \(name) up")
        // One iproute2 process for all of it.
        try await HostProcess.run(["ip", "-batch", "-"], input: commands.joined(separator: "\n") + "\n")
        logger.info("tap ready", metadata: ["uid": "\(vm.uid)", "tap": "\(name)", "bridge": "\(bridge)"])
        let index = Int((try? String(contentsOfFile: "\(Self.sysfs(name))/ifindex", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        return InterfaceStatus(hostDeviceName: name, index: index, macAddress: guestMAC)
    }

    public func ensureMacvtap(name: String, parent: String, guestMAC: String, for vm: MicroVMRef) async throws -> InterfaceStatus {
        guard HostFiles.exists(Self.sysfs(parent)) else {
            throw AgentError(.failedPrecondition, "parent interface \(parent) (--parent-iface) does not exist on this host")
        }
        let mac = guestMAC.lowercased()
        if HostFiles.exists(Self.sysfs(name)) {
            // Ours only if it is a macvtap on the same parent with the guest's MAC; else recreate it.
            let current = (try? String(contentsOfFile: "\(Self.sysfs(name))/address", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            let link = (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(Self.sysfs(name))/lower_\(parent)")) != nil
            if current != mac || !link || !HostFiles.exists("\(Self.sysfs(name))/macvtap") {
                try await HostProcess.run(["ip", "link", "del", "dev", name])
            }
        }
        if !HostFiles.exists(Self.sysfs(name)) {
            try await HostProcess.run(["ip", "link", "add", "link", parent, "name", name, "address", mac, "type", "macvtap", "mode", "bridge"])
        }
        try await HostProcess.run(["ip", "-batch", "-"], input: "link set dev \(name) alias \"liquidmetal \(vm) \(name)\"\nlink set dev \(name) up\n")
        let index = Int((try? String(contentsOfFile: "\(Self.sysfs(name))/ifindex", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        guard index > 0, HostFiles.exists("/dev/tap\(index)") else {
            throw AgentError(.internalError, "macvtap \(name) has no character device /dev/tap\(index)")
        }
        logger.info("macvtap ready", metadata: ["uid": "\(vm.uid)", "macvtap": "\(name)", "parent": "\(parent)", "mac": "\(mac)"])
        return InterfaceStatus(hostDeviceName: name, index: index, macAddress: mac)
    }

    public func deleteInterface(name: String) async throws {
        guard HostFiles.exists(Self.sysfs(name)) else { return }
        try await HostProcess.run(["ip", "link", "del", "dev", name])
        logger.info("deleted tap", metadata: ["tap": "\(name)"])
    }
}
