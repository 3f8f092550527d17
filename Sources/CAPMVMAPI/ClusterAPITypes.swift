import Foundation
import KubernetesClient

/// The Cluster API and core objects capmvm reads, with only the fields it uses, in either of Cluster
/// API's versions: v1beta1 (Cluster API up to 1.10) and v1beta2 (1.11 and later), where the fields
/// capmvm reads differ only in `infrastructureRef` (`apiGroup` instead of `apiVersion`) and the
/// Cluster's provisioned flag. Never written back whole (fields not modelled here would be lost);
/// capmvm only reads them.
public enum ClusterAPIGroup {
    public static let group = "cluster.x-k8s.io"
    public static let version = "v1beta1"
    /// Label with the owning cluster's name on Machines and infrastructure objects.
    public static let clusterNameLabel = "cluster.x-k8s.io/cluster-name"
    /// Label present on control-plane Machines.
    public static let controlPlaneLabel = "cluster.x-k8s.io/control-plane"
    /// Annotation that pauses reconciliation of an object (or, on a Cluster, of all its objects).
    public static let pausedAnnotation = "cluster.x-k8s.io/paused"
}

public struct ObjectReference: Codable, Sendable, Equatable {
    public var apiVersion: String?
    /// v1beta2's form of a reference names the group only.
    public var apiGroup: String?
    public var kind: String?
    public var name: String?
    public var namespace: String?
    public var uid: String?
    public init(apiVersion: String? = nil, kind: String? = nil, name: String? = nil, namespace: String? = nil, uid: String? = nil) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.uid = uid
    }

    /// A reference to a MicrovmMachine, as a Machine's `infrastructureRef`.
    public static func microvmMachine(_ name: String) -> ObjectReference {
        ObjectReference(apiVersion: InfrastructureGroup.apiVersion, kind: "MicrovmMachine", name: name)
    }
}

public struct Cluster: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: ClusterAPIGroup.group, version: ClusterAPIGroup.version, kind: "Cluster", plural: "clusters")
    public var apiVersion: String? = "\(ClusterAPIGroup.group)/\(ClusterAPIGroup.version)"
    public var kind: String? = "Cluster"
    public var metadata: ObjectMeta
    public var spec: Spec?
    public var status: Status?
    public struct Spec: Codable, Sendable, Equatable {
        public var paused: Bool?
        public var controlPlaneEndpoint: APIEndpoint?
        public var infrastructureRef: ObjectReference?
        public init(paused: Bool? = nil, controlPlaneEndpoint: APIEndpoint? = nil, infrastructureRef: ObjectReference? = nil) {
            self.paused = paused
            self.controlPlaneEndpoint = controlPlaneEndpoint
            self.infrastructureRef = infrastructureRef
        }
    }
    public struct Status: Codable, Sendable, Equatable {
        /// v1beta1.
        public var infrastructureReady: Bool?
        public var controlPlaneReady: Bool?
        /// v1beta2.
        public var initialization: Initialization?
        public struct Initialization: Codable, Sendable, Equatable {
            public var infrastructureProvisioned: Bool?
            public var controlPlaneInitialized: Bool?
        }
        public init(infrastructureReady: Bool? = nil, controlPlaneReady: Bool? = nil) {
            self.infrastructureReady = infrastructureReady
            self.controlPlaneReady = controlPlaneReady
        }
        /// Whether the cluster's infrastructure is provisioned, in either version's field.
        public var infrastructureProvisioned: Bool { infrastructureReady == true || initialization?.infrastructureProvisioned == true }
    }
    public init(metadata: ObjectMeta, spec: Spec? = nil, status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

extension Cluster {
    /// Whether `object`, one of this cluster's, must not be reconciled: the Cluster's `spec.paused`,
    /// or the paused annotation on the object (Cluster API's `annotations.IsPaused`; clusterctl move
    /// pauses a cluster so before moving its objects).
    public func pauses(_ object: ObjectMeta) -> Bool {
        spec?.paused == true || object.annotations?[ClusterAPIGroup.pausedAnnotation] != nil
    }
}

public struct Machine: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: ClusterAPIGroup.group, version: ClusterAPIGroup.version, kind: "Machine", plural: "machines")
    public var apiVersion: String? = "\(ClusterAPIGroup.group)/\(ClusterAPIGroup.version)"
    public var kind: String? = "Machine"
    public var metadata: ObjectMeta
    public var spec: Spec
    public struct Bootstrap: Codable, Sendable, Equatable {
        public var dataSecretName: String?
        public init(dataSecretName: String? = nil) { self.dataSecretName = dataSecretName }
    }
    public struct Spec: Codable, Sendable, Equatable {
        public var clusterName: String
        public var bootstrap: Bootstrap
        public var infrastructureRef: ObjectReference?
        public var failureDomain: String?
        public var providerID: String?
        public var version: String?
        public init(clusterName: String, bootstrap: Bootstrap, infrastructureRef: ObjectReference? = nil, failureDomain: String? = nil) {
            self.clusterName = clusterName
            self.bootstrap = bootstrap
            self.infrastructureRef = infrastructureRef
            self.failureDomain = failureDomain
        }
    }
    public var isControlPlane: Bool { metadata.labels?[ClusterAPIGroup.controlPlaneLabel] != nil }

    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

/// A core v1 Secret (data values are base64 in JSON; decoded here).
public struct Secret: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: "", version: "v1", kind: "Secret", plural: "secrets")
    public var apiVersion: String? = "v1"
    public var kind: String? = "Secret"
    public var metadata: ObjectMeta
    public var type: String?
    public var data: [String: Data]?
    public init(metadata: ObjectMeta, type: String? = nil, data: [String: Data]? = nil) {
        self.metadata = metadata
        self.type = type
        self.data = data
    }
}
