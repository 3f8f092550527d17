// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "LiquidMetal",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "flintlockd", targets: ["flintlockd"]),
        .executable(name: "lmctl", targets: ["lmctl"]),
        .executable(name: "lm-bench", targets: ["lm-bench"]),
        .executable(name: "capmvm", targets: ["capmvm"]),
        .executable(name: "capmvm-bench", targets: ["capmvm-bench"]),
        .library(name: "AgentClient", targets: ["AgentClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: [
        // Generated protobuf and gRPC code (see scripts/generate-protos.sh).
        .target(
            name: "FlintlockAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "ContainerdAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // zlib from the system (Debian: zlib1g-dev), for gzip layers.
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        // <sys/xattr.h> from the C library (Glibc's Swift module leaves it out): extended attributes in layers.
        .systemLibrary(name: "CXattr"),
        // OCI images as data: reproducible tar and gzip layers, configs, manifests, image layouts.
        .target(
            name: "OCIImage",
            dependencies: ["CZlib", "CXattr", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Builds kernel and root filesystem images (lmctl image build).
        .target(
            name: "ImageBuilder",
            dependencies: [
                "OCIImage", "OCIRegistry", "HostSystem", "MicroVMCore",
                .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams"),
            ]
        ),
        // cloud-init NoCloud: the documents a guest gets (instance-id, network-config v2, mounts)
        // and the cidata seed disk; shared by the VMM providers (and an MMDS later).
        .target(
            name: "CloudInit",
            dependencies: ["MicroVMCore", "HostSystem", .product(name: "Yams", package: "Yams")]
        ),
        // A Kubernetes API client for controllers (capmvm): configuration, typed REST operations, watch.
        .target(
            name: "KubernetesClient",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // capmvm's API: CAPMVM's custom resources (and MicrovmHost), and the Cluster API objects it reads.
        .target(name: "CAPMVMAPI", dependencies: ["KubernetesClient"]),
        // capmvm's reconcilers (MicrovmMachine so far), talking to the API server and the host agents.
        .target(
            name: "CAPMVMController",
            dependencies: [
                "ReconcileQueue",
                "CAPMVMAPI", "KubernetesClient", "Placement", "AgentClient", "FlintlockAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"), .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Placement of cluster machines on hosts: CAPMVM's static pool and a dynamic scheduler (pure).
        .target(name: "Placement"),
        // `host:port` settings, parsed once for every server and client.
        .target(name: "HostPort"),
        // HTTP/1.1 GET endpoints: /healthz, /readyz, /metrics (capmvm and flintlockd).
        .target(
            name: "HTTPEndpoints",
            dependencies: [
                "HostPort", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .target(name: "ReconcileQueue"),
        // Small helpers around the host: processes, files, syscalls.
        .target(
            name: "HostSystem",
            dependencies: [.product(name: "Logging", package: "swift-log")]
        ),
        // The core: spec, status, validation, defaults, ids, plans, ports. No adapters.
        .target(
            name: "MicroVMCore",
            dependencies: [.product(name: "Logging", package: "swift-log"), .product(name: "Metrics", package: "swift-metrics")]
        ),
        .target(
            name: "MicroVMStore",
            dependencies: ["MicroVMCore", .product(name: "GRDB", package: "GRDB.swift")]
        ),
        // Registries through the Docker Registry HTTP API v2 / OCI distribution: pull and push,
        // basic and bearer-token auth.
        .target(
            name: "OCIRegistry",
            dependencies: [
                "MicroVMCore", "OCIImage",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "ContainerdImages",
            dependencies: [
                "MicroVMCore", "ContainerdAPI", "HostSystem", "OCIRegistry", "OCIImage",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "HostNetwork",
            dependencies: ["MicroVMCore", "HostSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "QEMUProvider",
            dependencies: ["MicroVMCore", "HostSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "HostAgent",
            dependencies: [
                "ReconcileQueue",
                "MicroVMCore", "MicroVMStore", "ContainerdImages", "OCIRegistry", "HostNetwork", "QEMUProvider", "CloudInit",
                "FlintlockAPI", "HostSystem", "HostPort", "HTTPEndpoints",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                // Client-certificate identities (mutual TLS) for the access policy.
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .target(
            name: "AgentClient",
            dependencies: [
                "FlintlockAPI", "HostPort",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "Yams", package: "Yams"),
                // The HTTP CONNECT tunnel to agents behind a proxy, with TLS checked there.
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .executableTarget(
            name: "flintlockd",
            dependencies: [
                "HostAgent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"), .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "capmvm",
            dependencies: [
                "CAPMVMController", "CAPMVMAPI", "KubernetesClient", "HTTPEndpoints",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"), .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "capmvm-bench",
            dependencies: [
                "CAPMVMAPI", "KubernetesClient", "KubernetesTestServer", "Placement", "AgentClient", "HostSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "lmctl",
            dependencies: [
                "AgentClient", "ImageBuilder", "OCIRegistry", "OCIImage", "MicroVMCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "lm-bench",
            dependencies: [
                "AgentClient", "HostSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(
            name: "TestSupport",
            dependencies: ["HostSystem", "AgentClient"],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "OCIImageTests", dependencies: ["OCIImage", "CXattr"]),
        .testTarget(
            name: "ImageBuilderTests",
            dependencies: ["ImageBuilder", "OCIRegistry", "MicroVMCore", "HostSystem", "TestSupport", .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams")]
        ),
        .testTarget(
            name: "OCIRegistryTests",
            dependencies: ["OCIRegistry", "MicroVMCore", "TestSupport", "HostSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "MicroVMCoreTests", dependencies: ["MicroVMCore", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "MicroVMStoreTests", dependencies: ["MicroVMStore", "MicroVMCore"]),
        .testTarget(name: "PlacementTests", dependencies: ["Placement"]),
        .testTarget(name: "ReconcileQueueTests", dependencies: ["ReconcileQueue"]),
        // The in-process test double of a Kubernetes API server (none can run on these machines).
        .target(
            name: "KubernetesTestServer",
            dependencies: [
                "KubernetesClient",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ],
            path: "Tests/KubernetesTestServer"
        ),
        .testTarget(name: "AgentClientTests", dependencies: ["AgentClient", .product(name: "X509", package: "swift-certificates"), .product(name: "SwiftASN1", package: "swift-asn1")]),
        .testTarget(name: "CAPMVMControllerTests", dependencies: ["CAPMVMController", "CAPMVMAPI", "AgentClient", "Placement", "KubernetesClient", "KubernetesTestServer", .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "CAPMVMAPITests", dependencies: ["CAPMVMAPI", "KubernetesClient", "KubernetesTestServer", "Placement", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "KubernetesClientTests", dependencies: ["KubernetesClient", "KubernetesTestServer", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CloudInitTests", dependencies: ["CloudInit", "MicroVMCore", "HostSystem", .product(name: "Yams", package: "Yams")]),
        .testTarget(
            name: "ContainerdImagesTests",
            dependencies: ["ContainerdImages", "OCIRegistry", "OCIImage", "MicroVMCore", "TestSupport", "HostSystem", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "HostAgentTests",
            dependencies: ["HostAgent", "AgentClient", "FlintlockAPI", "MicroVMCore", "TestSupport", "HostSystem", .product(name: "Yams", package: "Yams")]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "AgentClient", "FlintlockAPI", "TestSupport", "HostSystem", "flintlockd", "lmctl", "capmvm",
                "CAPMVMController", "CAPMVMAPI", "KubernetesClient", "KubernetesTestServer", "Placement", .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
