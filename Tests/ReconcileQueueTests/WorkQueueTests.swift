import ReconcileQueue
import Testing

@Suite("the work queue")
struct WorkQueueTests {
    @Test("a key once in the queue, never twice at once, run again when added while running")
    func onceAtATime() async {
        let q = WorkQueue()
        await q.add("a")
        await q.add("a")
        await q.add("b")
        #expect(await q.depth == 2)
        let first = await q.next()
        #expect(first == "a")
        await q.add("a")  // while a runs
        #expect(await q.next() == "b")
        #expect(await q.depth == 0, "a waits until its run is done")
        await q.done("a")
        #expect(await q.next() == "a")
        await q.done("a")
        await q.done("b")
        await q.close()
        #expect(await q.next() == nil)
    }

    @Test("requeues of one key are deduplicated: one pending delayed add per key, the earliest; an add now supersedes it")
    func delayedAddsDeduplicated() async throws {
        let q = WorkQueue()
        for _ in 0..<50 { await q.add("m", after: .seconds(30)) }
        await q.add("m", after: .milliseconds(100))  // earlier: replaces the pending one
        await q.add("m", after: .seconds(60))  // later: ignored
        await q.add("n", after: .seconds(30))
        #expect(await q.delayedCount == 2, "one pending add per key")
        #expect(await q.depth == 0)
        // Wait on the condition itself (a loaded CI machine may fire the timer late), then check it fired once.
        let deadline = ContinuousClock.now + .seconds(20)
        while await q.depth == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(await q.depth == 1, "the earliest add fired, once")
        #expect(await q.next() == "m")
        await q.done("m")
        #expect(await q.depth == 0, "the later adds of m were dropped, not just postponed")
        #expect(await q.delayedCount == 1, "n still waits")
        await q.add("n")
        #expect(await q.delayedCount == 0, "an add now supersedes the delayed one")
        #expect(await q.depth == 1)
        #expect(await q.next() == "n")
        await q.done("n")
        // A key already queued is not delayed again.
        await q.add("o")
        await q.add("o", after: .milliseconds(50))
        #expect(await q.delayedCount == 0)
        await q.close()
    }
}
