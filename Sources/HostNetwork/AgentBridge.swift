import Foundation
import HostSystem
import Logging
import MicroVMCore

/// The bridge the agent owns (`--bridge-name` with `--bridge-cidr`): created when missing, given the
/// gateway address, with IPv4 forwarding on and an nftables table of the agent's own that
/// masquerades guest traffic leaving the subnet. The agent touches no other table. What it set up is
/// recorded in `<state-dir>/network.json`, so that when a later start no longer asks for it, the
/// table, the address it added and the bridge it created (once no device is attached) are removed.
public struct AgentBridge: Sendable {
    public var network: AgentNetwork?
    public var stateDirectory: String
    let logger: Logger

    public init(network: AgentNetwork?, stateDirectory: String, logger: Logger) {
        self.network = network
        self.stateDirectory = stateDirectory
        self.logger = logger
    }

    /// What the agent set up for one bridge.
    struct Record: Codable, Equatable {
        var bridge: String
        var cidr: String
        var createdBridge: Bool
        var addedAddress: Bool
        var table: String
    }

    var recordFile: String { "\(stateDirectory)/network.json" }

    /// The nftables table of a bridge: `liquidmetal_<bridge>` (other characters become `_`).
    public static func tableName(bridge: String) -> String {
        "liquidmetal_" + String(bridge.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })
    }

    /// Sets up the configured bridge (idempotent) and removes what an earlier configuration left.
    public func reconcile() async throws {
        var records = (try? JSONDecoder().decode([Record].self, from: Data(contentsOf: URL(fileURLWithPath: recordFile)))) ?? []
        for r in records where r.bridge != network?.bridge || r.cidr != network?.gateway.description {
            let kept = try await remove(r)
            records.removeAll { $0 == r }
            if kept {
                // A bridge the agent made, still in use: keep owning it, to remove it once it is free
                // (or to go on with it, when only its address changed).
                var k = r
                k.addedAddress = false
                if let net = network, net.bridge == r.bridge { k.cidr = net.gateway.description }
                records.append(k)
            }
            try save(records)
        }
        guard let net = network else { return }
        let sys = "/sys/class/net/\(net.bridge)"
        var record = records.first { $0.bridge == net.bridge } ?? Record(bridge: net.bridge, cidr: net.gateway.description, createdBridge: false, addedAddress: false, table: Self.tableName(bridge: net.bridge))
        // Each change is recorded before it is made, so that a failure or a crash half-way still
        // leaves a trace to clean up (removal tolerates what is not there).
        if !HostFiles.exists(sys) {
            record.createdBridge = true
            try save(records.filter { $0.bridge != net.bridge } + [record])
            try await HostProcess.run(["ip", "link", "add", net.bridge, "type", "bridge"])
            logger.info("created bridge", metadata: ["bridge": "\(net.bridge)"])
        } else if !HostFiles.exists("\(sys)/bridge") {
            throw AgentError(.failedPrecondition, "--bridge-name \(net.bridge) exists on this host and is not a bridge")
        }
        try save(records.filter { $0.bridge != net.bridge } + [record])
        let addrs = try await HostProcess.run(["ip", "-o", "-4", "addr", "show", "dev", net.bridge])
        if !addrs.contains(" \(net.gateway.description) ") {
            record.addedAddress = true
            try save(records.filter { $0.bridge != net.bridge } + [record])
            try await HostProcess.run(["ip", "addr", "add", net.gateway.description, "dev", net.bridge])
        }
        try await HostProcess.run(["ip", "link", "set", net.bridge, "up"])
        let forwarding = "/proc/sys/net/ipv4/ip_forward"
        if (try? String(contentsOfFile: forwarding, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) != "1" {
            try Data("1\n".utf8).write(to: URL(fileURLWithPath: forwarding))
            logger.info("enabled IPv4 forwarding (net.ipv4.ip_forward=1) for guest egress")
        }
        try await HostProcess.run(["nft", "-f", "-"], input: Self.ruleset(table: record.table, bridge: net.bridge, subnet: net.gateway.networkCIDR))
        try save(records.filter { $0.bridge != net.bridge } + [record])
        logger.info("agent bridge ready", metadata: ["bridge": "\(net.bridge)", "gateway": "\(net.gateway)", "nft-table": "ip \(record.table)"])
    }

    /// The agent's table, replaced as a whole in one nft transaction: masquerade for guest traffic
    /// leaving the subnet, and forwarding accepted to and from the bridge.
    static func ruleset(table: String, bridge: String, subnet: String) -> String {
        """
        table ip \(table)
        delete table ip \(table)
        table ip \(table) {
          comment "liquidmetal flintlockd: guests on \(bridge)"
          chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr \(subnet) ip daddr != \(subnet) masquerade
          }
          chain forward {
            type filter hook forward priority filter; policy accept;
            iifname "\(bridge)" accept
            oifname "\(bridge)" ct state established,related accept
          }
        }

        """
    }

    /// Undoes what a record says the agent did; true when a bridge it created is left in place
    /// because devices are still attached.
    func remove(_ r: Record) async throws -> Bool {
        if (try? await HostProcess.run(["nft", "list", "table", "ip", r.table])) != nil {
            try await HostProcess.run(["nft", "delete", "table", "ip", r.table])
            logger.info("removed nftables table no longer configured", metadata: ["nft-table": "ip \(r.table)"])
        }
        let sys = "/sys/class/net/\(r.bridge)"
        guard HostFiles.exists(sys) else { return false }
        let ports = (try? FileManager.default.contentsOfDirectory(atPath: "\(sys)/brif")) ?? []
        if r.createdBridge && ports.isEmpty {
            try await HostProcess.run(["ip", "link", "del", r.bridge])
            logger.info("removed bridge no longer configured", metadata: ["bridge": "\(r.bridge)"])
            return false
        }
        if r.addedAddress { _ = try? await HostProcess.run(["ip", "addr", "del", r.cidr, "dev", r.bridge]) }
        guard r.createdBridge else { return false }
        logger.warning("bridge \(r.bridge) still has devices attached: \(ports.joined(separator: ", ")); left in place; removed at a later start once they are gone")
        return true
    }

    func save(_ records: [Record]) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try HostFiles.writeAtomically(try e.encode(records), to: recordFile)
    }
}
