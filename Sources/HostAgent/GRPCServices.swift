import FlintlockAPI
import Foundation
import GRPCCore
import HostSystem
import Logging
import MicroVMCore
import SwiftProtobuf

/// Maps agent errors onto gRPC status codes.
func rpcError(_ error: any Error) -> RPCError {
    if let e = error as? RPCError { return e }
    if let e = error as? AgentError {
        let code: RPCError.Code
        switch e.code {
        case .invalidArgument: code = .invalidArgument
        case .notFound: code = .notFound
        case .alreadyExists: code = .alreadyExists
        case .failedPrecondition: code = .failedPrecondition
        case .unavailable: code = .unavailable
        case .unauthenticated: code = .unauthenticated
        case .internalError: code = .internalError
        }
        return RPCError(code: code, message: e.message)
    }
    return RPCError(code: .internalError, message: "\(error)")
}

func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch { throw rpcError(error) }
}

/// Flintlock's `microvm.services.api.v1alpha1.MicroVM` service.
struct MicroVMGRPCService: Microvm_Services_Api_V1alpha1_MicroVM.SimpleServiceProtocol {
    let service: MicroVMService

    func createMicroVM(request: Microvm_Services_Api_V1alpha1_CreateMicroVMRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_CreateMicroVMResponse {
        try await mapErrors {
            guard request.hasMicrovm else { throw AgentError.invalid("microvm", "is required") }
            let vm = try await service.create(APIConversion.spec(from: request.microvm))
            return .with { $0.microvm = APIConversion.proto(vm) }
        }
    }

    func deleteMicroVM(request: Microvm_Services_Api_V1alpha1_DeleteMicroVMRequest, context: ServerContext) async throws -> Google_Protobuf_Empty {
        try await mapErrors {
            try service.delete(uid: request.uid)
            return Google_Protobuf_Empty()
        }
    }

    func getMicroVM(request: Microvm_Services_Api_V1alpha1_GetMicroVMRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_GetMicroVMResponse {
        try await mapErrors {
            let vm = try service.get(uid: request.uid)
            return .with { $0.microvm = APIConversion.proto(vm) }
        }
    }

    func listMicroVMs(request: Microvm_Services_Api_V1alpha1_ListMicroVMsRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_ListMicroVMsResponse {
        try await mapErrors {
            let vms = try service.list(namespace: request.namespace, name: request.hasName ? request.name : nil)
            return .with { $0.microvm = vms.map(APIConversion.proto) }
        }
    }

    func listMicroVMsStream(request: Microvm_Services_Api_V1alpha1_ListMicroVMsRequest, response: RPCWriter<Microvm_Services_Api_V1alpha1_ListMessage>, context: ServerContext) async throws {
        let vms = try await mapErrors { try service.list(namespace: request.namespace, name: request.hasName ? request.name : nil) }
        for vm in vms { try await response.write(.with { $0.microvm = APIConversion.proto(vm) }) }
    }
}

/// Our additions: watch and console output.
struct EventsGRPCService: Liquidmetal_Agent_V1_MicroVMEvents.SimpleServiceProtocol {
    let service: MicroVMService
    let store: StateStore
    let consolePath: @Sendable (MicroVM) -> String

    func watch(request: Liquidmetal_Agent_V1_WatchRequest, response: RPCWriter<Liquidmetal_Agent_V1_WatchEvent>, context: ServerContext) async throws {
        let changes = store.changes()  // subscribe first, so nothing between list and stream is lost
        let current = try await mapErrors { try service.list(namespace: request.namespace, name: nil) }
        for vm in current {
            try await response.write(.with { $0.type = .existing; $0.microvm = APIConversion.proto(vm) })
        }
        try await response.write(.with { $0.type = .synced })
        for await change in changes {
            let vm = change.vm
            if !request.namespace.isEmpty && vm.spec.namespace != request.namespace { continue }
            try await response.write(.with {
                switch change {
                case .added: $0.type = .added
                case .modified: $0.type = .modified
                case .deleted: $0.type = .deleted
                }
                $0.microvm = APIConversion.proto(vm)
            })
        }
    }

    func consoleLog(request: Liquidmetal_Agent_V1_ConsoleLogRequest, response: RPCWriter<Liquidmetal_Agent_V1_ConsoleLogChunk>, context: ServerContext) async throws {
        let vm = try await mapErrors { try service.get(uid: request.uid) }
        let path = consolePath(vm)
        guard request.tailBytes >= 0 else { throw RPCError(code: .invalidArgument, message: "tail_bytes: must not be negative") }
        // Start at the tail (or the beginning) and, with follow, keep reading as the file grows.
        var offset: UInt64 = 0
        if let size = HostFiles.size(path), request.tailBytes > 0, size > request.tailBytes {
            offset = UInt64(size - request.tailBytes)
        }
        while true {
            if let h = FileHandle(forReadingAtPath: path) {
                try? h.seek(toOffset: offset)
                let data = (try? h.read(upToCount: 1 << 20)) ?? nil
                try? h.close()
                if let data, !data.isEmpty {
                    offset += UInt64(data.count)
                    try await response.write(.with { $0.data = data })
                    continue
                }
            }
            guard request.follow else { return }
            // Stop following once the VM is gone.
            guard (try? store.get(uid: request.uid)) != nil else { return }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// Checks `authorization: Basic <base64(token)>` when the agent has a token (Flintlock's scheme).
struct BasicAuthInterceptor: ServerInterceptor {
    let token: String

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let expected = "Basic " + Data(token.utf8).base64EncodedString()
        guard let got = request.metadata[stringValues: "authorization"].first(where: { _ in true }) else {
            throw RPCError(code: .unauthenticated, message: "missing authorization metadata: send \"authorization: Basic <base64 of the agent's token>\"")
        }
        guard constantTimeEqual(got, expected) else {
            throw RPCError(code: .unauthenticated, message: "the authorization token is not valid")
        }
        return try await next(request, context)
    }

    func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in x.indices { diff |= x[i] ^ y[i] }
        return diff == 0
    }
}
