/// Media types from the OCI image spec.
public enum MediaType {
    public static let imageManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let imageIndex = "application/vnd.oci.image.index.v1+json"
    public static let imageConfig = "application/vnd.oci.image.config.v1+json"
    public static let layerTar = "application/vnd.oci.image.layer.v1.tar"
    public static let layerTarGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layoutHeader = "application/vnd.oci.layout.header.v1+json"
}

/// Well-known annotation keys.
public enum AnnotationKey {
    /// The tag of a manifest in an image layout's `index.json`.
    public static let refName = "org.opencontainers.image.ref.name"
    public static let created = "org.opencontainers.image.created"
    public static let title = "org.opencontainers.image.title"
    public static let version = "org.opencontainers.image.version"
    public static let revision = "org.opencontainers.image.revision"
    public static let source = "org.opencontainers.image.source"
    public static let description = "org.opencontainers.image.description"
}

/// A content descriptor (OCI image spec, descriptor.md).
public struct Descriptor: Codable, Sendable, Hashable {
    public var mediaType: String
    /// `<algorithm>:<hex>`.
    public var digest: String
    public var size: Int64
    public var urls: [String]?
    public var annotations: [String: String]?
    /// Only meaningful in an index's `manifests`.
    public var platform: Platform?
    /// Image spec 1.1.
    public var artifactType: String?

    public init(mediaType: String, digest: String, size: Int64, urls: [String]? = nil,
                annotations: [String: String]? = nil, platform: Platform? = nil, artifactType: String? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.urls = urls
        self.annotations = annotations
        self.platform = platform
        self.artifactType = artifactType
    }
}

/// The platform an image runs on. Architecture and OS use Go's names (`amd64`, `arm64`, `linux`).
public struct Platform: Codable, Sendable, Hashable {
    public var architecture: String
    public var os: String
    public var osVersion: String?
    public var osFeatures: [String]?
    public var variant: String?

    enum CodingKeys: String, CodingKey {
        case architecture, os, variant
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(architecture: String, os: String = "linux", osVersion: String? = nil, osFeatures: [String]? = nil,
                variant: String? = nil) {
        self.architecture = architecture
        self.os = os
        self.osVersion = osVersion
        self.osFeatures = osFeatures
        self.variant = variant
    }

    /// Linux on the architecture this code was compiled for (`amd64`, `arm64`, ...).
    public static var currentLinux: Platform {
        #if arch(x86_64)
        Platform(architecture: "amd64")
        #elseif arch(arm64)
        Platform(architecture: "arm64", variant: "v8")
        #elseif arch(riscv64)
        Platform(architecture: "riscv64")
        #elseif arch(s390x)
        Platform(architecture: "s390x")
        #elseif arch(powerpc64le)
        Platform(architecture: "ppc64le")
        #else
        Platform(architecture: "unknown")
        #endif
    }
}

/// An image manifest (manifest.md).
public struct ImageManifest: Codable, Sendable, Hashable {
    /// Always 2.
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var subject: Descriptor?
    public var annotations: [String: String]?

    public init(config: Descriptor, layers: [Descriptor], annotations: [String: String]? = nil,
                mediaType: String? = MediaType.imageManifest, artifactType: String? = nil, subject: Descriptor? = nil) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.artifactType = artifactType
        self.config = config
        self.layers = layers
        self.subject = subject
        self.annotations = annotations
    }
}

/// An image index (image-index.md); also the format of a layout's `index.json`.
public struct ImageIndex: Codable, Sendable, Hashable {
    /// Always 2.
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var manifests: [Descriptor]
    public var subject: Descriptor?
    public var annotations: [String: String]?

    public init(manifests: [Descriptor] = [], annotations: [String: String]? = nil,
                mediaType: String? = MediaType.imageIndex) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.artifactType = nil
        self.manifests = manifests
        self.subject = nil
        self.annotations = annotations
    }
}

/// An image configuration (config.md).
public struct ImageConfiguration: Codable, Sendable, Hashable {
    /// RFC 3339 creation time; leave nil or use `SourceDateEpoch.rfc3339` to stay reproducible.
    public var created: String?
    public var author: String?
    public var architecture: String
    public var os: String
    public var osVersion: String?
    public var osFeatures: [String]?
    public var variant: String?
    public var config: ContainerConfig?
    public var rootfs: RootFS
    public var history: [History]?

    enum CodingKeys: String, CodingKey {
        case created, author, architecture, os, variant, config, rootfs, history
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(platform: Platform = .currentLinux, config: ContainerConfig? = nil, diffIDs: [String] = [],
                created: String? = nil, author: String? = nil, history: [History]? = nil) {
        self.created = created
        self.author = author
        self.architecture = platform.architecture
        self.os = platform.os
        self.osVersion = platform.osVersion
        self.osFeatures = platform.osFeatures
        self.variant = platform.variant
        self.config = config
        self.rootfs = RootFS(diffIDs: diffIDs)
        self.history = history
    }

    /// The platform fields of this configuration.
    public var platform: Platform {
        Platform(architecture: architecture, os: os, osVersion: osVersion, osFeatures: osFeatures, variant: variant)
    }
}

/// Execution parameters in an image configuration (the `config` object).
public struct ContainerConfig: Codable, Sendable, Hashable {
    public var user: String?
    public var exposedPorts: [String: EmptyObject]?
    public var env: [String]?
    public var entrypoint: [String]?
    public var cmd: [String]?
    public var volumes: [String: EmptyObject]?
    public var workingDir: String?
    public var labels: [String: String]?
    public var stopSignal: String?

    enum CodingKeys: String, CodingKey {
        case user = "User"
        case exposedPorts = "ExposedPorts"
        case env = "Env"
        case entrypoint = "Entrypoint"
        case cmd = "Cmd"
        case volumes = "Volumes"
        case workingDir = "WorkingDir"
        case labels = "Labels"
        case stopSignal = "StopSignal"
    }

    public init(user: String? = nil, exposedPorts: [String: EmptyObject]? = nil, env: [String]? = nil,
                entrypoint: [String]? = nil, cmd: [String]? = nil, volumes: [String: EmptyObject]? = nil,
                workingDir: String? = nil, labels: [String: String]? = nil, stopSignal: String? = nil) {
        self.user = user
        self.exposedPorts = exposedPorts
        self.env = env
        self.entrypoint = entrypoint
        self.cmd = cmd
        self.volumes = volumes
        self.workingDir = workingDir
        self.labels = labels
        self.stopSignal = stopSignal
    }
}

/// `{}`, the value type of `ExposedPorts` and `Volumes`.
public struct EmptyObject: Codable, Sendable, Hashable {
    public init() {}
    public init(from decoder: any Decoder) throws { _ = try decoder.container(keyedBy: NoKeys.self) }
    public func encode(to encoder: any Encoder) throws { _ = encoder.container(keyedBy: NoKeys.self) }
    private enum NoKeys: CodingKey {}
}

/// The layers of an image, by uncompressed digest.
public struct RootFS: Codable, Sendable, Hashable {
    /// Always "layers".
    public var type: String
    /// `diff_id` of each layer, bottom first.
    public var diffIDs: [String]

    enum CodingKeys: String, CodingKey {
        case type
        case diffIDs = "diff_ids"
    }

    public init(diffIDs: [String]) {
        self.type = "layers"
        self.diffIDs = diffIDs
    }
}

/// One step in an image's history.
public struct History: Codable, Sendable, Hashable {
    public var created: String?
    public var createdBy: String?
    public var author: String?
    public var comment: String?
    /// True when the step created no layer.
    public var emptyLayer: Bool?

    enum CodingKeys: String, CodingKey {
        case created, author, comment
        case createdBy = "created_by"
        case emptyLayer = "empty_layer"
    }

    public init(created: String? = nil, createdBy: String? = nil, author: String? = nil, comment: String? = nil,
                emptyLayer: Bool? = nil) {
        self.created = created
        self.createdBy = createdBy
        self.author = author
        self.comment = comment
        self.emptyLayer = emptyLayer
    }
}

/// The `oci-layout` file of an image layout.
public struct ImageLayoutHeader: Codable, Sendable, Hashable {
    public var imageLayoutVersion: String
    public init(imageLayoutVersion: String = "1.0.0") { self.imageLayoutVersion = imageLayoutVersion }
}
