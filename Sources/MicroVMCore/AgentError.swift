/// An error the agent returns to its clients: a code that maps onto a gRPC status and a
/// message a user can act on.
public struct AgentError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidArgument = "INVALID_ARGUMENT"
        case notFound = "NOT_FOUND"
        case alreadyExists = "ALREADY_EXISTS"
        case failedPrecondition = "FAILED_PRECONDITION"
        case unavailable = "UNAVAILABLE"
        case unauthenticated = "UNAUTHENTICATED"
        case permissionDenied = "PERMISSION_DENIED"
        case resourceExhausted = "RESOURCE_EXHAUSTED"
        case internalError = "INTERNAL"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func invalid(_ field: String, _ problem: String) -> AgentError {
        AgentError(.invalidArgument, "\(field): \(problem)")
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
