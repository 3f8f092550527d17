import Logging
import MicroVMCore
import Testing

/// A fake host: a set of resources that exist, a log of what the steps did, and faults to inject.
private actor World {
    private(set) var resources: Set<String> = []
    /// Every `perform` and `needed` call, in order, as "perform x" / "check x".
    private(set) var calls: [String] = []
    /// Resources whose next creation fails (once each).
    private var failNextCreate: Set<String> = []
    /// Resources whose next check fails (once each).
    private var failNextCheck: Set<String> = []

    init(existing: Set<String> = []) { resources = existing }

    func failCreate(_ r: String) { failNextCreate.insert(r) }
    func failCheck(_ r: String) { failNextCheck.insert(r) }

    func exists(_ r: String) throws -> Bool {
        calls.append("check \(r)")
        if failNextCheck.remove(r) != nil { throw Fault(resource: r) }
        return resources.contains(r)
    }

    func create(_ r: String) throws {
        calls.append("perform \(r)")
        if failNextCreate.remove(r) != nil { throw Fault(resource: r) }
        resources.insert(r)
    }

    func performed() -> [String] { calls.filter { $0.hasPrefix("perform ") }.map { String($0.dropFirst(8)) } }
    func clearCalls() { calls = [] }
}

private struct Fault: Error, Equatable {
    var resource: String
}

/// One idempotent step per resource: needed when the resource is missing, performing creates it.
private func steps(_ names: [String], in world: World) -> [PlanStep] {
    names.map { name in
        PlanStep(name, needed: { try await !world.exists(name) }, perform: { try await world.create(name) })
    }
}

private let runner = PlanRunner(logger: Logger(label: "plan-tests", factory: { _ in SwiftLogNoOpLogHandler() }))
private let allSteps = ["lease", "kernel", "rootfs", "tap", "vmm"]

@Suite("PlanRunner")
struct PlanRunnerTests {
    @Test("on an empty world every step runs, in order")
    func runsAllInOrder() async throws {
        let world = World()
        let report = try await runner.run("create", steps: steps(allSteps, in: world))
        #expect(report.performed == allSteps)
        #expect(report.skipped.isEmpty)
        #expect(await world.resources == Set(allSteps))
        // Each step is measured right before it acts.
        #expect(await world.calls == allSteps.flatMap { ["check \($0)", "perform \($0)"] })
    }

    @Test("steps whose effect is already in place are skipped, never performed")
    func skipsDoneSteps() async throws {
        let world = World(existing: ["kernel", "tap"])
        let report = try await runner.run("create", steps: steps(allSteps, in: world))
        #expect(report.performed == ["lease", "rootfs", "vmm"])
        #expect(report.skipped == ["kernel", "tap"])
        #expect(await world.performed() == ["lease", "rootfs", "vmm"])
        #expect(await world.resources == Set(allSteps))
    }

    @Test("an empty plan does nothing")
    func emptyPlan() async throws {
        let report = try await runner.run("nothing", steps: [])
        #expect(report.performed.isEmpty)
        #expect(report.skipped.isEmpty)
    }

    @Test("a failing step stops the plan and the error names it")
    func stopsAtFirstFailure() async throws {
        let world = World()
        await world.failCreate("rootfs")
        let error = await #expect(throws: PlanStepError.self) {
            try await runner.run("create", steps: steps(allSteps, in: world))
        }
        #expect(error?.step == "rootfs")
        #expect(error?.underlying as? Fault == Fault(resource: "rootfs"))
        #expect(error?.description.hasPrefix("step rootfs: ") == true)
        // Steps after the failing one were neither checked nor performed.
        #expect(await world.calls == ["check lease", "perform lease", "check kernel", "perform kernel", "check rootfs", "perform rootfs"])
        #expect(await world.resources == ["lease", "kernel"])
    }

    @Test("a failing check stops the plan too, before the step acts")
    func failingCheck() async throws {
        let world = World()
        await world.failCheck("tap")
        let error = await #expect(throws: PlanStepError.self) {
            try await runner.run("create", steps: steps(allSteps, in: world))
        }
        #expect(error?.step == "tap")
        #expect(await world.performed() == ["lease", "kernel", "rootfs"])
        #expect(await !world.calls.contains("perform tap"))
    }

    @Test("re-running after a failure at any step converges, redoing nothing", arguments: allSteps)
    func rerunConverges(failing: String) async throws {
        let world = World()
        await world.failCreate(failing)
        await #expect(throws: PlanStepError.self) { try await runner.run("create", steps: steps(allSteps, in: world)) }
        let doneBefore = await world.resources

        let second = try await runner.run("create", steps: steps(allSteps, in: world))
        let failedAt = allSteps.firstIndex(of: failing)!
        #expect(second.skipped == Array(allSteps[..<failedAt]))
        #expect(second.performed == Array(allSteps[failedAt...]))
        #expect(Set(second.performed).isDisjoint(with: doneBefore))
        #expect(await world.resources == Set(allSteps))

        // A third run finds everything in place.
        await world.clearCalls()
        let third = try await runner.run("create", steps: steps(allSteps, in: world))
        #expect(third.performed.isEmpty)
        #expect(third.skipped == allSteps)
        #expect(await world.performed().isEmpty)
    }

    @Test("a PlanStepError from a nested plan is passed on unchanged, naming the inner step")
    func nestedPlanError() async throws {
        let world = World()
        await world.failCreate("inner-b")
        let outer = PlanStep("outer", needed: { true }, perform: {
            _ = try await runner.run("inner", steps: steps(["inner-a", "inner-b"], in: world))
        })
        let error = await #expect(throws: PlanStepError.self) { try await runner.run("outer", steps: [outer]) }
        #expect(error?.step == "inner-b")
        #expect(error?.underlying is Fault)
    }
}

@Suite("Backoff")
struct BackoffTests {
    @Test("doubles from the base and stops at the cap", arguments: [
        (0, Duration.seconds(1)), (1, .seconds(2)), (2, .seconds(4)), (3, .seconds(8)), (4, .seconds(16)),
        (5, .seconds(32)), (6, .seconds(60)), (7, .seconds(60)), (1000, .seconds(60)), (Int.max, .seconds(60)),
    ])
    func defaults(attempt: Int, expected: Duration) {
        #expect(Backoff().delay(afterAttempt: attempt) == expected)
    }

    @Test("a negative attempt counts as the first")
    func negative() {
        #expect(Backoff().delay(afterAttempt: -3) == .seconds(1))
    }

    @Test("custom base and cap")
    func custom() {
        let b = Backoff(base: .milliseconds(100), cap: .seconds(1))
        #expect((0...5).map(b.delay(afterAttempt:)) == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
    }

    @Test("never decreases and never exceeds the cap")
    func monotonic() {
        let b = Backoff(base: .milliseconds(250), cap: .seconds(30))
        let delays = (0...200).map(b.delay(afterAttempt:))
        #expect(zip(delays, delays.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(delays.allSatisfy { $0 <= .seconds(30) })
        #expect(delays.last == .seconds(30))
    }

    @Test("the exponent is bounded, so a huge attempt count does not overflow")
    func boundedExponent() {
        let b = Backoff(base: .seconds(1), cap: .seconds(1 << 40))
        #expect(b.delay(afterAttempt: 20) == .seconds(1 << 20))
        #expect(b.delay(afterAttempt: 10_000) == .seconds(1 << 20))
    }
}
