import Foundation

/// A queue of VM uids for the reconcile workers: a uid is never worked on by two workers at once;
/// one enqueued while it is being worked on runs again right after.
actor WorkQueue {
    private var queued: Set<String> = []
    private var active: Set<String> = []
    private var dirty: Set<String> = []
    private let continuation: AsyncStream<String>.Continuation
    nonisolated let stream: AsyncStream<String>

    init() {
        (stream, continuation) = AsyncStream<String>.makeStream()
    }

    func add(_ uid: String) {
        if active.contains(uid) {
            dirty.insert(uid)
        } else if queued.insert(uid).inserted {
            continuation.yield(uid)
        }
    }

    /// Marks `uid` as being worked on; false when it already is (it will run again after).
    func begin(_ uid: String) -> Bool {
        queued.remove(uid)
        guard active.insert(uid).inserted else {
            dirty.insert(uid)
            return false
        }
        return true
    }

    func finish(_ uid: String) {
        active.remove(uid)
        if dirty.remove(uid) != nil { add(uid) }
    }

    func close() { continuation.finish() }

    var isIdle: Bool { queued.isEmpty && active.isEmpty }
}
