import Logging
import Metrics

/// One idempotent step of a plan: it first measures whether its effect is already in place,
/// and only acts when it is not. Re-running a plan after a crash at any point therefore converges.
public struct PlanStep: Sendable {
    public var name: String
    /// Returns true when the step still has work to do.
    public var needed: @Sendable () async throws -> Bool
    public var perform: @Sendable () async throws -> Void

    public init(_ name: String, needed: @escaping @Sendable () async throws -> Bool, perform: @escaping @Sendable () async throws -> Void) {
        self.name = name
        self.needed = needed
        self.perform = perform
    }
}

/// The outcome of running a plan.
public struct PlanReport: Sendable {
    /// Steps that acted (the others were already done).
    public var performed: [String] = []
    public var skipped: [String] = []
}

/// An error from a step, naming it.
public struct PlanStepError: Error, Sendable, CustomStringConvertible {
    public var step: String
    public var underlying: any Error
    public var description: String { "step \(step): \(underlying)" }
}

/// Runs steps in order; stops at the first failure. Times each step that acts
/// (`flintlockd_plan_step_duration_seconds{plan,step}`).
public struct PlanRunner: Sendable {
    public var logger: Logger
    public init(logger: Logger) { self.logger = logger }

    public func run(_ plan: String, steps: [PlanStep]) async throws -> PlanReport {
        var report = PlanReport()
        for step in steps {
            var log = logger
            log[metadataKey: "step"] = "\(step.name)"
            do {
                if try await step.needed() {
                    log.debug("step starting", metadata: ["plan": "\(plan)"])
                    let started = ContinuousClock.now
                    try await step.perform()
                    let took = (ContinuousClock.now - started).components
                    Metrics.Timer(label: "flintlockd_plan_step_duration_seconds", dimensions: [("plan", plan), ("step", step.name)], preferredDisplayUnit: .seconds)
                        .recordNanoseconds(took.seconds * 1_000_000_000 + took.attoseconds / 1_000_000_000)
                    report.performed.append(step.name)
                    log.debug("step done", metadata: ["plan": "\(plan)"])
                } else {
                    report.skipped.append(step.name)
                }
            } catch let e as PlanStepError {
                throw e
            } catch {
                log.warning("step failed: \(error)", metadata: ["plan": "\(plan)"])
                throw PlanStepError(step: step.name, underlying: error)
            }
        }
        return report
    }
}

/// Capped exponential backoff: base * 2^attempt, at most `cap`.
public struct Backoff: Sendable, Equatable {
    public var base: Duration
    public var cap: Duration
    public init(base: Duration = .seconds(1), cap: Duration = .seconds(60)) {
        self.base = base
        self.cap = cap
    }
    public func delay(afterAttempt attempt: Int) -> Duration {
        let factor = 1 << min(max(attempt, 0), 20)
        let d = base * factor
        return d < cap ? d : cap
    }
}
