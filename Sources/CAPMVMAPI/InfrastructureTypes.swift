import KubernetesClient

/// CAPMVM's custom resources (group `infrastructure.cluster.x-k8s.io`, version `v1alpha1`), with the
/// fields CAPMVM v0.10 has, plus `MicrovmHost` for dynamic placement. JSON field names are the API's.
public enum InfrastructureGroup {
    public static let group = "infrastructure.cluster.x-k8s.io"
    public static let version = "v1alpha1"
    public static var apiVersion: String { "\(group)/\(version)" }
    /// The finalizer a MicrovmMachine carries while its microVM may exist.
    public static let machineFinalizer = "microvmmachine.infrastructure.cluster.x-k8s.io"
}

/// `metav1.Condition`-style condition as Cluster API v1beta1 has it.
public struct Condition: Codable, Sendable, Equatable {
    public var type: String
    public var status: String
    public var severity: String?
    public var reason: String?
    public var message: String?
    public var lastTransitionTime: String?
    /// The object's `metadata.generation` the condition was set for (read by Cluster API's v1beta2 contract).
    public var observedGeneration: Int64?
    public init(type: String, status: String, severity: String? = nil, reason: String? = nil, message: String? = nil, lastTransitionTime: String? = nil,
                observedGeneration: Int64? = nil) {
        self.type = type
        self.status = status
        self.severity = severity
        self.reason = reason
        self.message = message
        self.lastTransitionTime = lastTransitionTime
        self.observedGeneration = observedGeneration
    }
}

public struct APIEndpoint: Codable, Sendable, Equatable {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

public struct SSHPublicKey: Codable, Sendable, Equatable {
    public var user: String
    public var authorizedKeys: [String]?
    public init(user: String, authorizedKeys: [String]? = nil) {
        self.user = user
        self.authorizedKeys = authorizedKeys
    }
}

public struct LocalObjectReference: Codable, Sendable, Equatable {
    public var name: String
    public init(name: String) { self.name = name }
}

// MARK: - MicrovmCluster

public struct MicrovmCluster: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: InfrastructureGroup.group, version: InfrastructureGroup.version, kind: "MicrovmCluster", plural: "microvmclusters")
    public var apiVersion: String? = InfrastructureGroup.apiVersion
    public var kind: String? = "MicrovmCluster"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Spec: Codable, Sendable, Equatable {
        public var controlPlaneEndpoint: APIEndpoint?
        public var sshPublicKeys: [SSHPublicKey]?
        public var placement: Placement
        public var microvmProxy: Proxy?
        public var tlsSecretRef: String?
        public init(controlPlaneEndpoint: APIEndpoint? = nil, sshPublicKeys: [SSHPublicKey]? = nil, placement: Placement, microvmProxy: Proxy? = nil, tlsSecretRef: String? = nil) {
            self.controlPlaneEndpoint = controlPlaneEndpoint
            self.sshPublicKeys = sshPublicKeys
            self.placement = placement
            self.microvmProxy = microvmProxy
            self.tlsSecretRef = tlsSecretRef
        }
    }

    /// Where machines go: CAPMVM's static pool, or (ours) a dynamic pool over MicrovmHosts.
    public struct Placement: Codable, Sendable, Equatable {
        public var staticPool: StaticPool?
        public var dynamicPool: DynamicPool?
        public init(staticPool: StaticPool? = nil, dynamicPool: DynamicPool? = nil) {
            self.staticPool = staticPool
            self.dynamicPool = dynamicPool
        }
    }

    public struct StaticPool: Codable, Sendable, Equatable {
        public var hosts: [Host]
        /// Secret holding a basic-auth token per host (keyed by host name or endpoint).
        public var basicAuthSecret: String?
        public init(hosts: [Host], basicAuthSecret: String? = nil) {
            self.hosts = hosts
            self.basicAuthSecret = basicAuthSecret
        }
    }

    public struct Host: Codable, Sendable, Equatable {
        public var name: String?
        public var endpoint: String
        /// Defaults to true.
        public var controlplaneAllowed: Bool?
        public init(name: String? = nil, endpoint: String, controlplaneAllowed: Bool? = nil) {
            self.name = name
            self.endpoint = endpoint
            self.controlplaneAllowed = controlplaneAllowed
        }
    }

    /// Hosts are the MicrovmHost objects matching `hostSelector` (all when empty).
    public struct DynamicPool: Codable, Sendable, Equatable {
        public var hostSelector: [String: String]?
        public init(hostSelector: [String: String]? = nil) { self.hostSelector = hostSelector }
    }

    /// An HTTP proxy agents are reached through with CONNECT: `http://[user:password@]host:port` or `host:port`.
    public struct Proxy: Codable, Sendable, Equatable {
        public var endpoint: String
        public init(endpoint: String) { self.endpoint = endpoint }
    }

    public struct FailureDomain: Codable, Sendable, Equatable {
        public var controlPlane: Bool?
        public var attributes: [String: String]?
        public init(controlPlane: Bool? = nil, attributes: [String: String]? = nil) {
            self.controlPlane = controlPlane
            self.attributes = attributes
        }
    }

    public struct Status: Codable, Sendable, Equatable {
        /// Provisioned, for the v1beta1 contract.
        public var ready: Bool?
        /// Provisioned, for the v1beta2 contract.
        public var initialization: Initialization?
        public var conditions: [Condition]?
        /// A map in the v1beta1 contract, a list in v1beta2 (see `FailureDomains`).
        public var failureDomains: FailureDomains?
        public init(ready: Bool? = nil, conditions: [Condition]? = nil, failureDomains: FailureDomains? = nil) {
            self.ready = ready
            self.conditions = conditions
            self.failureDomains = failureDomains
        }
    }

    /// `status.failureDomains`: Cluster API's v1beta1 contract reads a map from name to failure
    /// domain, its v1beta2 contract a list of named ones. The CRD takes either; capmvm writes the one
    /// of the contract the management cluster's Cluster API speaks.
    public enum FailureDomains: Codable, Sendable, Equatable {
        case map([String: FailureDomain])
        case list([NamedFailureDomain])

        public init(_ domains: [String: FailureDomain], contract: ClusterAPIContract) {
            switch contract {
            case .v1beta1: self = .map(domains)
            case .v1beta2: self = .list(domains.sorted { $0.key < $1.key }.map { NamedFailureDomain(name: $0.key, controlPlane: $0.value.controlPlane, attributes: $0.value.attributes) })
            }
        }

        /// By name, whichever the form.
        public var byName: [String: FailureDomain] {
            switch self {
            case .map(let m): return m
            case .list(let l): return Dictionary(l.map { ($0.name, FailureDomain(controlPlane: $0.controlPlane, attributes: $0.attributes)) }, uniquingKeysWith: { a, _ in a })
            }
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let list = try? c.decode([NamedFailureDomain].self) { self = .list(list) } else { self = .map(try c.decode([String: FailureDomain].self)) }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .map(let m): try c.encode(m)
            case .list(let l): try c.encode(l)
            }
        }
    }

    public struct NamedFailureDomain: Codable, Sendable, Equatable {
        public var name: String
        public var controlPlane: Bool?
        public var attributes: [String: String]?
        public init(name: String, controlPlane: Bool? = nil, attributes: [String: String]? = nil) {
            self.name = name
            self.controlPlane = controlPlane
            self.attributes = attributes
        }
    }

    public init(metadata: ObjectMeta, spec: Spec, status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

// MARK: - MicrovmMachine

public struct MicrovmMachine: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: InfrastructureGroup.group, version: InfrastructureGroup.version, kind: "MicrovmMachine", plural: "microvmmachines")
    public var apiVersion: String? = InfrastructureGroup.apiVersion
    public var kind: String? = "MicrovmMachine"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Volume: Codable, Sendable, Equatable {
        public var id: String
        public var image: String
        public var readOnly: Bool?
        public var mountPoint: String?
        public var virtiofsPath: String?
        /// The disk's size in MiB when larger than the image (writable volumes); ours, not CAPMVM's.
        public var sizeMb: Int?
        public init(id: String, image: String, readOnly: Bool? = nil, mountPoint: String? = nil, sizeMb: Int? = nil) {
            self.id = id
            self.image = image
            self.readOnly = readOnly
            self.mountPoint = mountPoint
            self.sizeMb = sizeMb
        }
    }

    public struct ContainerFile: Codable, Sendable, Equatable {
        public var image: String
        public var filename: String?
        public init(image: String, filename: String? = nil) {
            self.image = image
            self.filename = filename
        }
    }

    public struct StaticAddress: Codable, Sendable, Equatable {
        public var address: String
        public var gateway: String?
        public var nameservers: [String]?
        public init(address: String, gateway: String? = nil, nameservers: [String]? = nil) {
            self.address = address
            self.gateway = gateway
            self.nameservers = nameservers
        }
    }

    public struct NetworkInterface: Codable, Sendable, Equatable {
        public var guestDeviceName: String
        public var guestMac: String?
        /// "macvtap" or "tap".
        public var type: String
        public var address: StaticAddress?
        public init(guestDeviceName: String, guestMac: String? = nil, type: String, address: StaticAddress? = nil) {
            self.guestDeviceName = guestDeviceName
            self.guestMac = guestMac
            self.type = type
            self.address = address
        }
    }

    public struct Spec: Codable, Sendable, Equatable {
        public var provider: String?
        public var vcpu: Int
        public var memoryMb: Int
        public var rootVolume: Volume
        public var volumes: [Volume]?
        public var kernel: ContainerFile
        public var kernelCmdline: [String: String]?
        public var initrd: ContainerFile?
        public var networkInterfaces: [NetworkInterface]
        public var labels: [String: String]?
        public var sshPublicKeys: [SSHPublicKey]?
        public var providerID: String?
        public init(vcpu: Int, memoryMb: Int, rootVolume: Volume, kernel: ContainerFile, initrd: ContainerFile? = nil,
                    networkInterfaces: [NetworkInterface], providerID: String? = nil) {
            self.vcpu = vcpu
            self.memoryMb = memoryMb
            self.rootVolume = rootVolume
            self.kernel = kernel
            self.initrd = initrd
            self.networkInterfaces = networkInterfaces
            self.providerID = providerID
        }
    }

    /// pending, running, failed, deleted or unknown.
    public struct Status: Codable, Sendable, Equatable {
        /// Provisioned, for the v1beta1 contract.
        public var ready: Bool?
        /// Provisioned, for the v1beta2 contract.
        public var initialization: Initialization?
        public var vmState: String?
        public var addresses: [MachineAddress]?
        public var failureReason: String?
        public var failureMessage: String?
        public var conditions: [Condition]?
        public init() {}
    }

    public init(metadata: ObjectMeta, spec: Spec, status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}

/// Cluster API's machine address (`type`: Hostname, ExternalIP, InternalIP, ExternalDNS, InternalDNS).
/// `status.initialization` of Cluster API's v1beta2 contract.
public struct Initialization: Codable, Sendable, Equatable {
    public var provisioned: Bool?
    public init(provisioned: Bool? = nil) { self.provisioned = provisioned }
}

/// The version of Cluster API's contract between its core controllers and this provider. Our kinds
/// serve both (one API version, v1alpha1): the status carries `ready` and `initialization.provisioned`,
/// conditions readable as either; only the failure domains' shape depends on it.
public enum ClusterAPIContract: String, Sendable, Equatable {
    /// Cluster API up to v1.10 (CAPMVM's).
    case v1beta1
    /// Cluster API v1.11 and later.
    case v1beta2

    /// The contract of a management cluster whose `cluster.x-k8s.io` group serves `versions`.
    public init(servedVersions versions: [String]) {
        self = versions.contains("v1beta2") ? .v1beta2 : .v1beta1
    }
}

public struct MachineAddress: Codable, Sendable, Equatable {
    public var type: String
    public var address: String
    public init(type: String, address: String) {
        self.type = type
        self.address = address
    }
}

/// The `spec` of a template kind: `{template: {metadata, spec}}`.
public struct TemplateResourceSpec<Inner: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public struct Template: Codable, Sendable, Equatable {
        public var metadata: ObjectMeta?
        public var spec: Inner
        public init(metadata: ObjectMeta? = nil, spec: Inner) {
            self.metadata = metadata
            self.spec = spec
        }
    }
    public var template: Template
    public init(template: Template) { self.template = template }
}

/// A MicrovmCluster as a ClusterClass's infrastructure template.
public struct MicrovmClusterTemplate: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: InfrastructureGroup.group, version: InfrastructureGroup.version, kind: "MicrovmClusterTemplate", plural: "microvmclustertemplates")
    public var apiVersion: String? = InfrastructureGroup.apiVersion
    public var kind: String? = "MicrovmClusterTemplate"
    public var metadata: ObjectMeta
    public var spec: Spec
    public typealias Spec = TemplateResourceSpec<MicrovmCluster.Spec>
    public typealias Template = Spec.Template

    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

public struct MicrovmMachineTemplate: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: InfrastructureGroup.group, version: InfrastructureGroup.version, kind: "MicrovmMachineTemplate", plural: "microvmmachinetemplates")
    public var apiVersion: String? = InfrastructureGroup.apiVersion
    public var kind: String? = "MicrovmMachineTemplate"
    public var metadata: ObjectMeta
    public var spec: Spec
    public typealias Spec = TemplateResourceSpec<MicrovmMachine.Spec>
    public typealias Template = Spec.Template

    public init(metadata: ObjectMeta, spec: Spec) {
        self.metadata = metadata
        self.spec = spec
    }
}

// MARK: - MicrovmHost (ours)

/// One host agent in a dynamic pool: where it is, how it is reached, and (in status) what it has.
/// Any inventory (Tinkerbell, Metal3, MAAS, a script) may create these.
public struct MicrovmHost: KubernetesObject, Equatable {
    public static let resource = ResourceType(group: InfrastructureGroup.group, version: InfrastructureGroup.version, kind: "MicrovmHost", plural: "microvmhosts")
    public var apiVersion: String? = InfrastructureGroup.apiVersion
    public var kind: String? = "MicrovmHost"
    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    public struct Spec: Codable, Sendable, Equatable {
        /// The agent's gRPC endpoint, "host:port".
        public var endpoint: String
        /// Hosts sharing a failure domain fail together; defaults to the host's name.
        public var failureDomain: String?
        /// Defaults to true.
        public var controlplaneAllowed: Bool?
        /// A Secret with the agent's basic-auth `token` and/or TLS settings: `ca.crt` (the CA that
        /// signed the agent's certificate), `tls.crt` and `tls.key` (a client certificate, for mutual TLS).
        public var credentialsRef: LocalObjectReference?
        /// An HTTP proxy the agent is reached through (CONNECT).
        public var microvmProxy: MicrovmCluster.Proxy?
        /// vCPUs that may be allocated per CPU of the host; nil means `defaultVCPUOvercommit`.
        /// Memory is never overcommitted.
        public var vcpuOvercommit: Int?
        public init(endpoint: String, failureDomain: String? = nil, controlplaneAllowed: Bool? = nil, credentialsRef: LocalObjectReference? = nil,
                    microvmProxy: MicrovmCluster.Proxy? = nil, vcpuOvercommit: Int? = nil) {
            self.endpoint = endpoint
            self.failureDomain = failureDomain
            self.controlplaneAllowed = controlplaneAllowed
            self.credentialsRef = credentialsRef
            self.microvmProxy = microvmProxy
            self.vcpuOvercommit = vcpuOvercommit
        }

        /// The vCPU overcommit when a host does not set one: microVM guests are mostly idle, as
        /// Kubernetes nodes of small clusters are, and memory (not overcommitted) is the real limit.
        public static let defaultVCPUOvercommit = 4

        /// vCPUs the scheduler may allocate on a host with `cpus` CPUs.
        public func schedulableVCPUs(cpus: Int) -> Int { cpus * (vcpuOvercommit ?? Self.defaultVCPUOvercommit) }
    }

    public struct Status: Codable, Sendable, Equatable {
        public var reachable: Bool?
        public var agentVersion: String?
        public var vcpus: Int?
        public var memoryMb: Int?
        public var microvms: Int?
        public var allocatedVcpus: Int?
        public var allocatedMemoryMb: Int?
        public var freeVcpus: Int?
        public var freeMemoryMb: Int?
        public var lastProbeTime: String?
        public var conditions: [Condition]?
        public init() {}
    }

    public init(metadata: ObjectMeta, spec: Spec, status: Status? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.status = status
    }
}
