import Foundation
import GRPCCore
import Metrics
import MicroVMCore

/// The agent's Prometheus metrics (served on `--metrics-endpoint` at /metrics; see
/// docs/agent-operations.md). Plan steps (`flintlockd_plan_step_duration_seconds`) are timed by
/// `PlanRunner`, image pulls (`flintlockd_image_pulls_total`, `flintlockd_image_pull_bytes_total`)
/// by the image service. Without a metrics backend every call here is a no-op.
enum AgentMetrics {
    /// One finished RPC, by its full method name and status code.
    static func rpc(method: String, code: RPCError.Code?, duration: Duration) {
        Counter(label: "flintlockd_grpc_requests_total", dimensions: [("method", method), ("code", statusName(code))]).increment()
        Metrics.Timer(label: "flintlockd_grpc_request_duration_seconds", dimensions: [("method", method)], preferredDisplayUnit: .seconds)
            .recordNanoseconds(duration.nanoseconds)
    }

    /// One reconcile of one VM: the plan run (create or delete) and its outcome.
    static func reconcile(plan: String, succeeded: Bool, duration: Duration) {
        Metrics.Timer(label: "flintlockd_reconcile_duration_seconds", dimensions: [("plan", plan), ("result", succeeded ? "ok" : "error")], preferredDisplayUnit: .seconds)
            .recordNanoseconds(duration.nanoseconds)
    }

    /// From the accepted create to the guest running, for a VM's first start.
    static func createToRunning(_ duration: Duration) {
        Metrics.Timer(label: "flintlockd_create_to_running_seconds", preferredDisplayUnit: .seconds).recordNanoseconds(duration.nanoseconds)
    }

    /// A VMM that ended without being asked to, by kind of reason.
    static func vmmRestart(reason: String) {
        Counter(label: "flintlockd_vmm_exits_total", dimensions: [("reason", exitKind(reason))]).increment()
    }

    /// A VM that ended FAILED: `reason` is "retries" (its create kept failing, `step` says where)
    /// or "restarts" (its VMM kept exiting).
    static func failed(reason: String, step: String) {
        Counter(label: "flintlockd_microvm_failures_total", dimensions: [("reason", reason), ("step", step)]).increment()
    }

    /// Sets `flintlockd_microvms{state,provider}` from the store, zero for every state not present.
    static func refreshInventory(_ vms: [MicroVM], providers: [String]) {
        var counts: [String: [String: Int]] = [:]
        for vm in vms { counts[vm.spec.provider ?? "qemu", default: [:]][vm.status.state.rawValue, default: 0] += 1 }
        for provider in Set(providers).union(counts.keys) {
            for state in MicroVMState.allCases {
                Gauge(label: "flintlockd_microvms", dimensions: [("state", state.rawValue), ("provider", provider)])
                    .record(counts[provider]?[state.rawValue] ?? 0)
            }
        }
    }

    /// gRPC's canonical name of a status: OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED...
    static func statusName(_ code: RPCError.Code?) -> String {
        guard let code else { return "OK" }
        var name = ""
        for ch in "\(code)" {
            if ch.isUppercase { name += "_" }
            name += ch.uppercased()
        }
        return name
    }

    /// A bounded label for a VMM exit reason: guest-panic, signal, exit or gone.
    static func exitKind(_ reason: String) -> String {
        if reason.hasPrefix("guest kernel panic") { return "guest-panic" }
        if reason.contains("signal") { return "signal" }
        if reason.contains("exited") || reason.contains("status") { return "exit" }
        return "gone"
    }
}

extension Duration {
    /// The whole nanoseconds of the duration, for metrics.
    var nanoseconds: Int64 {
        let c = components
        return c.seconds * 1_000_000_000 + c.attoseconds / 1_000_000_000
    }
}

/// Counts every RPC by method and status code, streaming ones when their stream ends.
struct MetricsInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = context.descriptor.fullyQualifiedMethod
        let start = ContinuousClock.now
        let response: StreamingServerResponse<Output>
        do { response = try await next(request, context) } catch {
            AgentMetrics.rpc(method: method, code: (error as? RPCError)?.code ?? .unknown, duration: ContinuousClock.now - start)
            throw error
        }
        switch response.accepted {
        case .failure(let e):
            AgentMetrics.rpc(method: method, code: e.code, duration: ContinuousClock.now - start)
            return response
        case .success(var contents):
            let produce = contents.producer
            contents.producer = { writer in
                do {
                    let trailers = try await produce(writer)
                    AgentMetrics.rpc(method: method, code: nil, duration: ContinuousClock.now - start)
                    return trailers
                } catch {
                    AgentMetrics.rpc(method: method, code: (error as? RPCError)?.code ?? .unknown, duration: ContinuousClock.now - start)
                    throw error
                }
            }
            return StreamingServerResponse(accepted: .success(contents))
        }
    }
}
