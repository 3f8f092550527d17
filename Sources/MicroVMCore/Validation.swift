import Foundation

/// Limits and defaults the agent applies to a spec before it is stored.
public struct SpecPolicy: Sendable {
    public var defaultProvider: String
    /// Providers this host can run.
    public var availableProviders: Set<String>
    public var defaultBridge: String?
    public var vcpuRange: ClosedRange<Int>
    public var memoryRangeMB: ClosedRange<Int>

    public init(
        defaultProvider: String = "qemu", availableProviders: Set<String> = ["qemu"], defaultBridge: String? = nil,
        vcpuRange: ClosedRange<Int> = 1...64, memoryRangeMB: ClosedRange<Int> = 64...262_144
    ) {
        self.defaultProvider = defaultProvider
        self.availableProviders = availableProviders
        self.defaultBridge = defaultBridge
        self.vcpuRange = vcpuRange
        self.memoryRangeMB = memoryRangeMB
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
        if kernel.addNetworkConfig {
            throw .invalid("kernel.add_network_config", "generated network-config is not supported by this agent yet")
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
            if iface.type == .macvtap {
                throw .invalid("\(f).type", "MACVTAP interfaces are not supported by this agent yet; use TAP")
            }
            if iface.address != nil {
                throw .invalid("\(f).address", "static addresses are not supported by this agent yet")
            }
            if let mac = iface.guestMAC {
                try Validate.mac(mac, field: "\(f).guest_mac")
                guard macs.insert(mac.lowercased()).inserted else {
                    throw .invalid("\(f).guest_mac", "\(mac) is used by another interface")
                }
            }
            guard let bridge = iface.bridgeName, !bridge.isEmpty else {
                throw .invalid("\(f).overrides.bridge_name", "a TAP interface needs a bridge: set overrides.bridge_name or start the agent with --bridge-name")
            }
            try Validate.interfaceName(bridge, field: "\(f).overrides.bridge_name")
        }
        if !metadata.isEmpty {
            throw .invalid("metadata", "cloud-init metadata is not supported by this agent yet")
        }
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

    static func volume(_ v: VolumeSpec, field: String) throws(AgentError) {
        try objectName(v.id, field: "\(field).id")
        if v.virtiofsSource != nil { throw .invalid("\(field).source.virtiofs_source", "virtiofs volumes are not supported by this agent yet") }
        guard let src = v.containerSource, !src.isEmpty else {
            throw .invalid("\(field).source.container_source", "is required")
        }
        try imageReference(src, field: "\(field).source.container_source")
        if v.mountPoint != nil && v.mountPoint != "" {
            throw .invalid("\(field).mount_point", "mounting volumes through cloud-init is not supported by this agent yet")
        }
        if let size = v.sizeInMB, size < 0 || size > 1_048_576 {
            throw .invalid("\(field).size_in_mb", "\(size) is out of range 0-1048576")
        }
        if let p = v.partitionID, !p.isEmpty { throw .invalid("\(field).partition_id", "partitions are not supported by this agent yet") }
    }
}
