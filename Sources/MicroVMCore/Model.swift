import Foundation

/// What a user asks for: the desired microVM. Mirrors `flintlock.types.MicroVMSpec`
/// without the server-owned fields (uid and timestamps live on ``MicroVM``).
public struct MicroVMSpec: Sendable, Codable, Equatable {
    /// The VM's name (Flintlock's `id`).
    public var name: String
    public var namespace: String
    public var labels: [String: String]
    public var vcpu: Int
    public var memoryInMB: Int
    public var kernel: KernelSpec
    public var initrd: InitrdSpec?
    public var rootVolume: VolumeSpec?
    public var additionalVolumes: [VolumeSpec]
    public var interfaces: [NetworkInterfaceSpec]
    /// cloud-init documents (base64 values), keyed `meta-data`, `user-data`, `vendor-data`, `network-config`.
    public var metadata: [String: String]
    /// The VMM: `qemu`, `firecracker`, `cloudhypervisor`. Nil means the agent's default.
    public var provider: String?
    public var allowGuestAgent: Bool

    public init(
        name: String, namespace: String = "", labels: [String: String] = [:], vcpu: Int = 0,
        memoryInMB: Int = 0, kernel: KernelSpec, initrd: InitrdSpec? = nil, rootVolume: VolumeSpec? = nil,
        additionalVolumes: [VolumeSpec] = [], interfaces: [NetworkInterfaceSpec] = [],
        metadata: [String: String] = [:], provider: String? = nil, allowGuestAgent: Bool = false
    ) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.vcpu = vcpu
        self.memoryInMB = memoryInMB
        self.kernel = kernel
        self.initrd = initrd
        self.rootVolume = rootVolume
        self.additionalVolumes = additionalVolumes
        self.interfaces = interfaces
        self.metadata = metadata
        self.provider = provider
        self.allowGuestAgent = allowGuestAgent
    }
}

public struct KernelSpec: Sendable, Codable, Equatable {
    public var image: String
    /// Kernel command line entries; an empty value is a bare flag.
    public var cmdline: [String: String]
    /// Path of the kernel inside the image. Nil means the provider's default.
    public var filename: String?
    public var addNetworkConfig: Bool

    public init(image: String, cmdline: [String: String] = [:], filename: String? = nil, addNetworkConfig: Bool = false) {
        self.image = image
        self.cmdline = cmdline
        self.filename = filename
        self.addNetworkConfig = addNetworkConfig
    }
}

public struct InitrdSpec: Sendable, Codable, Equatable {
    public var image: String
    public var filename: String?
    public init(image: String, filename: String? = nil) {
        self.image = image
        self.filename = filename
    }
}

public struct VolumeSpec: Sendable, Codable, Equatable {
    public var id: String
    public var isReadOnly: Bool
    public var mountPoint: String?
    public var containerSource: String?
    public var virtiofsSource: String?
    public var partitionID: String?
    public var sizeInMB: Int?

    public init(
        id: String, isReadOnly: Bool = false, mountPoint: String? = nil, containerSource: String? = nil,
        virtiofsSource: String? = nil, partitionID: String? = nil, sizeInMB: Int? = nil
    ) {
        self.id = id
        self.isReadOnly = isReadOnly
        self.mountPoint = mountPoint
        self.containerSource = containerSource
        self.virtiofsSource = virtiofsSource
        self.partitionID = partitionID
        self.sizeInMB = sizeInMB
    }
}

public enum InterfaceType: String, Sendable, Codable {
    case macvtap
    case tap
}

public struct StaticAddress: Sendable, Codable, Equatable {
    public var address: String
    public var gateway: String?
    public var nameservers: [String]
    public init(address: String, gateway: String? = nil, nameservers: [String] = []) {
        self.address = address
        self.gateway = gateway
        self.nameservers = nameservers
    }
}

public struct NetworkInterfaceSpec: Sendable, Codable, Equatable {
    public var deviceID: String
    public var type: InterfaceType
    public var guestMAC: String?
    public var address: StaticAddress?
    public var bridgeName: String?

    public init(deviceID: String, type: InterfaceType, guestMAC: String? = nil, address: StaticAddress? = nil, bridgeName: String? = nil) {
        self.deviceID = deviceID
        self.type = type
        self.guestMAC = guestMAC
        self.address = address
        self.bridgeName = bridgeName
    }
}

public enum MicroVMState: String, Sendable, Codable, CaseIterable {
    case pending = "PENDING"
    case created = "CREATED"
    case failed = "FAILED"
    case deleting = "DELETING"
}

public enum MountType: String, Sendable, Codable {
    case dev = "DEV"
    case hostPath = "HOSTPATH"
}

public struct MountStatus: Sendable, Codable, Equatable {
    public var type: MountType
    public var source: String
    public init(type: MountType, source: String) {
        self.type = type
        self.source = source
    }
}

public struct InterfaceStatus: Sendable, Codable, Equatable {
    public var hostDeviceName: String
    public var index: Int
    public var macAddress: String
    public init(hostDeviceName: String, index: Int, macAddress: String) {
        self.hostDeviceName = hostDeviceName
        self.index = index
        self.macAddress = macAddress
    }
}

/// What the agent observed about a microVM.
public struct MicroVMStatus: Sendable, Codable, Equatable {
    public var state: MicroVMState
    public var volumes: [String: MountStatus]
    public var kernelMount: MountStatus?
    public var initrdMount: MountStatus?
    public var networkInterfaces: [String: InterfaceStatus]
    /// Failed attempts of the current plan (Flintlock's `retry`).
    public var retry: Int
    /// The last error, for humans; empty when the last attempt succeeded.
    public var failureReason: String
    public var firstConsoleOutputAt: Date?
    public var vmmStartedAt: Date?
    /// How often the VMM was restarted after it exited unexpectedly.
    public var restartCount: Int
    public var vmmPID: Int32
    public var accelerator: String
    /// Addresses the agent allocated on its own bridge, by device_id ("10.200.0.2/24"). Set when the
    /// VM is stored, kept until it is deleted. Optional so that records from before it decode.
    public var allocatedAddresses: [String: String]?

    public init(state: MicroVMState = .pending) {
        self.state = state
        self.volumes = [:]
        self.kernelMount = nil
        self.initrdMount = nil
        self.networkInterfaces = [:]
        self.retry = 0
        self.failureReason = ""
        self.firstConsoleOutputAt = nil
        self.vmmStartedAt = nil
        self.restartCount = 0
        self.vmmPID = 0
        self.accelerator = ""
    }
}

/// A stored microVM: spec, status and the fields the agent owns.
public struct MicroVM: Sendable, Codable, Equatable {
    public var uid: String
    /// Bumped on every stored change (optimistic concurrency and watch ordering).
    public var version: Int
    public var spec: MicroVMSpec
    public var status: MicroVMStatus
    public var createdAt: Date
    public var updatedAt: Date
    public var deletedAt: Date?

    public init(uid: String, version: Int = 1, spec: MicroVMSpec, status: MicroVMStatus = MicroVMStatus(), createdAt: Date, updatedAt: Date, deletedAt: Date? = nil) {
        self.uid = uid
        self.version = version
        self.spec = spec
        self.status = status
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.deletedAt = deletedAt
    }

    /// Names that identify the VM in logs and on host resources.
    public var ref: MicroVMRef { MicroVMRef(uid: uid, namespace: spec.namespace, name: spec.name) }
}

/// The identity of a VM: enough to find its directory and trace its host resources.
public struct MicroVMRef: Sendable, Hashable, CustomStringConvertible {
    public var uid: String
    public var namespace: String
    public var name: String
    public init(uid: String, namespace: String, name: String) {
        self.uid = uid
        self.namespace = namespace
        self.name = name
    }
    public var description: String { "\(namespace)/\(name)/\(uid)" }
}
