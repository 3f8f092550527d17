import Foundation
import MicroVMCore
import Synchronization

/// A change to a stored microVM, for watchers.
public enum MicroVMChange: Sendable {
    case added(MicroVM)
    case modified(MicroVM)
    case deleted(MicroVM)

    public var vm: MicroVM {
        switch self {
        case .added(let v), .modified(let v), .deleted(let v): return v
        }
    }
}

/// The repository plus change notifications. Every write goes through here, so watchers see
/// every change in order.
public final class StateStore: Sendable {
    public let repository: any MicroVMRepository
    private let subscribers = Mutex<[UUID: AsyncStream<MicroVMChange>.Continuation]>([:])
    private let writeLock = Mutex<Void>(())

    public init(repository: any MicroVMRepository) { self.repository = repository }

    public func get(uid: String) throws -> MicroVM? { try repository.get(uid: uid) }
    public func list(namespace: String?, name: String? = nil) throws -> [MicroVM] { try repository.list(namespace: namespace, name: name) }

    /// Stores a new VM. `admit` sees every stored VM under the same lock as the insert, so two
    /// creates at once cannot both fit into room for one.
    public func insert(_ vm: MicroVM, claims: [AddressClaim] = [], admit: (([MicroVM]) throws -> Void)? = nil) throws -> MicroVM {
        try writeLock.withLock { _ in
            if let admit { try admit(try repository.list(namespace: nil, name: nil)) }
            let stored = try repository.insert(vm, claims: claims)
            publish(.added(stored))
            return stored
        }
    }

    /// Reads, changes and writes a VM, retrying on a concurrent change. `change` returns false to
    /// leave the VM as it is. Returns the stored VM, or nil when it is gone.
    @discardableResult
    public func mutate(uid: String, _ change: (inout MicroVM) throws -> Bool) throws -> MicroVM? {
        try writeLock.withLock { _ in
            guard var vm = try repository.get(uid: uid) else { return nil }
            let before = vm
            guard try change(&vm), vm != before else { return before }
            vm.updatedAt = Date()
            let stored = try repository.update(vm)
            publish(.modified(stored))
            return stored
        }
    }

    public func remove(uid: String) throws {
        try writeLock.withLock { _ in
            guard let vm = try repository.get(uid: uid) else { return }
            try repository.remove(uid: uid)
            publish(.deleted(vm))
        }
    }

    /// A stream of every change from now on, until the consumer stops.
    public func changes() -> AsyncStream<MicroVMChange> {
        let id = UUID()
        let (stream, cont) = AsyncStream<MicroVMChange>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        subscribers.withLock { $0[id] = cont }
        cont.onTermination = { [weak self] _ in self?.subscribers.withLock { _ = $0.removeValue(forKey: id) } }
        return stream
    }

    private func publish(_ c: MicroVMChange) {
        for cont in subscribers.withLock({ Array($0.values) }) { cont.yield(c) }
    }
}
