import Foundation

/// Where a kind lives in the API: `/api/v1` for the core group, `/apis/<group>/<version>` otherwise.
public struct ResourceType: Sendable, Equatable {
    public var group: String
    public var version: String
    public var kind: String
    public var plural: String
    public var namespaced: Bool

    public init(group: String, version: String, kind: String, plural: String, namespaced: Bool = true) {
        self.group = group
        self.version = version
        self.kind = kind
        self.plural = plural
        self.namespaced = namespaced
    }

    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }

    /// The collection path (`namespace` nil: across namespaces), optionally one object and a subresource.
    public func path(namespace: String?, name: String? = nil, subresource: String? = nil) -> String {
        var p = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { p += "/namespaces/\(namespace)" }
        p += "/\(plural)"
        if let name { p += "/\(name)" }
        if let subresource { p += "/\(subresource)" }
        return p
    }
}

/// `metadata` of every object (the fields controllers use).
public struct ObjectMeta: Codable, Sendable, Equatable {
    public var name: String?
    public var generateName: String?
    public var namespace: String?
    public var uid: String?
    public var resourceVersion: String?
    public var generation: Int64?
    public var creationTimestamp: String?
    public var deletionTimestamp: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var finalizers: [String]?
    public var ownerReferences: [OwnerReference]?

    public init(name: String? = nil, namespace: String? = nil, labels: [String: String]? = nil, annotations: [String: String]? = nil,
                finalizers: [String]? = nil, ownerReferences: [OwnerReference]? = nil) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.finalizers = finalizers
        self.ownerReferences = ownerReferences
    }
}

public struct OwnerReference: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var kind: String
    public var name: String
    public var uid: String
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?
    public init(apiVersion: String, kind: String, name: String, uid: String, controller: Bool? = nil, blockOwnerDeletion: Bool? = nil) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.uid = uid
        self.controller = controller
        self.blockOwnerDeletion = blockOwnerDeletion
    }
}

/// A typed object: its kind's `resource`, `apiVersion`/`kind` and `metadata`.
public protocol KubernetesObject: Codable, Sendable {
    static var resource: ResourceType { get }
    /// Optional: items of a list may come without them; `create` fills them in.
    var apiVersion: String? { get set }
    var kind: String? { get set }
    var metadata: ObjectMeta { get set }
}

public struct ListMeta: Codable, Sendable, Equatable {
    public var resourceVersion: String?
    public var `continue`: String?
}

/// A list response: items and the collection's resourceVersion (to watch from).
public struct ObjectList<T: KubernetesObject>: Decodable, Sendable {
    public var metadata: ListMeta
    public var items: [T]
}

/// The API's `Status` object (errors, and ERROR watch events).
public struct APIStatus: Codable, Sendable, Equatable {
    public var status: String?
    public var message: String?
    public var reason: String?
    public var code: Int?
}

/// One watch event. BOOKMARK carries only a resourceVersion.
public enum WatchEvent<T: KubernetesObject>: Sendable {
    case added(T)
    case modified(T)
    case deleted(T)
    case bookmark(resourceVersion: String)
}

/// An error answer of the API server: HTTP status, the Status reason and message.
public struct KubernetesAPIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    public var reason: String
    public var message: String
    public init(code: Int, reason: String, message: String) {
        self.code = code
        self.reason = reason
        self.message = message
    }
    public var isNotFound: Bool { code == 404 }
    public var isConflict: Bool { code == 409 }
    /// The resourceVersion is too old (watch or list): relist.
    public var isGone: Bool { code == 410 }
    public var description: String { "\(code) \(reason): \(message)" }
}
