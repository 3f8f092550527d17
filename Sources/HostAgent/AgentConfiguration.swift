import Foundation
import HostPort
import MicroVMCore
import Yams

/// flintlockd's settings. Each has a flag (`--grpc-endpoint`), an environment variable
/// (`FLINTLOCKD_GRPC_ENDPOINT`) and a `config.yaml` key (`grpc-endpoint`); a flag beats the
/// environment, which beats the file, which beats the default.
public struct AgentConfiguration: Sendable, Equatable {
    public var grpcEndpoint = "localhost:9090"
    public var grpcSocket: String?
    /// host:port of /metrics (Prometheus), /healthz and /readyz; none when nil.
    public var metricsEndpoint: String?
    public var stateDir = "/var/lib/flintlock"
    public var resyncPeriod: Duration = .seconds(600)
    public var basicAuthToken: String?
    /// YAML file mapping tokens and client-certificate identities to namespaces (`AccessPolicy`).
    public var authFile: String?
    public var insecure = false
    public var tlsCert: String?
    public var tlsKey: String?
    public var tlsClientValidate = false
    public var tlsClientCA: String?
    public var containerdSocket = "/run/containerd/containerd.sock"
    public var containerdNamespace = "flintlock"
    public var containerdSnapshotter = "overlayfs"
    public var firecrackerBin: String?
    public var cloudhypervisorBin: String?
    public var qemuBin = "qemu-system-x86_64"
    public var qemuAccel = "auto"
    public var defaultProvider = "qemu"
    public var parentIface: String?
    public var bridgeName: String?
    /// With `bridgeName`: the agent owns the bridge, gives it this address ("10.200.0.1/24") and
    /// allocates guest addresses from the subnet.
    public var bridgeCIDR: String?
    public var bridgeNameservers: [String] = []
    public var insecureRegistries: [String] = []
    public var registryAuthFile: String?
    public var reconcileWorkers = 4
    public var maxRetries = 5
    public var maxRestarts = 5
    public var shutdownTimeout: Duration = .seconds(10)
    /// What creates may take of the host (`--vcpu-overcommit`, `--memory-reserve-mb`, `--vmm-overhead-mb`).
    public var admission = AdmissionLimits()
    public var debug = false

    public init() {}

    /// Every setting: key, help text and how to apply a string value.
    public struct Setting: Sendable {
        public let key: String
        public let help: String
        let apply: @Sendable (inout AgentConfiguration, String) throws -> Void
    }

    public static let settings: [Setting] = [
        .init(key: "grpc-endpoint", help: "TCP address the gRPC API listens on (host:port).") { $0.grpcEndpoint = $1 },
        .init(key: "grpc-socket", help: "Also serve the gRPC API on this Unix socket path.") { $0.grpcSocket = $1 },
        .init(key: "metrics-endpoint", help: "host:port serving Prometheus /metrics, /healthz and /readyz over plain HTTP (off by default; e.g. 127.0.0.1:9091).") { $0.metricsEndpoint = $1.isEmpty ? nil : $1 },
        .init(key: "state-dir", help: "Directory for the state database, VM directories and the image cache.") { $0.stateDir = $1 },
        .init(key: "resync-period", help: "How often every VM is reconciled even without changes (e.g. 10m, 30s).") { $0.resyncPeriod = try parseDuration($1, key: "resync-period") },
        .init(key: "basic-auth-token", help: "Require clients to send 'authorization: Basic <base64(token)>'.") { $0.basicAuthToken = $1 },
        .init(key: "auth-file", help: "YAML file mapping tokens and client-certificate identities (SAN or CN) to the namespaces they may read or write (see docs/agent-security.md).") { $0.authFile = $1 },
        .init(key: "insecure", help: "Serve without TLS even when a certificate is given.") { $0.insecure = try parseBool($1, key: "insecure") },
        .init(key: "tls-cert", help: "PEM certificate (chain) for serving the API over TLS.") { $0.tlsCert = $1 },
        .init(key: "tls-key", help: "PEM private key for --tls-cert.") { $0.tlsKey = $1 },
        .init(key: "tls-client-validate", help: "Require client certificates signed by --tls-client-ca (mTLS).") { $0.tlsClientValidate = try parseBool($1, key: "tls-client-validate") },
        .init(key: "tls-client-ca", help: "PEM CA bundle that signs client certificates.") { $0.tlsClientCA = $1 },
        .init(key: "containerd-socket", help: "containerd's gRPC socket.") { $0.containerdSocket = $1 },
        .init(key: "containerd-ns", help: "containerd namespace for the agent's images, snapshots and leases.") { $0.containerdNamespace = $1 },
        .init(key: "containerd-snapshotter", help: "Snapshotter images are unpacked into: overlayfs, native or devmapper.") { $0.containerdSnapshotter = $1 },
        .init(key: "firecracker-bin", help: "Firecracker binary (the firecracker provider is not available in this build).") { $0.firecrackerBin = $1 },
        .init(key: "cloudhypervisor-bin", help: "Cloud Hypervisor binary (the cloudhypervisor provider is not available in this build).") { $0.cloudhypervisorBin = $1 },
        .init(key: "qemu-bin", help: "QEMU binary for the qemu provider.") { $0.qemuBin = $1 },
        .init(key: "qemu-accel", help: "QEMU acceleration: auto (KVM only if a probe guest really runs under it, else TCG), kvm or tcg.") { c, v in
            guard ["auto", "kvm", "tcg"].contains(v) else { throw AgentError.invalid("qemu-accel", "must be auto, kvm or tcg, not \"\(v)\"") }
            c.qemuAccel = v
        },
        .init(key: "default-provider", help: "VMM used when a spec names none.") { $0.defaultProvider = $1 },
        .init(key: "parent-iface", help: "Host interface MACVTAP interfaces hang off (bridge mode).") { $0.parentIface = $1 },
        .init(key: "bridge-name", help: "Bridge that TAP interfaces join when a spec names none.") { $0.bridgeName = $1 },
        .init(key: "bridge-cidr", help: "Own --bridge-name: create it if missing with this gateway address (e.g. 10.200.0.1/24), enable forwarding and NAT for guest egress, and allocate guest addresses from the subnet to its interfaces that have no static address.") { $0.bridgeCIDR = $1 },
        .init(key: "bridge-nameservers", help: "Nameservers (comma-separated) written into the network-config of guests with allocated addresses.") { c, v in
            c.bridgeNameservers += v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        },
        .init(key: "insecure-registry", help: "Registry (host:port) reached over plain HTTP; repeat or separate with commas. Loopback registries always are.") { c, v in
            c.insecureRegistries += v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        },
        .init(key: "registry-auth-file", help: "Docker-style config.json with registry credentials ({\"auths\": {\"host\": {\"auth\": base64(user:password)}}}).") { $0.registryAuthFile = $1 },
        .init(key: "reconcile-workers", help: "VMs reconciled concurrently.") { $0.reconcileWorkers = try parseInt($1, key: "reconcile-workers", range: 1...256) },
        .init(key: "max-retries", help: "Failed attempts to create a VM before it is marked FAILED.") { $0.maxRetries = try parseInt($1, key: "max-retries", range: 0...1000) },
        .init(key: "max-restarts", help: "Unexpected VMM exits (crashes, guest panics) before a VM is marked FAILED.") { $0.maxRestarts = try parseInt($1, key: "max-restarts", range: 0...1000) },
        .init(key: "shutdown-timeout", help: "Time a guest gets to power off, then QEMU to exit on SIGTERM, before SIGKILL.") { $0.shutdownTimeout = try parseDuration($1, key: "shutdown-timeout") },
        .init(key: "vcpu-overcommit", help: "vCPUs handed out per host CPU; a create beyond that fails with RESOURCE_EXHAUSTED.") { $0.admission.vcpuOvercommit = try parseInt($1, key: "vcpu-overcommit", range: 1...64) },
        .init(key: "memory-reserve-mb", help: "Host memory (MiB) never given to microVMs; memory is not overcommitted, so a create that does not fit fails with RESOURCE_EXHAUSTED.") { $0.admission.memoryReserveMB = try parseInt($1, key: "memory-reserve-mb", range: 0...1_048_576) },
        .init(key: "vmm-overhead-mb", help: "Memory (MiB) counted for each VMM on top of its guest's memory.") { $0.admission.vmmOverheadMB = try parseInt($1, key: "vmm-overhead-mb", range: 0...65_536) },
        .init(key: "debug", help: "Log at debug level.") { $0.debug = try parseBool($1, key: "debug") },
    ]

    /// Resolves the configuration from a config file's text, the environment and flags.
    /// `flags` maps setting keys to values given on the command line (repeatable ones joined by commas).
    public static func resolve(configFileText: String?, environment: [String: String], flags: [String: String]) throws -> AgentConfiguration {
        var c = AgentConfiguration()
        var file: [String: String] = [:]
        if let text = configFileText, !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            guard let yaml = try? Yams.load(yaml: text), let map = yaml as? [String: Any] else {
                throw AgentError(.invalidArgument, "config file: not a YAML mapping of setting: value")
            }
            for (k, v) in map {
                guard settings.contains(where: { $0.key == k }) else {
                    throw AgentError(.invalidArgument, "config file: unknown setting \"\(k)\" (known: \(settings.map(\.key).joined(separator: ", ")))")
                }
                if let list = v as? [Any] { file[k] = list.map { "\($0)" }.joined(separator: ",") } else { file[k] = "\(v)" }
            }
        }
        for s in settings {
            let envKey = "FLINTLOCKD_" + s.key.uppercased().replacingOccurrences(of: "-", with: "_")
            if let v = flags[s.key] ?? environment[envKey] ?? file[s.key] { try s.apply(&c, v) }
        }
        try c.validate()
        return c
    }

    func validate() throws {
        // Half-configured TLS is refused rather than silently served in plaintext.
        guard tlsCert == nil || tlsKey != nil else { throw AgentError.invalid("tls-key", "is required with --tls-cert") }
        guard tlsKey == nil || tlsCert != nil else { throw AgentError.invalid("tls-cert", "is required with --tls-key") }
        guard !tlsClientValidate || tlsClientCA != nil else { throw AgentError.invalid("tls-client-ca", "is required with --tls-client-validate") }
        guard !tlsClientValidate || tlsCert != nil else {
            throw AgentError.invalid("tls-client-validate", "needs a server certificate (--tls-cert and --tls-key): client certificates are only checked over TLS")
        }
        guard tlsClientCA == nil || tlsClientValidate else {
            throw AgentError.invalid("tls-client-ca", "is given without --tls-client-validate, so client certificates would not be checked; add --tls-client-validate or drop --tls-client-ca")
        }
        guard !(insecure && tlsClientValidate) else {
            throw AgentError.invalid("insecure", "turns TLS off, but --tls-client-validate asks for client certificates; drop one of them")
        }
        guard ["overlayfs", "native", "devmapper"].contains(containerdSnapshotter) else {
            throw AgentError.invalid("containerd-snapshotter", "must be overlayfs, native or devmapper")
        }
        _ = try Self.hostPort(grpcEndpoint)
        if let m = metricsEndpoint { _ = try Self.hostPort(m, key: "metrics-endpoint") }
        if let b = bridgeName { try Validate.interfaceName(b, field: "bridge-name") }
        if let p = parentIface { try Validate.interfaceName(p, field: "parent-iface") }
        _ = try agentNetwork()
    }

    /// The transport in force, for the start log.
    public var transportDescription: String {
        if insecure || tlsCert == nil { return tlsCert == nil ? "plaintext" : "plaintext (--insecure: the TLS certificate is not used)" }
        return tlsClientValidate ? "mutual TLS (client certificates signed by \(tlsClientCA ?? ""))" : "TLS"
    }

    /// The access policy: the auth file's tokens and identities, plus `--basic-auth-token` as a
    /// token that may do everything. Open (everyone may do everything) when neither is set.
    public func accessPolicy() throws -> AccessPolicy {
        var policy = try authFile.map { try AccessPolicy.load(path: $0) } ?? AccessPolicy()
        if let t = basicAuthToken, !t.isEmpty { policy.addToken(t, name: "basic-auth-token") }
        if policy.identityCount > 0 && !(tlsClientValidate && !insecure) {
            throw AgentError.invalid("auth-file", "lists client certificate identities, but client certificates are not checked; add --tls-client-validate (with --tls-cert, --tls-key, --tls-client-ca)")
        }
        return policy
    }

    /// The agent-owned bridge and subnet, when --bridge-cidr is set.
    public func agentNetwork() throws -> AgentNetwork? {
        guard let cidr = bridgeCIDR, !cidr.isEmpty else {
            guard bridgeNameservers.isEmpty else { throw AgentError.invalid("bridge-nameservers", "needs --bridge-cidr") }
            return nil
        }
        guard let bridge = bridgeName else { throw AgentError.invalid("bridge-cidr", "needs --bridge-name, the bridge the agent owns") }
        guard let gw = IPv4Interface(cidr: cidr) else { throw AgentError.invalid("bridge-cidr", "\"\(cidr)\" is not an IPv4 address with prefix, like 10.200.0.1/24") }
        guard gw.prefixLength <= 30 else { throw AgentError.invalid("bridge-cidr", "/\(gw.prefixLength) leaves no room for guests; use /30 or shorter") }
        guard gw.address != gw.network, gw.address != gw.broadcast else {
            throw AgentError.invalid("bridge-cidr", "\(gw.address) is the subnet's network or broadcast address; give the gateway's own, like \(IPv4Address(gw.network.value + 1))/\(gw.prefixLength)")
        }
        for (i, n) in bridgeNameservers.enumerated() where !IPText.isIP(n) {
            throw AgentError.invalid("bridge-nameservers[\(i)]", "\"\(n)\" is not an IP address")
        }
        return AgentNetwork(bridge: bridge, gateway: gw, nameservers: bridgeNameservers)
    }

    /// Parses a `host:port` setting (an empty host means every address), naming `key` when it is not one.
    public static func hostPort(_ s: String, key: String = "grpc-endpoint") throws -> HostPort {
        guard let hp = HostPort(parsing: s, defaultHost: "0.0.0.0") else { throw AgentError.invalid(key, "\"\(s)\" is not host:port") }
        return hp
    }

    static func parseBool(_ v: String, key: String) throws -> Bool {
        switch v.lowercased() {
        case "true", "1", "yes", "on", "": return true
        case "false", "0", "no", "off": return false
        default: throw AgentError.invalid(key, "\"\(v)\" is not true or false")
        }
    }

    static func parseInt(_ v: String, key: String, range: ClosedRange<Int>) throws -> Int {
        guard let n = Int(v), range.contains(n) else { throw AgentError.invalid(key, "\"\(v)\" is not a number in \(range.lowerBound)-\(range.upperBound)") }
        return n
    }

    /// Parses Go-style durations: `1h30m`, `10m`, `30s`, `500ms`.
    public static func parseDuration(_ v: String, key: String) throws -> Duration {
        var total: Duration = .zero
        var number = ""
        var rest = Substring(v.trimmingCharacters(in: .whitespaces))
        guard !rest.isEmpty else { throw AgentError.invalid(key, "empty duration") }
        while !rest.isEmpty {
            number = String(rest.prefix { $0.isNumber || $0 == "." })
            rest = rest.dropFirst(number.count)
            let unit = String(rest.prefix { $0.isLetter })
            rest = rest.dropFirst(unit.count)
            guard let n = Double(number) else { throw AgentError.invalid(key, "\"\(v)\" is not a duration like 10m or 30s") }
            switch unit {
            case "h": total += .milliseconds(Int64(n * 3_600_000))
            case "m": total += .milliseconds(Int64(n * 60_000))
            case "s": total += .milliseconds(Int64(n * 1000))
            case "ms": total += .milliseconds(Int64(n))
            default: throw AgentError.invalid(key, "\"\(v)\" is not a duration like 10m or 30s")
            }
        }
        return total
    }
}
