import CloudInit
import Foundation
import Logging
import MicroVMCore

/// The agent's use cases, free of any transport: create, get, list, delete.
public final class MicroVMService: Sendable {
    let store: StateStore
    let reconciler: Reconciler
    let images: any ImageService
    let policy: SpecPolicy
    let admission: AdmissionLimits
    let logger: Logger

    public init(store: StateStore, reconciler: Reconciler, images: any ImageService, policy: SpecPolicy, admission: AdmissionLimits = AdmissionLimits(), logger: Logger) {
        self.store = store
        self.reconciler = reconciler
        self.images = images
        self.policy = policy
        self.admission = admission
        self.logger = logger
    }

    /// Validates and stores a new VM (state PENDING, a fresh ULID, timestamps set) and queues it.
    /// Any uid in the request is ignored. UNAVAILABLE when containerd cannot be reached;
    /// RESOURCE_EXHAUSTED, naming memory or vcpu, when the VM does not fit what the host has left
    /// (checked under the store's write lock, so concurrent creates cannot both take the last room).
    public func create(_ requested: MicroVMSpec) async throws -> MicroVM {
        let spec = try requested.normalized(policy: policy)
        try CloudInitDocuments.validate(metadata: spec.metadata, mounts: CloudInitDocuments.mounts(of: spec))
        try await images.checkAvailable()
        let now = Date()
        let vm = MicroVM(uid: ULID.make(date: now), spec: spec, status: MicroVMStatus(state: .pending), createdAt: now, updatedAt: now)
        // The record and its addresses on the agent's bridge are stored together, or not at all.
        let limits = admission
        let stored = try store.insert(vm, claims: spec.addressClaims(policy: policy)) { vms in
            try HostCapacityReport.measure(vms: vms, limits: limits).admit(vcpu: spec.vcpu, memoryMB: spec.memoryInMB)
        }
        logger.info("microVM accepted", metadata: ["uid": "\(vm.uid)", "namespace": "\(spec.namespace)", "name": "\(spec.name)"])
        reconciler.enqueue(stored.uid)
        return stored
    }

    public func get(uid: String) throws -> MicroVM {
        try Self.checkUID(uid)
        guard let vm = try store.get(uid: uid) else { throw AgentError(.notFound, "microVM \(uid) not found") }
        return vm
    }

    public func list(namespace: String, name: String?) throws -> [MicroVM] {
        try store.list(namespace: namespace.isEmpty ? nil : namespace, name: name)
    }

    /// The VM, if `principal` may read its namespace; NOT_FOUND otherwise (another namespace's
    /// VMs are invisible, not forbidden).
    public func get(uid: String, as principal: Principal) throws -> MicroVM {
        let vm = try get(uid: uid)
        guard principal.may(.read, namespace: vm.spec.namespace) else { throw AgentError(.notFound, "microVM \(uid) not found") }
        return vm
    }

    /// VMs in `namespace` (PERMISSION_DENIED if `principal` may not read it), or, with no
    /// namespace, every VM in the namespaces `principal` may read.
    public func list(namespace: String, name: String?, as principal: Principal) throws -> [MicroVM] {
        if !namespace.isEmpty { try principal.check(.read, namespace: namespace) }
        let vms = try list(namespace: namespace, name: name)
        return principal.readsEverything ? vms : vms.filter { principal.may(.read, namespace: $0.spec.namespace) }
    }

    /// Marks the VM DELETING and queues its removal; returns at once.
    public func delete(uid: String) throws {
        try Self.checkUID(uid)
        let vm = try store.mutate(uid: uid) { v in
            guard v.status.state != .deleting else { return false }
            v.status.state = .deleting
            v.status.retry = 0
            v.deletedAt = Date()
            return true
        }
        guard vm != nil else { throw AgentError(.notFound, "microVM \(uid) not found") }
        logger.info("microVM delete requested", metadata: ["uid": "\(uid)"])
        reconciler.enqueue(uid)
    }

    static func checkUID(_ uid: String) throws(AgentError) {
        guard !uid.isEmpty else { throw .invalid("uid", "is required") }
        guard uid.count <= 64, uid.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
            throw .invalid("uid", "\"\(uid)\" is not a microVM uid")
        }
    }
}
