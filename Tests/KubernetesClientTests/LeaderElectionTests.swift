import Foundation
import KubernetesClient
import KubernetesTestServer
import Logging
import Synchronization
import Testing

@Suite("leader election on a Lease")
struct LeaderElectionTests {
    func elector(_ c: KubernetesClient, _ id: String) -> LeaderElector {
        var e = LeaderElector(client: c, namespace: "capmvm-system", name: "capmvm-leader", identity: id, logger: Logger(label: id))
        e.leaseDuration = .seconds(2)
        e.renewDeadline = .milliseconds(1500)
        e.retryPeriod = .milliseconds(200)
        return e
    }

    @Test("one leader at a time; the second takes over when the first releases; an expired holder is replaced")
    func election() async throws {
        let server = try await TestAPIServer.start()
        let c = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "t"))
        let a = elector(c, "a"), b = elector(c, "b")
        let leading = Leaders()

        let taskA = Task { try await a.whileLeading { leading.add("a"); try await Task.sleep(for: .seconds(1)); return "a done" } }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await b.tryAcquireOrRenew() == false, "a holds a live lease")
        let taskB = Task { try await b.whileLeading { leading.add("b"); return "b done" } }
        #expect(try await taskA.value == "a done")
        #expect(try await taskB.value == "b done")
        #expect(leading.all == ["a", "b"])
        let lease = try await c.get(Lease.self, name: "capmvm-leader", namespace: "capmvm-system")
        #expect(lease.spec?.holderIdentity == "" && (lease.spec?.leaseTransitions ?? 0) >= 1, "released after b")

        // A holder that stopped renewing: taken over once its lease has expired.
        #expect(try await a.tryAcquireOrRenew())
        let ghostTime = Date().addingTimeInterval(-10)
        #expect(try await b.tryAcquireOrRenew(now: ghostTime.addingTimeInterval(1)) == false, "not yet expired from b's point of view")
        #expect(try await b.tryAcquireOrRenew(now: Date().addingTimeInterval(5)), "expired: b takes over")
        #expect(try await c.get(Lease.self, name: "capmvm-leader", namespace: "capmvm-system").spec?.holderIdentity == "b")
        try await c.shutdown()
        try await server.stop()
    }
}

final class Leaders: Sendable {
    let names = Mutex<[String]>([])
    func add(_ n: String) { names.withLock { $0.append(n) } }
    var all: [String] { names.withLock { $0 } }
}
