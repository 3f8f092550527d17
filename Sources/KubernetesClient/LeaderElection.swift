import Foundation
import Logging
import Synchronization

/// `coordination.k8s.io/v1` Lease.
public struct Lease: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: "coordination.k8s.io", version: "v1", kind: "Lease", plural: "leases")
    public struct Spec: Codable, Sendable, Equatable {
        public var holderIdentity: String?
        public var leaseDurationSeconds: Int?
        public var acquireTime: String?
        public var renewTime: String?
        public var leaseTransitions: Int?
    }
    public var apiVersion: String? = Lease.resource.apiVersion
    public var kind: String? = "Lease"
    public var metadata: ObjectMeta
    public var spec: Spec?

    public init(metadata: ObjectMeta, spec: Spec? = nil) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// Leader election on a Lease, as client-go does it: take the lease when it is free or its holder
/// stopped renewing for `leaseDuration`, renew it every `retryPeriod`, give up leadership when a renewal
/// has not succeeded for `renewDeadline` (also when the API server does not answer at all: each attempt
/// is cut off at the deadline), and release it (empty holder) when stopped.
public struct LeaderElector: Sendable {
    public var client: KubernetesClient
    public var namespace: String
    public var name: String
    public var identity: String
    public var leaseDuration: Duration = .seconds(15)
    public var renewDeadline: Duration = .seconds(10)
    public var retryPeriod: Duration = .seconds(2)
    /// What the elector last heard from the API server (for readiness).
    public let status = LeaderElectionStatus()
    let logger: Logger

    public init(client: KubernetesClient, namespace: String, name: String, identity: String, logger: Logger) {
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.logger = logger
    }

    public struct LostLeadership: Error, CustomStringConvertible {
        public var description: String
    }

    /// Waits to become the leader, then runs `body` while renewing. Throws `LostLeadership` (after
    /// cancelling `body`) when renewing fails for `renewDeadline`; releases the lease when `body`
    /// returns or the task is cancelled.
    public func whileLeading<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        while true {
            do {
                if try await attempt(within: leaseDuration) { break }
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                logger.warning("could not read or take the lease; retrying", metadata: ["lease": "\(namespace)/\(name)", "error": "\(error)"])
            }
            try await Task.sleep(for: retryPeriod)
        }
        logger.info("became the leader", metadata: ["lease": "\(namespace)/\(name)", "identity": "\(identity)"])
        status.setLeading(true)
        defer { status.setLeading(false) }
        let result: T
        do {
            result = try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await body() }
                group.addTask {
                    var lastRenew = ContinuousClock.now
                    while true {
                        try await Task.sleep(for: retryPeriod)
                        let left = renewDeadline - (ContinuousClock.now - lastRenew)
                        if left > .zero, (try? await attempt(within: left)) == true {
                            lastRenew = .now
                        } else if ContinuousClock.now - lastRenew >= renewDeadline {
                            throw LostLeadership(description: "could not renew lease \(namespace)/\(name) within \(renewDeadline)")
                        }
                    }
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else { throw CancellationError() }
                return value
            }
        } catch let e as LostLeadership {
            logger.error("lost leadership: \(e.description)")
            throw e
        } catch {
            await releaseDetached()
            throw error
        }
        await releaseDetached()
        return result
    }

    /// One `tryAcquireOrRenew` that gives up after `limit` (a hanging API server is an attempt that
    /// failed), recording an answer for readiness.
    func attempt(within limit: Duration) async throws -> Bool {
        let elector = self
        let held = try await withDeadline(limit) { try await elector.tryAcquireOrRenew() }
        status.answered()
        return held
    }

    /// Releases from a task of its own: the caller's task may be cancelled (that is how a stop
    /// arrives), and a cancelled task's requests would fail before reaching the server.
    func releaseDetached() async {
        let elector = self
        await Task.detached { _ = try? await withDeadline(elector.renewDeadline) { await elector.release() } }.value
    }

    /// One attempt: create the lease, renew it, or take it over when expired. True when held.
    public func tryAcquireOrRenew(now: Date = Date()) async throws -> Bool {
        let stamp = KubernetesTime.microTime(now)
        let seconds = Int(leaseDuration.components.seconds)
        let current: Lease
        do {
            current = try await client.get(Lease.self, name: name, namespace: namespace)
        } catch let e as KubernetesAPIError where e.isNotFound {
            let lease = Lease(metadata: ObjectMeta(name: name, namespace: namespace),
                              spec: .init(holderIdentity: identity, leaseDurationSeconds: seconds, acquireTime: stamp, renewTime: stamp, leaseTransitions: 0))
            do { _ = try await client.create(lease); return true } catch let e as KubernetesAPIError where e.code == 409 { return false }
        }
        var spec = current.spec ?? .init()
        let holder = spec.holderIdentity ?? ""
        if holder != identity && !holder.isEmpty {
            let renewed = spec.renewTime.flatMap(KubernetesTime.parseMicroTime) ?? .distantPast
            let duration = TimeInterval(spec.leaseDurationSeconds ?? seconds)
            guard renewed.addingTimeInterval(duration) < now else { return false }
            logger.info("taking over an expired lease", metadata: ["lease": "\(namespace)/\(name)", "from": "\(holder)"])
        }
        if holder != identity {
            spec.acquireTime = stamp
            spec.leaseTransitions = (spec.leaseTransitions ?? 0) + 1
        }
        spec.holderIdentity = identity
        spec.leaseDurationSeconds = seconds
        spec.renewTime = stamp
        var next = current
        next.spec = spec
        do {
            _ = try await client.replace(next)  // stale resourceVersion: someone else won this round
            return true
        } catch let e as KubernetesAPIError where e.isConflict {
            return false
        }
    }

    /// Gives the lease up so another candidate can take it at once.
    public func release() async {
        do {
            try await client.update(Lease.self, name: name, namespace: namespace) { lease in
                guard lease.spec?.holderIdentity == identity else { return }
                lease.spec?.holderIdentity = ""
                lease.spec?.leaseDurationSeconds = 1
            }
            logger.info("released the lease", metadata: ["lease": "\(namespace)/\(name)"])
        } catch {
            logger.warning("could not release the lease: \(error)")
        }
    }
}

/// What a `LeaderElector` last heard: whether it leads, and when the API server last answered one of
/// its attempts. A replica that is not the leader but hears from the API server is able to lead,
/// which is what readiness means for a controller (as controller-runtime has it: a standby replica is
/// ready, so that a rolling update of the Deployment can complete).
public final class LeaderElectionStatus: Sendable {
    struct State {
        var leading = false
        var lastAnswer: ContinuousClock.Instant?
    }
    let state = Mutex(State())

    public init() {}

    public var isLeading: Bool { state.withLock { $0.leading } }

    /// Whether an attempt was answered within `window`.
    public func answered(within window: Duration) -> Bool {
        state.withLock { s in s.lastAnswer.map { ContinuousClock.now - $0 <= window } ?? false }
    }

    func setLeading(_ on: Bool) { state.withLock { $0.leading = on } }
    func answered() { state.withLock { $0.lastAnswer = .now } }
}

/// Runs `operation`, or throws `DeadlineExceeded` once `limit` has passed, without waiting for the
/// operation to notice its cancellation (a request to a server that never answers may not).
public func withDeadline<T: Sendable>(_ limit: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let once = Mutex<CheckedContinuation<T, any Error>?>(nil)
    let work = Mutex<Task<Void, Never>?>(nil)
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            once.withLock { $0 = c }
            let finish: @Sendable (Result<T, any Error>) -> Void = { r in
                once.withLock { c in
                    c?.resume(with: r)
                    c = nil
                }
            }
            let task = Task {
                do { finish(.success(try await operation())) } catch { finish(.failure(error)) }
            }
            work.withLock { $0 = task }
            Task {
                try? await Task.sleep(for: limit)
                finish(.failure(DeadlineExceeded(limit: limit)))
                task.cancel()
            }
        }
    } onCancel: {
        work.withLock { $0?.cancel() }
        once.withLock { c in
            c?.resume(throwing: CancellationError())
            c = nil
        }
    }
}

/// An operation did not finish within its limit.
public struct DeadlineExceeded: Error, CustomStringConvertible {
    public var limit: Duration
    public var description: String { "no answer within \(limit)" }
}
