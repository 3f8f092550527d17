import MicroVMCore

/// A guest interface as network-config describes it: matched by MAC, with a static (or agent-
/// allocated) address, or DHCP.
public struct GuestInterface: Sendable, Equatable {
    public var deviceID: String
    public var mac: String
    /// nil: DHCP.
    public var address: StaticAddress?

    public init(deviceID: String, mac: String, address: StaticAddress?) {
        self.deviceID = deviceID
        self.mac = mac
        self.address = address
    }
}

/// cloud-init network configuration version 2 (the netplan format), as Flintlock writes it:
/// `ethernets` keyed by device_id, each matched by MAC; DHCP (v4 and v6, client id from the MAC)
/// unless it has an address, then `addresses`, `gateway4`/`gateway6` and `nameservers`.
public enum NetworkConfigV2 {
    public static func render(_ interfaces: [GuestInterface]) -> String {
        var out = "version: 2\nethernets:\n"
        for i in interfaces {
            out += "  \(i.deviceID):\n"
            out += "    match:\n      macaddress: \"\(i.mac.lowercased())\"\n"
            guard let a = i.address else {
                out += "    dhcp4: true\n    dhcp6: true\n    dhcp-identifier: mac\n"
                continue
            }
            out += "    addresses:\n      - \(a.address)\n"
            if let g = a.gateway, !g.isEmpty {
                let bare = String(g.split(separator: "/", maxSplits: 1).first ?? "")
                out += "    \(IPText.isIPv6(bare) ? "gateway6" : "gateway4"): \(bare)\n"
            }
            if !a.nameservers.isEmpty {
                out += "    nameservers:\n      addresses:\n" + a.nameservers.map { "        - \($0)\n" }.joined()
            }
        }
        return out
    }
}
