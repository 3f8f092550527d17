/// Keys waiting to be reconciled, shared by the host agent (VM uids) and capmvm ("namespace/name"),
/// with the semantics of client-go's work queue:
/// - a key is at most once in the queue, and never handed to two workers at once; a key added while
///   it is being worked on is handed out again once `done` is called for it;
/// - `add(_:after:)` keeps one pending delayed add per key, the earliest: requeues of the same key
///   do not pile up (a key already queued or running is not delayed again later).
public actor WorkQueue {
    var queue: [String] = []
    var queued: Set<String> = []
    var running: Set<String> = []
    var dirty: Set<String> = []
    /// key -> when its delayed add is due, and the timer that will do it.
    var delayed: [String: (due: ContinuousClock.Instant, timer: Task<Void, Never>)] = [:]
    var waiters: [CheckedContinuation<String?, Never>] = []
    var closed = false

    public init() {}

    /// Queues `key` now (or marks it to run again after its current run).
    public func add(_ key: String) {
        guard !closed else { return }
        if let d = delayed.removeValue(forKey: key) { d.timer.cancel() }
        if running.contains(key) { dirty.insert(key); return }
        guard queued.insert(key).inserted else { return }
        if !waiters.isEmpty { queued.remove(key); running.insert(key); waiters.removeFirst().resume(returning: key); return }
        queue.append(key)
    }

    /// Queues `key` after `delay`, unless an earlier add for it is already pending.
    public func add(_ key: String, after delay: Duration) {
        guard !closed else { return }
        guard delay > .zero else { add(key); return }
        let due = ContinuousClock.now + delay
        if queued.contains(key) { return }
        if let d = delayed[key] {
            if d.due <= due { return }
            d.timer.cancel()
        }
        let timer = Task { [weak self] in
            try? await Task.sleep(until: due, clock: .continuous)
            guard !Task.isCancelled else { return }
            await self?.fire(key, due: due)
        }
        delayed[key] = (due, timer)
    }

    func fire(_ key: String, due: ContinuousClock.Instant) {
        guard delayed[key]?.due == due else { return }
        delayed.removeValue(forKey: key)
        add(key)
    }

    /// The next key to work on, waiting for one (nil once closed); call `done` after.
    public func next() async -> String? {
        if !queue.isEmpty {
            let k = queue.removeFirst()
            queued.remove(k)
            running.insert(k)
            return k
        }
        if closed { return nil }
        return await withCheckedContinuation { waiters.append($0) }
    }

    /// The work on `key` is over; a key added meanwhile is queued again.
    public func done(_ key: String) {
        running.remove(key)
        if dirty.remove(key) != nil { add(key) }
    }

    /// Hands out no more keys: waiting and later `next` calls return nil; pending delayed adds are dropped.
    public func close() {
        closed = true
        for w in waiters { w.resume(returning: nil) }
        waiters.removeAll()
        for d in delayed.values { d.timer.cancel() }
        delayed.removeAll()
    }

    /// Keys queued (not running, not delayed).
    public var depth: Int { queue.count }

    /// Keys waiting for a delayed add.
    public var delayedCount: Int { delayed.count }

    /// Nothing queued and nothing running (delayed adds aside).
    public var isIdle: Bool { queue.isEmpty && running.isEmpty }
}
