import Foundation

/// Limits and defaults the agent applies to a spec before it is stored.
public struct SpecPolicy: Sendable {
    public var defaultProvider: String
    /// Providers this host can run.
    public var availableProviders: Set<String>
    public var defaultBridge: String?
    public var vcpuRange: ClosedRange<Int>
    public var memoryRangeMB: ClosedRange<Int>
    /// The host interface macvtap devices hang off (`--parent-iface`); nil: no macvtap.
    public var parentInterface: String?
    /// The bridge the agent owns, with its subnet (`--bridge-name` with `--bridge-cidr`): TAPs on it
    /// without a static address get an address allocated from the subnet.
    public var agentNetwork: AgentNetwork?

    public init(
        defaultProvider: String = "qemu", availableProviders: Set<String> = ["qemu"], defaultBridge: String? = nil,
        vcpuRange: ClosedRange<Int> = 1...64, memoryRangeMB: ClosedRange<Int> = 64...262_144,
        parentInterface: String? = nil, agentNetwork: AgentNetwork? = nil
    ) {
        self.defaultProvider = defaultProvider
        self.availableProviders = availableProviders
        self.defaultBridge = defaultBridge
        self.vcpuRange = vcpuRange
        self.memoryRangeMB = memoryRangeMB
        self.parentInterface = parentInterface
        self.agentNetwork = agentNetwork
    }

    public static let defaultVCPU = 2
    public static let defaultMemoryMB = 1024
    public static let defaultNamespace = "default"
    /// Where a kernel sits inside an image when the spec names no file, per provider.
    public static func defaultKernelFilename(provider: String) -> String {
        provider == "qemu" ? "boot/vmlinuz" : "boot/vmlinux"
    }
    public static let defaultInitrdFilename = "boot/initrd"
}

extension MicroVMSpec {
    /// The spec with defaults filled in, validated. Throws INVALID_ARGUMENT naming the first bad
    /// field, or FAILED_PRECONDITION when the host cannot run what is asked for.
    public func normalized(policy: SpecPolicy) throws(AgentError) -> MicroVMSpec {
        var s = self
        if s.namespace.isEmpty { s.namespace = SpecPolicy.defaultNamespace }
        if s.vcpu == 0 { s.vcpu = SpecPolicy.defaultVCPU }
        if s.memoryInMB == 0 { s.memoryInMB = SpecPolicy.defaultMemoryMB }
        if s.provider == nil || s.provider == "" { s.provider = policy.defaultProvider }
        let provider = s.provider!
        if s.kernel.filename == nil { s.kernel.filename = SpecPolicy.defaultKernelFilename(provider: provider) }
        if var initrd = s.initrd, initrd.filename == nil {
            initrd.filename = SpecPolicy.defaultInitrdFilename
            s.initrd = initrd
        }
        for i in s.interfaces.indices where s.interfaces[i].type == .tap && s.interfaces[i].bridgeName == nil {
            s.interfaces[i].bridgeName = policy.defaultBridge
        }
        try s.validate(policy: policy)
        return s
    }

    /// Checks a defaulted spec.
    public func validate(policy: SpecPolicy) throws(AgentError) {
        try Validate.objectName(name, field: "id")
        try Validate.objectName(namespace, field: "namespace")
        for (k, v) in labels {
            guard !k.isEmpty, k.count <= 253, !k.contains(where: { $0.isWhitespace || $0.isNewline }) else {
                throw .invalid("labels", "label key \"\(k)\" must be 1-253 characters without spaces")
            }
            guard v.count <= 1024 else { throw .invalid("labels[\(k)]", "value longer than 1024 characters") }
        }
        guard policy.vcpuRange.contains(vcpu) else {
            throw .invalid("vcpu", "\(vcpu) is out of range \(policy.vcpuRange.lowerBound)-\(policy.vcpuRange.upperBound)")
        }
        guard policy.memoryRangeMB.contains(memoryInMB) else {
            throw .invalid("memory_in_mb", "\(memoryInMB) is out of range \(policy.memoryRangeMB.lowerBound)-\(policy.memoryRangeMB.upperBound)")
        }
        let provider = self.provider ?? policy.defaultProvider
        guard ["qemu", "firecracker", "cloudhypervisor"].contains(provider) else {
            throw .invalid("provider", "unknown provider \"\(provider)\" (known: qemu, firecracker, cloudhypervisor)")
        }
        guard policy.availableProviders.contains(provider) else {
            throw AgentError(.failedPrecondition, "provider: \"\(provider)\" is not installed on this host (available: \(policy.availableProviders.sorted().joined(separator: ", ")))")
        }
        guard !kernel.image.isEmpty else { throw .invalid("kernel.image", "is required") }
        try Validate.imageReference(kernel.image, field: "kernel.image")
        try Validate.filename(kernel.filename ?? "", field: "kernel.filename")
        for (k, _) in kernel.cmdline {
            guard !k.isEmpty, !k.contains(where: { $0.isWhitespace }) else {
                throw .invalid("kernel.cmdline", "key \"\(k)\" must be non-empty without spaces")
            }
        }
        for (k, v) in kernel.cmdline where v.contains(where: { $0.isNewline }) {
            throw .invalid("kernel.cmdline[\(k)]", "value must not contain a newline")
        }
        if let initrd {
            guard !initrd.image.isEmpty else { throw .invalid("initrd.image", "is required when initrd is given") }
            try Validate.imageReference(initrd.image, field: "initrd.image")
            try Validate.filename(initrd.filename ?? "", field: "initrd.filename")
        }
        guard let rootVolume else { throw .invalid("root_volume", "is required") }
        try Validate.volume(rootVolume, field: "root_volume")
        var volumeIDs: Set<String> = [rootVolume.id]
        for (i, v) in additionalVolumes.enumerated() {
            try Validate.volume(v, field: "additional_volumes[\(i)]")
            guard volumeIDs.insert(v.id).inserted else {
                throw .invalid("additional_volumes[\(i)].id", "\"\(v.id)\" is used by another volume")
            }
        }
        guard interfaces.count <= 32 else { throw .invalid("interfaces", "\(interfaces.count) interfaces; at most 32 are supported") }
        var deviceIDs: Set<String> = []
        var macs: Set<String> = []
        for (i, iface) in interfaces.enumerated() {
            let f = "interfaces[\(i)]"
            try Validate.deviceID(iface.deviceID, field: "\(f).device_id")
            guard deviceIDs.insert(iface.deviceID).inserted else {
                throw .invalid("\(f).device_id", "\"\(iface.deviceID)\" is used by another interface")
            }
            if let address = iface.address { try Validate.staticAddress(address, field: "\(f).address") }
            if let mac = iface.guestMAC {
                try Validate.mac(mac, field: "\(f).guest_mac")
                guard macs.insert(mac.lowercased()).inserted else {
                    throw .invalid("\(f).guest_mac", "\(mac) is used by another interface")
                }
            }
            if iface.type == .macvtap {
                guard policy.parentInterface != nil else {
                    throw AgentError(.failedPrecondition, "\(f).type: MACVTAP needs a parent interface; start the agent with --parent-iface")
                }
                if let b = iface.bridgeName, !b.isEmpty, b != policy.defaultBridge {
                    throw .invalid("\(f).overrides.bridge_name", "a MACVTAP interface hangs off --parent-iface, not a bridge")
                }
                continue
            }
            guard let bridge = iface.bridgeName, !bridge.isEmpty else {
                throw .invalid("\(f).overrides.bridge_name", "a TAP interface needs a bridge: set overrides.bridge_name or start the agent with --bridge-name")
            }
            try Validate.interfaceName(bridge, field: "\(f).overrides.bridge_name")
            // A static address inside the agent's subnet is taken from its pool: it must be a host
            // address of that subnet, with its prefix. (One outside it is the user's own network.)
            if let net = policy.agentNetwork, bridge == net.bridge, let a = iface.address,
               let v4 = IPv4Interface(cidr: a.address), net.gateway.contains(v4.address) {
                guard v4.prefixLength == net.gateway.prefixLength else {
                    throw .invalid("\(f).address.address", "\(a.address) is in the agent's network \(net.gateway.networkCIDR): use its prefix /\(net.gateway.prefixLength)")
                }
                guard net.gateway.hostAddresses.contains(v4.address.value) else {
                    throw .invalid("\(f).address.address", "\(v4.address) is the network or broadcast address of \(net.gateway.networkCIDR)")
                }
            }
        }
        try Validate.metadata(metadata)
    }

    /// The addresses this VM takes on the agent's network: a fixed claim for a static address inside
    /// its subnet, an allocation for each TAP on its bridge without one.
    public func addressClaims(policy: SpecPolicy) -> [AddressClaim] {
        guard let net = policy.agentNetwork else { return [] }
        var claims: [AddressClaim] = []
        for (i, iface) in interfaces.enumerated() where iface.type == .tap && iface.bridgeName == net.bridge {
            if let a = iface.address {
                if let v4 = IPv4Interface(cidr: a.address), net.gateway.contains(v4.address) {
                    claims.append(AddressClaim(deviceID: iface.deviceID, network: net, fixed: v4.address, field: "interfaces[\(i)].address.address"))
                }
            } else {
                claims.append(AddressClaim(deviceID: iface.deviceID, network: net, fixed: nil, field: "interfaces[\(i)]"))
            }
        }
        return claims
    }
}

/// Field checks shared by the spec validation and the API layer.
public enum Validate {
    /// Names and namespaces become directory names and device-name parts: keep them plain.
    public static func objectName(_ s: String, field: String) throws(AgentError) {
        guard !s.isEmpty else { throw .invalid(field, "is required") }
        guard s.count <= 63 else { throw .invalid(field, "\"\(s)\" is longer than 63 characters") }
        guard !s.contains("/"), s != ".", s != "..", !s.contains("..") else {
            throw .invalid(field, "\"\(s)\" must not contain \"/\" or \"..\"")
        }
        guard let first = s.first, first.isASCII, first.isLetter || first.isNumber,
              s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
        else {
            throw .invalid(field, "\"\(s)\" must start with a letter or digit and contain only letters, digits, '-', '_' and '.'")
        }
    }

    /// A relative path inside an image: no absolute paths, no `..`.
    public static func filename(_ s: String, field: String) throws(AgentError) {
        guard !s.isEmpty else { throw .invalid(field, "must not be empty") }
        guard !s.hasPrefix("/") else { throw .invalid(field, "\"\(s)\" must be a path relative to the image root, without a leading \"/\"") }
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) else {
            throw .invalid(field, "\"\(s)\" must not contain \"..\", \".\" or empty path segments")
        }
        guard !s.contains(where: { $0 == "\0" || $0.isNewline }) else { throw .invalid(field, "contains control characters") }
    }

    public static func imageReference(_ s: String, field: String) throws(AgentError) {
        do { _ = try ImageReference(parsing: s) } catch { throw .invalid(field, error.message) }
    }

    public static func deviceID(_ s: String, field: String) throws(AgentError) {
        guard let f = s.first, f.isASCII, f.isLetter, f.isLowercase,
              s.allSatisfy({ $0.isASCII && (($0.isLetter && $0.isLowercase) || $0.isNumber || $0 == "_") })
        else { throw .invalid(field, "\"\(s)\" must match ^[a-z][a-z0-9_]*$") }
        guard s.count <= 32 else { throw .invalid(field, "\"\(s)\" is longer than 32 characters") }
    }

    /// A unicast MAC address `aa:bb:cc:dd:ee:ff`.
    public static func mac(_ s: String, field: String) throws(AgentError) {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && $0.allSatisfy { $0.isASCII && $0.isHexDigit } }) else {
            throw .invalid(field, "\"\(s)\" is not a MAC address like 02:00:00:00:00:01")
        }
        guard let b = UInt8(parts[0], radix: 16), b & 1 == 0 else { throw .invalid(field, "\(s) is a multicast address") }
        guard s.lowercased() != "00:00:00:00:00:00" else { throw .invalid(field, "the zero MAC address is not allowed") }
    }

    /// A Linux network interface name: 1-15 bytes, no '/', ':' or whitespace.
    public static func interfaceName(_ s: String, field: String) throws(AgentError) {
        guard (1...15).contains(s.utf8.count), s != ".", s != "..",
              !s.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace || !$0.isASCII })
        else { throw .invalid(field, "\"\(s)\" is not a valid interface name (1-15 characters, no '/', ':' or spaces)") }
    }

    /// A static address: an address in CIDR form, a gateway (bare or CIDR) on the same subnet,
    /// nameservers that are IP addresses.
    public static func staticAddress(_ a: StaticAddress, field: String) throws(AgentError) {
        guard let addr = IPText.cidr(a.address) else {
            throw .invalid("\(field).address", "\"\(a.address)\" is not an address in CIDR form like 10.0.0.5/24")
        }
        if let g = a.gateway, !g.isEmpty {
            let bare = String(g.split(separator: "/", maxSplits: 1).first ?? "")
            guard IPText.isIP(bare), g.contains("/") ? IPText.cidr(g) != nil : true else {
                throw .invalid("\(field).gateway", "\"\(g)\" is not an IP address")
            }
            if addr.v6 != IPText.isIPv6(bare) {
                throw .invalid("\(field).gateway", "\(g) and \(a.address) are not of the same IP family")
            }
            if !addr.v6, let net = IPv4Interface(cidr: a.address), let gw = IPv4Address(bare) {
                guard net.contains(gw) else { throw .invalid("\(field).gateway", "\(g) is outside the subnet \(net.networkCIDR)") }
                guard gw != net.address else { throw .invalid("\(field).gateway", "\(g) is the interface's own address") }
            }
        }
        for (i, n) in a.nameservers.enumerated() where !IPText.isIP(n) {
            throw .invalid("\(field).nameservers[\(i)]", "\"\(n)\" is not an IP address")
        }
    }

    /// cloud-init documents: the four NoCloud keys, each base64.
    public static func metadata(_ m: [String: String]) throws(AgentError) {
        for (k, v) in m.sorted(by: { $0.key < $1.key }) {
            guard CloudInitKey.all.contains(k) else {
                throw .invalid("metadata[\(k)]", "unknown document; the keys are \(CloudInitKey.all.joined(separator: ", "))")
            }
            guard let data = Data(base64Encoded: v, options: .ignoreUnknownCharacters), v.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "+/=\n\r".contains($0)) }) else {
                throw .invalid("metadata[\(k)]", "is not base64")
            }
            guard data.count <= 16 << 20 else { throw .invalid("metadata[\(k)]", "is larger than 16 MiB") }
        }
    }

    static func volume(_ v: VolumeSpec, field: String) throws(AgentError) {
        try objectName(v.id, field: "\(field).id")
        if v.virtiofsSource != nil { throw .invalid("\(field).source.virtiofs_source", "virtiofs volumes are not supported by this agent yet") }
        guard let src = v.containerSource, !src.isEmpty else {
            throw .invalid("\(field).source.container_source", "is required")
        }
        try imageReference(src, field: "\(field).source.container_source")
        if let m = v.mountPoint, !m.isEmpty {
            guard m.hasPrefix("/"), m != "/", !m.contains(where: { $0.isWhitespace || $0.isNewline || $0 == "\0" }),
                  !m.split(separator: "/").contains("..") else {
                throw .invalid("\(field).mount_point", "\"\(m)\" must be an absolute path other than /, without spaces or \"..\"")
            }
            if field == "root_volume" { throw .invalid("\(field).mount_point", "the root volume is mounted at / by the guest's initrd") }
        }
        if let size = v.sizeInMB, size < 0 || size > 1_048_576 {
            throw .invalid("\(field).size_in_mb", "\(size) is out of range 0-1048576")
        }
        if let size = v.sizeInMB, size > 0, v.isReadOnly {
            throw .invalid("\(field).size_in_mb", "a read-only volume is as large as its image; size_in_mb applies to writable volumes")
        }
        if let p = v.partitionID, !p.isEmpty { throw .invalid("\(field).partition_id", "partitions are not supported by this agent yet") }
    }
}
