import FlintlockAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HostSystem
import Logging
import MicroVMCore
import SwiftProtobuf
import X509

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
        case .permissionDenied: code = .permissionDenied
        case .resourceExhausted: code = .resourceExhausted
        case .internalError: code = .internalError
        }
        return RPCError(code: code, message: e.message)
    }
    return RPCError(code: .internalError, message: "\(error)")
}

func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch { throw rpcError(error) }
}

/// Flintlock's `microvm.services.api.v1alpha1.MicroVM` service. Every call is checked against
/// the caller's namespaces: a VM in a namespace the caller may not read is NOT_FOUND to it.
struct MicroVMGRPCService: Microvm_Services_Api_V1alpha1_MicroVM.SimpleServiceProtocol {
    let service: MicroVMService

    func createMicroVM(request: Microvm_Services_Api_V1alpha1_CreateMicroVMRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_CreateMicroVMResponse {
        try await mapErrors {
            guard request.hasMicrovm else { throw AgentError.invalid("microvm", "is required") }
            let spec = try APIConversion.spec(from: request.microvm)
            try AccessContext.principal(context).check(.write, namespace: spec.namespace)
            let vm = try await service.create(spec)
            return .with { $0.microvm = APIConversion.proto(vm) }
        }
    }

    func deleteMicroVM(request: Microvm_Services_Api_V1alpha1_DeleteMicroVMRequest, context: ServerContext) async throws -> Google_Protobuf_Empty {
        try await mapErrors {
            let vm = try service.get(uid: request.uid, as: AccessContext.principal(context))
            try AccessContext.principal(context).check(.write, namespace: vm.spec.namespace)
            try service.delete(uid: request.uid)
            return Google_Protobuf_Empty()
        }
    }

    func getMicroVM(request: Microvm_Services_Api_V1alpha1_GetMicroVMRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_GetMicroVMResponse {
        try await mapErrors {
            let vm = try service.get(uid: request.uid, as: AccessContext.principal(context))
            return .with { $0.microvm = APIConversion.proto(vm) }
        }
    }

    func listMicroVMs(request: Microvm_Services_Api_V1alpha1_ListMicroVMsRequest, context: ServerContext) async throws -> Microvm_Services_Api_V1alpha1_ListMicroVMsResponse {
        try await mapErrors {
            let vms = try service.list(namespace: request.namespace, name: request.hasName ? request.name : nil, as: AccessContext.principal(context))
            return .with { $0.microvm = vms.map(APIConversion.proto) }
        }
    }

    func listMicroVMsStream(request: Microvm_Services_Api_V1alpha1_ListMicroVMsRequest, response: RPCWriter<Microvm_Services_Api_V1alpha1_ListMessage>, context: ServerContext) async throws {
        let vms = try await mapErrors {
            try service.list(namespace: request.namespace, name: request.hasName ? request.name : nil, as: AccessContext.principal(context))
        }
        for vm in vms { try await response.write(.with { $0.microvm = APIConversion.proto(vm) }) }
    }
}

/// Our additions: watch and console output.
struct EventsGRPCService: Liquidmetal_Agent_V1_MicroVMEvents.SimpleServiceProtocol {
    let service: MicroVMService
    let store: StateStore
    let consolePath: @Sendable (MicroVM) -> String

    func watch(request: Liquidmetal_Agent_V1_WatchRequest, response: RPCWriter<Liquidmetal_Agent_V1_WatchEvent>, context: ServerContext) async throws {
        let principal = try await mapErrors { try AccessContext.principal(context) }
        let changes = store.changes()  // subscribe first, so nothing between list and stream is lost
        let current = try await mapErrors { try service.list(namespace: request.namespace, name: nil, as: principal) }
        for vm in current {
            try await response.write(.with { $0.type = .existing; $0.microvm = APIConversion.proto(vm) })
        }
        try await response.write(.with { $0.type = .synced })
        for await change in changes {
            let vm = change.vm
            if !request.namespace.isEmpty && vm.spec.namespace != request.namespace { continue }
            if !principal.may(.read, namespace: vm.spec.namespace) { continue }
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
        let vm = try await mapErrors { try service.get(uid: request.uid, as: AccessContext.principal(context)) }
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

/// What the access interceptor found out about a call, passed to the services in
/// `ServerContext.transportSpecific` (the transport's own value is kept in `transport`).
struct AccessContext: ServerContext.TransportSpecific {
    var principal: Principal
    var transport: (any ServerContext.TransportSpecific)?

    /// The caller, as the interceptor identified it. Fails closed: a call that did not pass the
    /// interceptor is refused.
    static func principal(_ context: ServerContext) throws(AgentError) -> Principal {
        guard let a = context.transportSpecific as? AccessContext else {
            throw AgentError(.permissionDenied, "the call was not authenticated")
        }
        return a.principal
    }
}

/// Identifies every caller against the access policy (token or client certificate) and hands
/// the services its principal. With an open policy every caller is `Principal.unrestricted`.
struct AccessInterceptor: ServerInterceptor {
    let policy: AccessPolicy

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let header = request.metadata[stringValues: "authorization"].first(where: { _ in true })
        var identities: [String] = []
        if let tls = context.transportSpecific as? HTTP2ServerTransport.Posix.Context, let cert = tls.peerCertificate {
            identities = Self.identities(of: cert)
        }
        let principal: Principal
        do { principal = try policy.principal(authorization: header, certificateIdentities: identities) } catch { throw rpcError(error) }
        var inner = context
        inner.transportSpecific = AccessContext(principal: principal, transport: context.transportSpecific)
        return try await next(request, inner)
    }

    /// A verified client certificate's names: subject alternative names (DNS, URI, e-mail, IP), then the subject's CN.
    static func identities(of cert: Certificate) -> [String] {
        var names: [String] = []
        if let sans = try? cert.extensions.subjectAlternativeNames {
            for n in sans {
                switch n {
                case .dnsName(let s), .uniformResourceIdentifier(let s), .rfc822Name(let s): names.append(s)
                case .ipAddress(let octets):
                    let b = Array(octets.bytes)
                    if b.count == 4 { names.append(b.map(String.init).joined(separator: ".")) }
                default: break
                }
            }
        }
        for rdn in cert.subject { for attr in rdn where attr.type == .RDNAttributeType.commonName { names.append("\(attr.value)") } }
        return names
    }
}
