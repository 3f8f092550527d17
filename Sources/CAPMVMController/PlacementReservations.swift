import Foundation
import Placement
import Synchronization

/// Capacity promised to machines placed on a host but not yet in that host's probed figures: from
/// the scheduler's choice until a capacity probe that started after the machine's VM was created
/// (that probe counts the VM itself). The scheduler sees hosts with these added to what they already
/// run, and choosing plus reserving is one step, so machines reconciled at the same time cannot
/// overcommit a host between two probes.
public final class PlacementReservations: Sendable {
    struct Reservation {
        var host: String
        var resources: Resources
        var placedAt: ContinuousClock.Instant
        /// When the machine's VM was known to exist on the host (nil: not yet).
        var createdAt: ContinuousClock.Instant?
    }
    /// machine uid -> its reservation
    let byMachine = Mutex<[String: Reservation]>([:])
    /// A reservation older than this is dropped even without a probe (a host never probed again).
    let maximumAge: Duration
    let now: @Sendable () -> ContinuousClock.Instant

    public init(maximumAge: Duration = .seconds(600), now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.maximumAge = maximumAge
        self.now = now
    }

    /// Places `request` (machine `uid`) over `hosts` with the reservations of other machines added
    /// to their allocations, and reserves the chosen host's share for it, in one step.
    public func place(_ request: PlacementRequest, machine uid: String, on hosts: [HostCandidate]) -> PlacementDecision {
        let now = self.now()
        return byMachine.withLock { all in
            all = all.filter { now - $0.value.placedAt < maximumAge }
            all.removeValue(forKey: uid)
            let adjusted = hosts.map { h -> HostCandidate in
                var h = h
                for r in all.values where r.host == h.name {
                    h.allocated.vcpu += r.resources.vcpu
                    h.allocated.memoryMB += r.resources.memoryMB
                    h.allocated.microVMs += r.resources.microVMs
                }
                return h
            }
            let decision = Scheduler.place(request, on: adjusted)
            if case .host(let h) = decision {
                all[uid] = Reservation(host: h.name, resources: Resources(vcpu: request.vcpu, memoryMB: request.memoryMB, microVMs: 1), placedAt: now)
            }
            return decision
        }
    }

    /// The machine's VM exists on its host: the next probe that starts from now on counts it.
    public func created(machine uid: String) {
        let now = self.now()
        byMachine.withLock { all in
            if all[uid]?.createdAt == nil { all[uid]?.createdAt = now }
        }
    }

    /// A probe of `host` that started at `startedAt` succeeded: reservations it counts are dropped.
    public func probed(host: String, startedAt: ContinuousClock.Instant) {
        byMachine.withLock { all in
            all = all.filter { !($0.value.host == host && ($0.value.createdAt.map { $0 < startedAt } ?? false)) }
        }
    }

    /// The machine no longer needs its reservation (its create failed, it is being deleted).
    public func release(machine uid: String) {
        _ = byMachine.withLock { $0.removeValue(forKey: uid) }
    }

    /// What is reserved on `host` now.
    public func reserved(on host: String) -> Resources {
        byMachine.withLock { all in
            all.values.filter { $0.host == host }.reduce(Resources()) {
                Resources(vcpu: $0.vcpu + $1.resources.vcpu, memoryMB: $0.memoryMB + $1.resources.memoryMB, microVMs: $0.microVMs + $1.resources.microVMs)
            }
        }
    }
}
