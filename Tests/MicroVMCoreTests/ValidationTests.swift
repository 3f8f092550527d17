import Foundation
import MicroVMCore
import Testing

// MARK: - Defaults

@Suite("MicroVMSpec.normalized: defaults")
struct SpecDefaultsTests {
    @Test("an almost empty spec gets the documented defaults")
    func defaultsAreFilledIn() throws {
        let spec = try validSpec().normalized(policy: SpecPolicy())
        #expect(spec.namespace == "default")
        #expect(spec.vcpu == 2)
        #expect(spec.memoryInMB == 1024)
        #expect(spec.provider == "qemu")
        #expect(spec.kernel.filename == "boot/vmlinuz")
        #expect(spec.initrd == nil)
        #expect(spec.name == "vm1")
    }

    @Test("the static defaults match the API contract")
    func policyConstants() {
        #expect(SpecPolicy.defaultNamespace == "default")
        #expect(SpecPolicy.defaultVCPU == 2)
        #expect(SpecPolicy.defaultMemoryMB == 1024)
        #expect(SpecPolicy.defaultInitrdFilename == "boot/initrd")
    }

    @Test("the default kernel file depends on the provider", arguments: [
        ("qemu", "boot/vmlinuz"),
        ("firecracker", "boot/vmlinux"),
        ("cloudhypervisor", "boot/vmlinux"),
    ])
    func kernelFilenamePerProvider(provider: String, expected: String) throws {
        let policy = SpecPolicy(availableProviders: ["qemu", "firecracker", "cloudhypervisor"])
        var s = validSpec()
        s.provider = provider
        let spec = try s.normalized(policy: policy)
        #expect(spec.provider == provider)
        #expect(spec.kernel.filename == expected)
        #expect(SpecPolicy.defaultKernelFilename(provider: provider) == expected)
    }

    @Test("no provider, or an empty one, means the policy's default provider", arguments: [nil, ""] as [String?])
    func providerDefaultsToPolicy(provider: String?) throws {
        let policy = SpecPolicy(defaultProvider: "firecracker", availableProviders: ["firecracker"])
        var s = validSpec()
        s.provider = provider
        let spec = try s.normalized(policy: policy)
        #expect(spec.provider == "firecracker")
        #expect(spec.kernel.filename == "boot/vmlinux")
    }

    @Test("an initrd without a filename gets boot/initrd; a given one is kept")
    func initrdFilename() throws {
        var s = validSpec()
        s.initrd = InitrdSpec(image: "ghcr.io/x/initrd:1")
        #expect(try s.normalized(policy: SpecPolicy()).initrd == InitrdSpec(image: "ghcr.io/x/initrd:1", filename: "boot/initrd"))

        s.initrd = InitrdSpec(image: "ghcr.io/x/initrd:1", filename: "img/initrd.gz")
        #expect(try s.normalized(policy: SpecPolicy()).initrd?.filename == "img/initrd.gz")
    }

    @Test("a TAP interface without a bridge joins the policy's default bridge; an explicit bridge wins")
    func tapBridgeFromPolicy() throws {
        var s = validSpec()
        s.interfaces = [tap("eth0", bridge: nil), tap("eth1", bridge: "br-other")]
        let spec = try s.normalized(policy: SpecPolicy(defaultBridge: "lmbr0"))
        #expect(spec.interfaces.map(\.bridgeName) == ["lmbr0", "br-other"])
    }

    @Test("explicit values are kept, not replaced by defaults")
    func explicitValuesKept() throws {
        var s = validSpec()
        s.namespace = "team-a"
        s.vcpu = 4
        s.memoryInMB = 2048
        s.kernel.filename = "vmlinuz-6.1"
        s.kernel.cmdline = ["console": "ttyS0", "quiet": ""]
        s.allowGuestAgent = true
        let spec = try s.normalized(policy: SpecPolicy())
        #expect(spec.namespace == "team-a")
        #expect(spec.vcpu == 4)
        #expect(spec.memoryInMB == 2048)
        #expect(spec.kernel.filename == "vmlinuz-6.1")
        #expect(spec.kernel.cmdline == ["console": "ttyS0", "quiet": ""])
        #expect(spec.allowGuestAgent)
    }

    @Test("labels are stored exactly as given (Flintlock bug #1232 dropped them)")
    func labelsKept() throws {
        var s = validSpec()
        let labels = ["app": "web", "cluster.x-k8s.io/cluster-name": "c1", "empty": "", "unicode": "grüße"]
        s.labels = labels
        #expect(try s.normalized(policy: SpecPolicy()).labels == labels)
    }

    @Test("normalizing twice gives the same spec")
    func idempotent() throws {
        var s = validSpec()
        s.initrd = InitrdSpec(image: "busybox")
        s.interfaces = [tap("eth0", bridge: nil)]
        let policy = SpecPolicy(defaultBridge: "br0")
        let once = try s.normalized(policy: policy)
        #expect(try once.normalized(policy: policy) == once)
    }

    @Test("values at the edges of the allowed ranges are accepted")
    func boundaries() throws {
        for (vcpu, mem) in [(1, 64), (64, 262_144)] {
            var s = validSpec()
            s.vcpu = vcpu
            s.memoryInMB = mem
            s.name = String(repeating: "n", count: 63)
            s.namespace = String(repeating: "s", count: 63)
            let spec = try s.normalized(policy: SpecPolicy())
            #expect(spec.vcpu == vcpu)
            #expect(spec.memoryInMB == mem)
        }
    }

    @Test("a spec with interfaces, initrd and extra volumes passes")
    func fullSpecPasses() throws {
        var s = validSpec()
        s.initrd = InitrdSpec(image: "127.0.0.1:5111/lm-test/initrd:latest")
        s.additionalVolumes = [VolumeSpec(id: "data", isReadOnly: true, containerSource: "localhost/data", sizeInMB: 0)]
        s.interfaces = [
            tap("eth0", mac: "02:AA:bb:00:00:01", bridge: "br0"),
            tap("eth_1", mac: nil, bridge: String(repeating: "b", count: 15)),
        ]
        let spec = try s.normalized(policy: SpecPolicy())
        #expect(spec.interfaces.count == 2)
        #expect(spec.additionalVolumes.count == 1)
    }
}

// MARK: - Rejections

/// One way to break a valid spec, with the error it must produce.
struct Rejection: Sendable, CustomTestStringConvertible {
    var label: String
    var field: String
    var code: AgentError.Code = .invalidArgument
    var policy: SpecPolicy = SpecPolicy()
    var mutate: @Sendable (inout MicroVMSpec) -> Void

    var testDescription: String { label }
}

private let longName = String(repeating: "a", count: 64)

let nameRejections: [Rejection] = [
    Rejection(label: "empty id", field: "id") { $0.name = "" },
    Rejection(label: "id with /", field: "id") { $0.name = "a/b" },
    Rejection(label: "id ..", field: "id") { $0.name = ".." },
    Rejection(label: "id containing ..", field: "id") { $0.name = "a..b" },
    Rejection(label: "id 64 chars", field: "id") { $0.name = longName },
    Rejection(label: "id starting with -", field: "id") { $0.name = "-vm" },
    Rejection(label: "id with space", field: "id") { $0.name = "my vm" },
    Rejection(label: "namespace with /", field: "namespace") { $0.namespace = "ns/x" },
    Rejection(label: "namespace ..", field: "namespace") { $0.namespace = ".." },
    Rejection(label: "namespace 64 chars", field: "namespace") { $0.namespace = longName },
    Rejection(label: "label key with space", field: "labels") { $0.labels = ["bad key": "v"] },
    Rejection(label: "empty label key", field: "labels") { $0.labels = ["": "v"] },
    Rejection(label: "label value over 1024", field: "labels[k]") { $0.labels = ["k": String(repeating: "v", count: 1025)] },
]

let resourceRejections: [Rejection] = [
    Rejection(label: "vcpu -1", field: "vcpu") { $0.vcpu = -1 },
    Rejection(label: "vcpu 65", field: "vcpu") { $0.vcpu = 65 },
    Rejection(label: "memory 10", field: "memory_in_mb") { $0.memoryInMB = 10 },
    Rejection(label: "memory 63", field: "memory_in_mb") { $0.memoryInMB = 63 },
    Rejection(label: "memory 10_000_000", field: "memory_in_mb") { $0.memoryInMB = 10_000_000 },
    Rejection(label: "vcpu outside a custom policy range", field: "vcpu", policy: SpecPolicy(vcpuRange: 1...4)) { $0.vcpu = 8 },
    Rejection(label: "unknown provider", field: "provider") { $0.provider = "vmware" },
    Rejection(label: "firecracker not installed", field: "provider", code: .failedPrecondition) { $0.provider = "firecracker" },
    Rejection(label: "default provider not installed", field: "provider", code: .failedPrecondition,
              policy: SpecPolicy(defaultProvider: "cloudhypervisor", availableProviders: ["qemu"])) { _ in },
]

let kernelRejections: [Rejection] = [
    Rejection(label: "empty kernel image", field: "kernel.image") { $0.kernel.image = "" },
    Rejection(label: "explicit empty kernel filename", field: "kernel.filename") { $0.kernel.filename = "" },
    Rejection(label: "absolute kernel filename", field: "kernel.filename") { $0.kernel.filename = "/abs/path" },
    Rejection(label: "kernel filename ../etc/passwd", field: "kernel.filename") { $0.kernel.filename = "../etc/passwd" },
    Rejection(label: "kernel filename boot/../x", field: "kernel.filename") { $0.kernel.filename = "boot/../x" },
    Rejection(label: "kernel filename boot//x", field: "kernel.filename") { $0.kernel.filename = "boot//x" },
    Rejection(label: "kernel filename ./boot/x", field: "kernel.filename") { $0.kernel.filename = "./boot/x" },
    Rejection(label: "kernel filename with trailing /", field: "kernel.filename") { $0.kernel.filename = "boot/" },
    Rejection(label: "kernel filename with NUL", field: "kernel.filename") { $0.kernel.filename = "boot/vm\0linuz" },
    Rejection(label: "cmdline key with space", field: "kernel.cmdline") { $0.kernel.cmdline = ["a b": "1"] },
    Rejection(label: "empty cmdline key", field: "kernel.cmdline") { $0.kernel.cmdline = ["": "1"] },
    Rejection(label: "cmdline value with newline", field: "kernel.cmdline[init]") { $0.kernel.cmdline = ["init": "/bin/sh\nrm"] },
    Rejection(label: "initrd with empty image", field: "initrd.image") { $0.initrd = InitrdSpec(image: "") },
    Rejection(label: "initrd with malformed image", field: "initrd.image") { $0.initrd = InitrdSpec(image: "Busybox") },
    Rejection(label: "initrd filename with ..", field: "initrd.filename") { $0.initrd = InitrdSpec(image: "busybox", filename: "../initrd") },
    Rejection(label: "initrd explicit empty filename", field: "initrd.filename") { $0.initrd = InitrdSpec(image: "busybox", filename: "") },
]

let volumeRejections: [Rejection] = [
    Rejection(label: "missing root volume", field: "root_volume") { $0.rootVolume = nil },
    Rejection(label: "root volume without container_source", field: "root_volume.source.container_source") {
        $0.rootVolume = VolumeSpec(id: "root")
    },
    Rejection(label: "root volume with empty container_source", field: "root_volume.source.container_source") {
        $0.rootVolume = VolumeSpec(id: "root", containerSource: "")
    },
    Rejection(label: "root volume with malformed container_source", field: "root_volume.source.container_source") {
        $0.rootVolume = VolumeSpec(id: "root", containerSource: "a//b")
    },
    Rejection(label: "root volume with empty id", field: "root_volume.id") {
        $0.rootVolume = VolumeSpec(id: "", containerSource: "busybox")
    },
    Rejection(label: "virtiofs volume", field: "root_volume.source.virtiofs_source") {
        $0.rootVolume = VolumeSpec(id: "root", containerSource: "busybox", virtiofsSource: "/srv")
    },
    Rejection(label: "relative mount point", field: "additional_volumes[0].mount_point") {
        $0.additionalVolumes = [VolumeSpec(id: "data", mountPoint: "data", containerSource: "busybox")]
    },
    Rejection(label: "mount point /", field: "additional_volumes[0].mount_point") {
        $0.additionalVolumes = [VolumeSpec(id: "data", mountPoint: "/", containerSource: "busybox")]
    },
    Rejection(label: "mount point with ..", field: "additional_volumes[0].mount_point") {
        $0.additionalVolumes = [VolumeSpec(id: "data", mountPoint: "/data/../etc", containerSource: "busybox")]
    },
    Rejection(label: "mount point with a space", field: "additional_volumes[0].mount_point") {
        $0.additionalVolumes = [VolumeSpec(id: "data", mountPoint: "/my data", containerSource: "busybox")]
    },
    Rejection(label: "root volume with a mount point", field: "root_volume.mount_point") {
        $0.rootVolume = VolumeSpec(id: "root", mountPoint: "/data", containerSource: "busybox")
    },
    Rejection(label: "volume with partition", field: "additional_volumes[0].partition_id") {
        $0.additionalVolumes = [VolumeSpec(id: "data", containerSource: "busybox", partitionID: "1")]
    },
    Rejection(label: "volume with negative size", field: "additional_volumes[0].size_in_mb") {
        $0.additionalVolumes = [VolumeSpec(id: "data", containerSource: "busybox", sizeInMB: -1)]
    },
    Rejection(label: "read-only volume with a size", field: "additional_volumes[0].size_in_mb") {
        $0.additionalVolumes = [VolumeSpec(id: "data", isReadOnly: true, containerSource: "busybox", sizeInMB: 2048)]
    },
    Rejection(label: "additional volume reusing the root id", field: "additional_volumes[0].id") {
        $0.additionalVolumes = [VolumeSpec(id: "root", containerSource: "busybox")]
    },
    Rejection(label: "two additional volumes with one id", field: "additional_volumes[1].id") {
        $0.additionalVolumes = [VolumeSpec(id: "data", containerSource: "busybox"), VolumeSpec(id: "data", containerSource: "alpine")]
    },
]

let interfaceRejections: [Rejection] = [
    Rejection(label: "device_id Eth0", field: "interfaces[0].device_id") { $0.interfaces = [tap("Eth0")] },
    Rejection(label: "device_id 0eth", field: "interfaces[0].device_id") { $0.interfaces = [tap("0eth")] },
    Rejection(label: "device_id eth-0", field: "interfaces[0].device_id") { $0.interfaces = [tap("eth-0")] },
    Rejection(label: "empty device_id", field: "interfaces[0].device_id") { $0.interfaces = [tap("")] },
    Rejection(label: "device_id 33 chars", field: "interfaces[0].device_id") { $0.interfaces = [tap(String(repeating: "e", count: 33))] },
    Rejection(label: "duplicate device_id", field: "interfaces[1].device_id") { $0.interfaces = [tap("eth0"), tap("eth0")] },
    Rejection(label: "duplicate guest MAC (case differs)", field: "interfaces[1].guest_mac") {
        $0.interfaces = [tap("eth0", mac: "02:aa:00:00:00:01"), tap("eth1", mac: "02:AA:00:00:00:01")]
    },
    Rejection(label: "multicast MAC", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "01:00:5e:00:00:01")] },
    Rejection(label: "broadcast MAC", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "ff:ff:ff:ff:ff:ff")] },
    Rejection(label: "zero MAC", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "00:00:00:00:00:00")] },
    Rejection(label: "MAC with 5 octets", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "02:00:00:00:01")] },
    Rejection(label: "MAC with 7 octets", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "02:00:00:00:00:01:02")] },
    Rejection(label: "MAC with dashes", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "02-00-00-00-00-01")] },
    Rejection(label: "MAC with non-hex", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "02:00:00:00:00:0g")] },
    Rejection(label: "MAC with 3-digit octet", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "02:00:00:00:00:001")] },
    Rejection(label: "MAC with 1-digit octet", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "2:0:0:0:0:1")] },
    Rejection(label: "empty MAC", field: "interfaces[0].guest_mac") { $0.interfaces = [tap("eth0", mac: "")] },
    Rejection(label: "MACVTAP without --parent-iface", field: "interfaces[0].type", code: .failedPrecondition) {
        $0.interfaces = [NetworkInterfaceSpec(deviceID: "eth0", type: .macvtap)]
    },
    Rejection(label: "MACVTAP with a bridge", field: "interfaces[0].overrides.bridge_name", policy: SpecPolicy(parentInterface: "eno1")) {
        $0.interfaces = [NetworkInterfaceSpec(deviceID: "eth0", type: .macvtap, bridgeName: "br0")]
    },
    Rejection(label: "static address without prefix", field: "interfaces[0].address.address") { $0.interfaces = [tap("eth0", address: "10.0.0.2")] },
    Rejection(label: "static address /33", field: "interfaces[0].address.address") { $0.interfaces = [tap("eth0", address: "10.0.0.2/33")] },
    Rejection(label: "static address 10.0.0.256/24", field: "interfaces[0].address.address") { $0.interfaces = [tap("eth0", address: "10.0.0.256/24")] },
    Rejection(label: "static address with a hostname", field: "interfaces[0].address.address") { $0.interfaces = [tap("eth0", address: "host/24")] },
    Rejection(label: "static address IPv6 /129", field: "interfaces[0].address.address") { $0.interfaces = [tap("eth0", address: "fd00::1/129")] },
    Rejection(label: "gateway outside the subnet", field: "interfaces[0].address.gateway") { $0.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "10.0.1.1")] },
    Rejection(label: "gateway in CIDR form outside the subnet", field: "interfaces[0].address.gateway") { $0.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "10.0.1.1/24")] },
    Rejection(label: "gateway is the address itself", field: "interfaces[0].address.gateway") { $0.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "10.0.0.2")] },
    Rejection(label: "gateway not an IP", field: "interfaces[0].address.gateway") { $0.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "router")] },
    Rejection(label: "IPv6 gateway for an IPv4 address", field: "interfaces[0].address.gateway") { $0.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "fd00::1")] },
    Rejection(label: "nameserver not an IP", field: "interfaces[0].address.nameservers[1]") {
        $0.interfaces = [NetworkInterfaceSpec(deviceID: "eth0", type: .tap, address: StaticAddress(address: "10.0.0.2/24", nameservers: ["1.1.1.1", "dns.example"]), bridgeName: "br0")]
    },
    Rejection(label: "TAP without any bridge", field: "interfaces[0].overrides.bridge_name") {
        $0.interfaces = [tap("eth0", bridge: nil)]
    },
    Rejection(label: "TAP with an empty bridge", field: "interfaces[0].overrides.bridge_name") {
        $0.interfaces = [tap("eth0", bridge: "")]
    },
    Rejection(label: "bridge name of 16 bytes", field: "interfaces[0].overrides.bridge_name") {
        $0.interfaces = [tap("eth0", bridge: String(repeating: "b", count: 16))]
    },
    Rejection(label: "bridge name with ':'", field: "interfaces[0].overrides.bridge_name") { $0.interfaces = [tap("eth0", bridge: "br:0")] },
    Rejection(label: "bridge name with '/'", field: "interfaces[0].overrides.bridge_name") { $0.interfaces = [tap("eth0", bridge: "br/0")] },
    Rejection(label: "bridge name with space", field: "interfaces[0].overrides.bridge_name") { $0.interfaces = [tap("eth0", bridge: "br 0")] },
    Rejection(label: "policy's default bridge too long", field: "interfaces[0].overrides.bridge_name",
              policy: SpecPolicy(defaultBridge: "a-very-long-bridge")) { $0.interfaces = [tap("eth0", bridge: nil)] },
    Rejection(label: "metadata that is not base64", field: "metadata[user-data]") { $0.metadata = ["user-data": "#cloud-config\nruncmd: []"] },
    Rejection(label: "metadata with an unknown document", field: "metadata[userdata]") { $0.metadata = ["userdata": "I2Nsb3VkLWNvbmZpZw=="] },
]

@Suite("MicroVMSpec.normalized: rejections")
struct SpecRejectionTests {
    @Test("names, namespaces and labels", arguments: nameRejections)
    func names(_ r: Rejection) { check(r) }

    @Test("resources and provider", arguments: resourceRejections)
    func resources(_ r: Rejection) { check(r) }

    @Test("kernel and initrd", arguments: kernelRejections)
    func kernel(_ r: Rejection) { check(r) }

    @Test("volumes", arguments: volumeRejections)
    func volumes(_ r: Rejection) { check(r) }

    @Test("network interfaces and metadata", arguments: interfaceRejections)
    func interfaces(_ r: Rejection) { check(r) }

    @Test("malformed kernel image references are rejected with the parser's reason", arguments: [
        "UPPER/case", "a//b", "host:notaport/x", "x@sha256:short", " spaced", "spaced ", "busybox:", "busybox:-tag",
        "/busybox", "busybox/", "a__-b", "x@sha256:" + String(repeating: "A", count: 64),
    ])
    func malformedKernelImage(_ image: String) {
        var s = validSpec()
        s.kernel.image = image
        let error = expectAgentError(.invalidArgument, field: "kernel.image") { _ = try s.normalized(policy: SpecPolicy()) }
        #expect(error?.message.contains("malformed image reference") == true)
    }

    @Test("the provider-not-installed error lists what is available")
    func providerNotInstalledMessage() {
        var s = validSpec()
        s.provider = "firecracker"
        let error = expectAgentError(.failedPrecondition, field: "provider") {
            _ = try s.normalized(policy: SpecPolicy(availableProviders: ["qemu", "cloudhypervisor"]))
        }
        #expect(error?.message.contains("firecracker") == true)
        #expect(error?.message.contains("cloudhypervisor, qemu") == true)
    }

    @Test("validate() on a spec that was not normalized insists on a kernel filename")
    func validateNeedsDefaults() {
        var s = validSpec()
        s.namespace = "default"
        s.vcpu = 1
        s.memoryInMB = 128
        s.provider = "qemu"
        expectAgentError(.invalidArgument, field: "kernel.filename") { try s.validate(policy: SpecPolicy()) }
        s.kernel.filename = "boot/vmlinuz"
        #expect(throws: Never.self) { try s.validate(policy: SpecPolicy()) }
    }

    @Test("AgentError.invalid prefixes the field, description shows the code")
    func agentErrorShape() {
        let e = AgentError.invalid("vcpu", "too many")
        #expect(e == AgentError(.invalidArgument, "vcpu: too many"))
        #expect(e.description == "INVALID_ARGUMENT: vcpu: too many")
    }

    func check(_ r: Rejection, sourceLocation: SourceLocation = #_sourceLocation) {
        var s = validSpec()
        r.mutate(&s)
        expectAgentError(r.code, field: r.field, sourceLocation: sourceLocation) { _ = try s.normalized(policy: r.policy) }
    }
}

// MARK: - Field validators used by the API layer

@Suite("Validate field checks")
struct FieldValidatorTests {
    @Test("well-formed unicast MACs are accepted", arguments: ["02:00:00:00:00:01", "02:AA:BB:CC:DD:EE", "aa:bb:cc:dd:ee:ff", "00:00:00:00:00:01"])
    func goodMACs(_ mac: String) throws {
        try Validate.mac(mac, field: "guest_mac")
    }

    @Test("a MAC octet must be two hex digits, not a signed number", arguments: ["02:00:00:00:00:+1", "02:00:00:00:00:-0", "+2:00:00:00:00:01"])
    func signedOctets(_ mac: String) {
        expectAgentError(.invalidArgument, field: "guest_mac") { try Validate.mac(mac, field: "guest_mac") }
    }

    @Test("interface names: 1-15 ASCII bytes without '/', ':' or spaces", arguments: [
        ("br0", true), ("a", true), (String(repeating: "x", count: 15), true),
        ("", false), (String(repeating: "x", count: 16), false), (".", false), ("..", false),
        ("br/0", false), ("br:0", false), ("br 0", false), ("brü", false),
    ])
    func interfaceNames(name: String, valid: Bool) {
        if valid {
            #expect(throws: Never.self) { try Validate.interfaceName(name, field: "bridge-name") }
        } else {
            expectAgentError(.invalidArgument, field: "bridge-name") { try Validate.interfaceName(name, field: "bridge-name") }
        }
    }

    @Test("object names", arguments: [
        ("vm1", true), ("a", true), ("My_VM-1.prod", true), (String(repeating: "x", count: 63), true),
        ("", false), ("a/b", false), ("..", false), (".", false), ("a..b", false), ("_vm", false), ("vm!", false), ("vmé", false),
    ])
    func objectNames(name: String, valid: Bool) {
        if valid {
            #expect(throws: Never.self) { try Validate.objectName(name, field: "id") }
        } else {
            expectAgentError(.invalidArgument, field: "id") { try Validate.objectName(name, field: "id") }
        }
    }

    @Test("relative filenames inside an image", arguments: [
        ("boot/vmlinuz", true), ("vmlinux", true), ("a/b/c.d", true), ("boot/..hidden", true),
        ("", false), ("/boot/vmlinuz", false), ("..", false), ("boot/./x", false), ("a/", false),
    ])
    func filenames(name: String, valid: Bool) {
        if valid {
            #expect(throws: Never.self) { try Validate.filename(name, field: "kernel.filename") }
        } else {
            expectAgentError(.invalidArgument, field: "kernel.filename") { try Validate.filename(name, field: "kernel.filename") }
        }
    }
}

@Suite("guest network and metadata")
struct GuestNetworkTests {
    let lm0 = AgentNetwork(bridge: "lm0", gateway: IPv4Interface(cidr: "10.200.0.1/24")!)

    @Test("static addresses (IPv4 and IPv6, gateway bare or in CIDR form), metadata and mount points are accepted")
    func accepted() throws {
        var s = validSpec()
        s.interfaces = [tap("eth0", address: "10.0.0.2/24", gateway: "10.0.0.1"), tap("eth1", address: "10.0.1.2/24", gateway: "10.0.1.1/24"),
                        tap("eth2", address: "fd00::2/64", gateway: "fd00::1"), tap("eth3")]
        s.kernel.addNetworkConfig = true
        s.metadata = ["meta-data": Data("local-hostname: n1\n".utf8).base64EncodedString(), "user-data": ""]
        s.additionalVolumes = [VolumeSpec(id: "data", isReadOnly: true, mountPoint: "/data", containerSource: "busybox")]
        #expect(throws: Never.self) { _ = try s.normalized(policy: SpecPolicy()) }
    }

    @Test("address claims: TAPs on the agent's bridge without an address are allocated; static ones inside the subnet are fixed claims")
    func claims() throws {
        var s = validSpec()
        s.interfaces = [tap("eth0", bridge: nil), tap("eth1", bridge: "lm0", address: "10.200.0.50/24"), tap("eth2", bridge: "lm0", address: "192.168.9.9/24"),
                        tap("eth3", bridge: "other")]
        let policy = SpecPolicy(defaultBridge: "lm0", agentNetwork: lm0)
        let n = try s.normalized(policy: policy)
        let claims = n.addressClaims(policy: policy)
        #expect(claims.map(\.deviceID) == ["eth0", "eth1"])
        #expect(claims[0].fixed == nil && claims[1].fixed == IPv4Address("10.200.0.50"))
        #expect(n.addressClaims(policy: SpecPolicy(defaultBridge: "lm0")).isEmpty, "no agent network, no claims")
    }

    @Test("static addresses in the agent's subnet: a host address with the subnet's prefix; one parser for the claim and the check")
    func agentSubnetAddresses() throws {
        let policy = SpecPolicy(defaultBridge: "lm0", agentNetwork: lm0)
        for (bad, why) in [("10.200.0.0/24", "network or broadcast"), ("10.200.0.255/24", "network or broadcast"), ("10.200.0.9/16", "use its prefix")] {
            var s = validSpec()
            s.interfaces = [tap("eth0", bridge: "lm0", address: bad)]
            #expect {
                _ = try s.normalized(policy: policy)
            } throws: { e in
                (e as? AgentError)?.message.contains("interfaces[0].address.address") == true && (e as? AgentError)?.message.contains(why) == true
            }
        }
        #expect(IPText.cidr("10.200.0.5/024") == nil && IPv4Interface(cidr: "10.200.0.5/024") == nil, "a prefix with a leading zero is refused by both")
        #expect(IPText.cidr("10.200.0.5/24")?.prefix == 24 && IPText.cidr("fd00::1/064") == nil)
    }

    @Test("IPv4 parsing: interfaces, subnets, host ranges")
    func ipv4() {
        #expect(IPv4Address("10.0.0.1")?.value == 0x0a00_0001)
        for bad in ["10.0.0", "10.0.0.01", "256.0.0.1", "a.b.c.d", "10.0.0.1 ", ""] { #expect(IPv4Address(bad) == nil, "\(bad)") }
        let i = IPv4Interface(cidr: "10.200.0.1/24")!
        #expect(i.networkCIDR == "10.200.0.0/24" && i.broadcast.description == "10.200.0.255")
        #expect(i.hostAddresses == 0x0ac8_0001...0x0ac8_00fe)
        #expect(i.contains(IPv4Address("10.200.0.77")!) && !i.contains(IPv4Address("10.200.1.1")!))
        #expect(IPv4Interface(cidr: "10.0.0.1/33") == nil && IPv4Interface(cidr: "10.0.0.1") == nil)
        #expect(IPText.isIPv6("fd00::1") && !IPText.isIPv6("10.0.0.1") && IPText.cidr("fd00::1/64")?.v6 == true)
    }

    @Test("guest disk names follow the attach order")
    func diskNames() {
        #expect((0..<4).map(guestDiskName(index:)) == ["vda", "vdb", "vdc", "vdd"])
        #expect(guestDiskName(index: 26) == "vdaa")
    }
}
