import Foundation

/// Where the agent keeps microVMs. Every write is one transaction.
public protocol MicroVMRepository: Sendable {
    /// Stores a new VM. Throws ALREADY_EXISTS when a VM with the same namespace and name exists,
    /// including one still being deleted (its name is free once it is gone).
    func insert(_ vm: MicroVM) throws -> MicroVM
    /// Stores a new VM and takes the addresses it claims, in one transaction: allocated addresses go
    /// into `status.allocatedAddresses`. ALREADY_EXISTS when a fixed address is taken,
    /// FAILED_PRECONDITION when the subnet is full. `remove(uid:)` frees them.
    func insert(_ vm: MicroVM, claims: [AddressClaim]) throws -> MicroVM
    func get(uid: String) throws -> MicroVM?
    /// VMs in `namespace` (all when nil), optionally only those called `name`.
    func list(namespace: String?, name: String?) throws -> [MicroVM]
    /// Writes `vm` if its version is still the stored one; returns it with the version bumped.
    /// Throws FAILED_PRECONDITION on a version conflict and NOT_FOUND when gone.
    func update(_ vm: MicroVM) throws -> MicroVM
    /// Removes a VM's record for good.
    func remove(uid: String) throws
}

/// The cloud-init (NoCloud) document names, as metadata keys and seed-disk file names.
public enum CloudInitKey {
    public static let metaData = "meta-data"
    public static let userData = "user-data"
    public static let vendorData = "vendor-data"
    public static let networkConfig = "network-config"
    public static let all = [metaData, userData, vendorData, networkConfig]
}

/// The bridge the agent owns and the subnet it allocates guest addresses from.
public struct AgentNetwork: Sendable, Equatable {
    public var bridge: String
    /// The bridge's own address with the subnet's prefix: the guests' gateway ("10.200.0.1/24").
    public var gateway: IPv4Interface
    /// Nameservers written into generated network-config for allocated addresses.
    public var nameservers: [String]
    public init(bridge: String, gateway: IPv4Interface, nameservers: [String] = []) {
        self.bridge = bridge
        self.gateway = gateway
        self.nameservers = nameservers
    }
}

/// An address a new VM's interface takes on the agent's network, stored with the VM in one transaction.
public struct AddressClaim: Sendable, Equatable {
    public var deviceID: String
    public var network: AgentNetwork
    /// A static address inside the subnet (must be free), or nil: the lowest free address.
    public var fixed: IPv4Address?
    /// The spec field to name in errors.
    public var field: String
    public init(deviceID: String, network: AgentNetwork, fixed: IPv4Address?, field: String) {
        self.deviceID = deviceID
        self.network = network
        self.fixed = fixed
        self.field = field
    }
}

/// A file taken out of an image, ready for a VMM.
public struct ImageFile: Sendable, Equatable {
    public var path: String
    public init(path: String) { self.path = path }
}

/// Images and volumes through an image store (containerd).
public protocol ImageService: Sendable {
    /// Pulls `reference` if needed, unpacks it and returns where `filename` of it is on the host.
    /// The VM's lease keeps what it uses from garbage collection.
    func fetchFile(reference: String, filename: String, for vm: MicroVMRef) async throws -> ImageFile
    /// Pulls `reference` if needed and returns a block file holding its filesystem (shared, read-only;
    /// callers add their own copy-on-write layer).
    func volumeImage(reference: String, for vm: MicroVMRef) async throws -> ImageFile
    /// Whether the VM's lease exists.
    func hasLease(for vm: MicroVMRef) async throws -> Bool
    /// Drops the VM's lease so the image store may collect what only it used.
    func releaseLease(for vm: MicroVMRef) async throws
    /// Throws UNAVAILABLE when the image store cannot be reached.
    func checkAvailable() async throws
}

/// Host network devices for VMs.
public protocol NetworkService: Sendable {
    /// Creates (or finds) the TAP named `name` attached to `bridge`; returns its status.
    func ensureTap(name: String, bridge: String, guestMAC: String, for vm: MicroVMRef) async throws -> InterfaceStatus
    /// Creates (or finds) the macvtap named `name` on `parent` in bridge mode with the guest's MAC.
    func ensureMacvtap(name: String, parent: String, guestMAC: String, for vm: MicroVMRef) async throws -> InterfaceStatus
    func interfaceExists(name: String) async throws -> Bool
    func deleteInterface(name: String) async throws
}

/// What a VMM needs to start a VM.
public struct VMLaunchSpec: Sendable, Equatable {
    public struct Disk: Sendable, Equatable {
        public var id: String
        public var path: String
        public var format: String
        public var readOnly: Bool
        public init(id: String, path: String, format: String, readOnly: Bool) {
            self.id = id
            self.path = path
            self.format = format
            self.readOnly = readOnly
        }
    }
    public struct NIC: Sendable, Equatable {
        public var deviceID: String
        /// The host device: a TAP the VMM opens by name, or a macvtap whose /dev/tapN it opens.
        public var tapName: String
        public var mac: String
        public var isMacvtap: Bool
        public init(deviceID: String, tapName: String, mac: String, isMacvtap: Bool = false) {
            self.deviceID = deviceID
            self.tapName = tapName
            self.mac = mac
            self.isMacvtap = isMacvtap
        }
    }
    public var ref: MicroVMRef
    public var vcpu: Int
    public var memoryInMB: Int
    public var kernelPath: String
    public var initrdPath: String?
    public var kernelCmdline: String
    public var disks: [Disk]
    public var nics: [NIC]
    public var directory: String

    public init(ref: MicroVMRef, vcpu: Int, memoryInMB: Int, kernelPath: String, initrdPath: String?, kernelCmdline: String, disks: [Disk], nics: [NIC], directory: String) {
        self.ref = ref
        self.vcpu = vcpu
        self.memoryInMB = memoryInMB
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.kernelCmdline = kernelCmdline
        self.disks = disks
        self.nics = nics
        self.directory = directory
    }
}

/// The state of a VM's VMM process as the provider measures it.
public enum VMMRunState: Sendable, Equatable {
    /// No VMM process for this VM.
    case notRunning
    /// The process runs, but the guest is not (yet) running (paused, starting).
    case starting(pid: Int32)
    /// The VMM reports the guest running.
    case running(pid: Int32)
    /// The VMM process ended; `reason` says how (exit status, signal, guest panic).
    case exited(reason: String)
}

/// A virtual machine monitor.
public protocol VMMProvider: Sendable {
    var name: String { get }
    /// The acceleration this provider uses on this host ("kvm" or "tcg").
    var accelerator: String { get }
    /// Default kernel command line for this VMM, before the spec's entries.
    var defaultCmdline: [(String, String)] { get }
    /// Starts the VMM in its own session; returns its pid. The VMM writes the serial console to
    /// `<directory>/console.log`.
    func start(_ spec: VMLaunchSpec) async throws -> Int32
    /// Measures the VM's VMM: is the recorded process really this VM's, and what does it report?
    func state(of ref: MicroVMRef, directory: String) async -> VMMRunState
    /// Stops the VM: graceful shutdown, then SIGTERM, then SIGKILL. Idempotent.
    func stop(_ ref: MicroVMRef, directory: String) async throws
    /// The disk format of the VM's writable layers (for example "qcow2").
    var writableLayerFormat: String { get }
    /// Creates a copy-on-write layer at `path` over the shared read-only `base`, as large as `sizeInMB`
    /// when that is larger than the base (the guest grows its filesystem into the rest). Idempotent.
    /// Returns the layer's size in bytes.
    @discardableResult
    func createWritableLayer(base: String, at path: String, sizeInMB: Int?) async throws -> Int64
    /// Calls `onExit` as soon as the VM's VMM process goes away. False when it cannot be watched.
    func watchExit(of ref: MicroVMRef, directory: String, onExit: @escaping @Sendable () -> Void) -> Bool
    /// Where the VM's serial console is logged.
    func consoleLogPath(directory: String) -> String
}
