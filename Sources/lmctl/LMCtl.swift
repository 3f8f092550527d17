import AgentClient
import ArgumentParser
import FlintlockAPI
import Foundation
import GRPCCore

/// lmctl: the Liquid Metal command line for host agents.
@main
struct LMCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lmctl",
        abstract: "Create, inspect, watch and delete microVMs on a Liquid Metal (or Flintlock) host agent.",
        subcommands: [Create.self, Get.self, List.self, Delete.self, Watch.self, Logs.self, Capacity.self, ImageCommand.self])
}

struct AgentOptions: ParsableArguments {
    @Option(help: "Agent address: host:port or unix:///path. (default: $LMCTL_HOST or localhost:9090)")
    var host: String?
    @Option(help: "Basic-auth token the agent was started with. (default: $LMCTL_TOKEN)")
    var token: String?
    @Flag(help: "Connect with TLS (implied by --tls-ca or --tls-cert).")
    var tls = false
    @Option(name: .customLong("tls-ca"), help: "PEM CA that signed the agent's certificate (default: the system's trust roots).")
    var tlsCA: String?
    @Option(name: .customLong("tls-cert"), help: "PEM client certificate, for agents run with --tls-client-validate.")
    var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "PEM key for --tls-cert.")
    var tlsKey: String?
    @Option(help: "Reach the agent through this HTTP proxy (CONNECT): http://[user:password@]host:port. TLS stays end to end with the agent. (default: $LMCTL_PROXY)")
    var proxy: String?

    func client() throws -> AgentClient {
        let env = ProcessInfo.processInfo.environment
        var options: AgentClient.TLSOptions?
        if tls || tlsCA != nil || tlsCert != nil {
            guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
            options = AgentClient.TLSOptions(caCertificate: tlsCA, clientCertificate: tlsCert, clientKey: tlsKey)
        }
        let proxy = try (proxy ?? env["LMCTL_PROXY"]).flatMap { $0.isEmpty ? nil : try HTTPConnectProxy(endpoint: $0) }
        return try AgentClient(address: host ?? env["LMCTL_HOST"] ?? "localhost:9090", token: token ?? env["LMCTL_TOKEN"], tls: options, proxy: proxy)
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, yaml
}

/// Runs a command against the agent, printing RPC errors as "code: message".
func withAgent(_ options: AgentOptions, _ body: (AgentClient) async throws -> Void) async throws {
    let client = try options.client()
    defer { client.close() }
    do {
        try await body(client)
    } catch let e as RPCError {
        var msg = "\(e.code): \(e.message)"
        if e.code == .unavailable { msg += " (is flintlockd running at \(client.address)?)" }
        throw CommandFailed(description: msg)
    }
}

struct CommandFailed: Error, CustomStringConvertible {
    var description: String
}

func printVMs(_ vms: [Flintlock_Types_MicroVM], _ format: OutputFormat) throws {
    switch format {
    case .json:
        let list = Microvm_Services_Api_V1alpha1_ListMicroVMsResponse.with { $0.microvm = vms }
        print(vms.count == 1 ? try SpecDocuments.json(vms[0]) : try SpecDocuments.json(list))
    case .yaml:
        for vm in vms { print("---\n" + (try SpecDocuments.yaml(vm))) }
    case .table:
        let rows = vms.map { vm -> [String] in
            let age = vm.spec.hasCreatedAt ? ageString(vm.spec.createdAt.date) : "-"
            return [vm.spec.namespace, vm.spec.id, vm.spec.uid, "\(vm.status.state)".uppercased(), "\(vm.spec.vcpu)", "\(vm.spec.memoryInMb)", age,
                    vm.status.failureReason.isEmpty ? "" : String(vm.status.failureReason.prefix(60))]
        }
        printTable(["NAMESPACE", "NAME", "UID", "STATE", "VCPU", "MEMORY", "AGE", "LAST FAILURE"], rows)
    }
}

func ageString(_ d: Date) -> String {
    let s = Int(Date().timeIntervalSince(d))
    if s < 120 { return "\(s)s" }
    if s < 7200 { return "\(s / 60)m" }
    if s < 172_800 { return "\(s / 3600)h" }
    return "\(s / 86400)d"
}

func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    for r in [header] + rows {
        print(r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  "))
    }
}

func parsePairs(_ items: [String], option: String) throws -> [String: String] {
    var out: [String: String] = [:]
    for item in items {
        if let eq = item.firstIndex(of: "=") {
            out[String(item[..<eq])] = String(item[item.index(after: eq)...])
        } else {
            out[item] = ""
        }
    }
    return out
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a microVM from a spec file or from flags.",
        discussion: """
            The spec file (-f, JSON or YAML) is a flintlock.types.MicroVMSpec with the API's field names, e.g.:
              id: demo
              namespace: default
              vcpu: 1
              memory_in_mb: 256
              kernel: {image: "127.0.0.1:5111/lm-test/kernel:latest", filename: boot/vmlinuz}
              initrd: {image: "127.0.0.1:5111/lm-test/kernel:latest", filename: boot/initrd}
              root_volume: {id: root, source: {container_source: "127.0.0.1:5111/lm-test/root:latest"}}
              interfaces: [{device_id: eth0, type: TAP, overrides: {bridge_name: lmbr0}}]
            Flags given together with -f override the file's values.
            Guest configuration (cloud-init, from a NoCloud seed disk the agent attaches):
              --hostname node-1 --ssh-key-file ~/.ssh/id_ed25519.pub   a hostname and a sudo user "lm" with that key
              --user-data-file init.yaml                                your own user-data (#cloud-config when --ssh-key-file is also given: the key is added to it)
              --tap eth0:lmbr0 --address eth0=10.0.0.5/24,10.0.0.1,1.1.1.1 --add-network-config
              --volume data,127.0.0.1:5111/lm/data:latest,/data         an extra disk from an image, mounted at /data
            """)
    @OptionGroup var agent: AgentOptions
    @Option(name: .shortAndLong, help: "Spec file (JSON or YAML); - reads standard input.")
    var file: String?
    @Option(help: "VM name (the API's id).") var name: String?
    @Option(help: "Namespace. (default: default)") var namespace: String?
    @Option(help: "vCPUs. (default: 2)") var vcpu: Int?
    @Option(help: "Memory in MiB. (default: 1024)") var memory: Int?
    @Option(name: .customLong("kernel-image"), help: "OCI image holding the kernel.") var kernelImage: String?
    @Option(name: .customLong("kernel-filename"), help: "Kernel path inside the image. (default: boot/vmlinuz for qemu)") var kernelFilename: String?
    @Option(name: .customLong("initrd-image"), help: "OCI image holding the initrd.") var initrdImage: String?
    @Option(name: .customLong("initrd-filename"), help: "Initrd path inside the image. (default: boot/initrd)") var initrdFilename: String?
    @Option(name: .customLong("root-image"), help: "OCI image for the root volume.") var rootImage: String?
    @Option(name: .customLong("cmdline"), help: "Kernel command line entry key=value or a bare flag (repeatable).") var cmdline: [String] = []
    @Option(name: .customLong("tap"), help: "Add a TAP interface: DEVICE_ID[:BRIDGE[:MAC]] (repeatable).") var taps: [String] = []
    @Option(name: .customLong("macvtap"), help: "Add a MACVTAP interface on the agent's --parent-iface: DEVICE_ID[:MAC] (repeatable).") var macvtaps: [String] = []
    @Option(name: .customLong("address"), help: "Static address of an interface: DEVICE_ID=ADDR/PREFIX[,GATEWAY[,NAMESERVER...]] (repeatable).") var addresses: [String] = []
    @Flag(name: .customLong("add-network-config"), help: "Have the agent write cloud-init network-config for the interfaces (static addresses, else DHCP).") var addNetworkConfig = false
    @Option(name: .customLong("volume"), help: "Add a volume from an image: ID,IMAGE[,MOUNT_POINT][,ro] (repeatable; mounted by cloud-init).") var volumes: [String] = []
    @Option(help: "Guest hostname (meta-data local-hostname).") var hostname: String?
    @Option(name: .customLong("ssh-key-file"), help: "Public key file (authorized_keys format) for --ssh-user (repeatable).") var sshKeyFiles: [String] = []
    @Option(name: .customLong("ssh-user"), help: "User cloud-init creates with passwordless sudo and the --ssh-key-file keys.") var sshUser = "lm"
    @Option(name: .customLong("user-data-file"), help: "cloud-init user-data (e.g. #cloud-config).") var userDataFile: String?
    @Option(name: .customLong("meta-data-file"), help: "cloud-init meta-data (YAML).") var metaDataFile: String?
    @Option(name: .customLong("vendor-data-file"), help: "cloud-init vendor-data.") var vendorDataFile: String?
    @Option(name: .customLong("network-config-file"), help: "cloud-init network-config (wins over --add-network-config).") var networkConfigFile: String?
    @Option(name: .customLong("label"), help: "Label key=value (repeatable).") var labels: [String] = []
    @Option(help: "VMM provider. (default: the agent's)") var provider: String?
    @Option(name: .shortAndLong, help: "Output: table, json or yaml.") var output: OutputFormat = .table

    func run() async throws {
        var spec = Flintlock_Types_MicroVMSpec()
        if let file {
            let text = file == "-" ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) : try String(contentsOfFile: file, encoding: .utf8)
            spec = try SpecDocuments.spec(from: text)
        }
        if let name { spec.id = name }
        if let namespace { spec.namespace = namespace }
        if let vcpu { spec.vcpu = Int32(vcpu) }
        if let memory { spec.memoryInMb = Int32(memory) }
        if let kernelImage { spec.kernel.image = kernelImage }
        if let kernelFilename { spec.kernel.filename = kernelFilename }
        if let initrdImage { spec.initrd.image = initrdImage }
        if let initrdFilename { spec.initrd.filename = initrdFilename }
        if let rootImage {
            spec.rootVolume.id = spec.rootVolume.id.isEmpty ? "root" : spec.rootVolume.id
            spec.rootVolume.source.containerSource = rootImage
        }
        for (k, v) in try parsePairs(cmdline, option: "cmdline") { spec.kernel.cmdline[k] = v }
        for (k, v) in try parsePairs(labels, option: "label") { spec.labels[k] = v }
        if let provider { spec.provider = provider }
        for t in taps {
            let parts = t.split(separator: ":", maxSplits: 2).map(String.init)
            spec.interfaces.append(.with {
                $0.deviceID = parts[0]
                $0.type = .tap
                if parts.count > 1, !parts[1].isEmpty { $0.overrides.bridgeName = parts[1] }
                if parts.count > 2 { $0.guestMac = parts[2] }
            })
        }
        for m in macvtaps {
            let parts = m.split(separator: ":", maxSplits: 1).map(String.init)
            spec.interfaces.append(.with {
                $0.deviceID = parts[0]
                $0.type = .macvtap
                if parts.count > 1 { $0.guestMac = parts[1] }
            })
        }
        for a in addresses {
            guard let eq = a.firstIndex(of: "=") else { throw ValidationError("--address \(a): expected DEVICE_ID=ADDR/PREFIX[,GATEWAY[,NAMESERVER...]]") }
            let device = String(a[..<eq])
            // Empty fields keep their place: "eth0=10.0.0.5/24,,1.1.1.1" has no gateway and one nameserver.
            let fields = a[a.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard let address = fields.first, !address.isEmpty else {
                throw ValidationError("--address \(a): expected DEVICE_ID=ADDR/PREFIX[,GATEWAY[,NAMESERVER...]]")
            }
            guard let i = spec.interfaces.firstIndex(where: { $0.deviceID == device }) else {
                throw ValidationError("--address \(a): no interface \(device) (add it with --tap or --macvtap)")
            }
            spec.interfaces[i].address = .with {
                $0.address = address
                if fields.count > 1, !fields[1].isEmpty { $0.gateway = fields[1] }
                $0.nameservers = fields.dropFirst(2).filter { !$0.isEmpty }
            }
        }
        if addNetworkConfig { spec.kernel.addNetworkConfig = true }
        for v in volumes {
            let f = v.split(separator: ",").map(String.init)
            guard f.count >= 2, f.count <= 4 else { throw ValidationError("--volume \(v): expected ID,IMAGE[,MOUNT_POINT][,ro]") }
            spec.additionalVolumes.append(.with {
                $0.id = f[0]
                $0.source.containerSource = f[1]
                for extra in f.dropFirst(2) {
                    if extra == "ro" { $0.isReadOnly = true } else { $0.mountPoint = extra }
                }
            })
        }
        do {
            for (key, path) in [("meta-data", metaDataFile), ("user-data", userDataFile), ("vendor-data", vendorDataFile), ("network-config", networkConfigFile)] {
                guard let path else { continue }
                guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path) (--\(key)-file)") }
                GuestMetadata.setDocument(key, data, in: &spec)
            }
            if let hostname { try GuestMetadata.setHostname(hostname, in: &spec) }
            if !sshKeyFiles.isEmpty {
                try GuestMetadata.addUser(sshUser, sshKeys: try sshKeyFiles.flatMap(GuestMetadata.sshKeys(fromFile:)), in: &spec)
            }
        } catch let e as GuestMetadata.Failure {
            throw ValidationError(e.description)
        }
        guard file != nil || name != nil else { throw ValidationError("give a spec file with -f or at least --name and the images") }
        let s = spec
        try await withAgent(agent) { client in
            let vm = try await client.create(s)
            try printVMs([vm], output)
        }
    }
}

/// The VM `ref` names: a uid, or else a name in `namespace` (as kubectl users expect).
func resolveVM(_ client: AgentClient, _ ref: String, namespace: String) async throws -> Flintlock_Types_MicroVM {
    if ref.count == 26, ref.allSatisfy({ $0.isASCII && ($0.isUppercase || $0.isNumber) }) {
        do { return try await client.get(uid: ref) } catch let e as RPCError where e.code == .notFound {}
    }
    let named = try await client.list(namespace: namespace, name: ref)
    switch named.count {
    case 1: return named[0]
    case 0: throw CommandFailed(description: "microVM \"\(ref)\" not found in namespace \"\(namespace)\" (give its uid, or its name with --namespace)")
    default: throw CommandFailed(description: "\(named.count) microVMs are named \"\(ref)\" in namespace \"\(namespace)\" (\(named.map(\.spec.uid).joined(separator: ", "))); give the uid")
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one microVM.")
    @OptionGroup var agent: AgentOptions
    @Argument(help: "The VM's uid, or its name in --namespace.") var vm: String
    @Option(help: "Namespace of a VM given by name. (default: default)") var namespace = "default"
    @Option(name: .shortAndLong, help: "Output: table, json or yaml.") var output: OutputFormat = .yaml
    func run() async throws {
        try await withAgent(agent) { try printVMs([try await resolveVM($0, vm, namespace: namespace)], output) }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List microVMs (all namespaces unless --namespace).")
    @OptionGroup var agent: AgentOptions
    @Option(help: "Only this namespace.") var namespace: String = ""
    @Option(help: "Only VMs with this name.") var name: String?
    @Option(name: .shortAndLong, help: "Output: table, json or yaml.") var output: OutputFormat = .table
    func run() async throws {
        try await withAgent(agent) { try printVMs(try await $0.list(namespace: namespace, name: name), output) }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a microVM (asynchronous: it turns DELETING, then disappears).")
    @OptionGroup var agent: AgentOptions
    @Argument(help: "The VM's uid, or its name in --namespace.") var vm: String
    @Option(help: "Namespace of a VM given by name. (default: default)") var namespace = "default"
    @Flag(help: "Wait until the VM is gone.") var wait = false
    func run() async throws {
        try await withAgent(agent) { client in
            let uid = try await resolveVM(client, vm, namespace: namespace).spec.uid
            try await client.delete(uid: uid)
            print("deleting \(uid)")
            guard wait else { return }
            while true {
                do { _ = try await client.get(uid: uid) } catch let e as RPCError where e.code == .notFound {
                    print("deleted \(uid)")
                    return
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }
}

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the current microVMs, then every change, until interrupted.")
    @OptionGroup var agent: AgentOptions
    @Option(help: "Only this namespace.") var namespace: String = ""
    func run() async throws {
        try await withAgent(agent) { client in
            try await client.watch(namespace: namespace) { e in
                let line: String
                if e.type == .synced {
                    line = "-- synced; watching for changes --"
                } else {
                    let vm = e.microvm
                    line = "\("\(e.type)".uppercased())\t\(vm.spec.namespace)/\(vm.spec.id)\t\(vm.spec.uid)\t\("\(vm.status.state)".uppercased())\tv\(vm.version)\t\(vm.status.failureReason)"
                }
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
                return true
            }
        }
    }
}

struct Capacity: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the host's capacity and what its microVMs take.")
    @OptionGroup var agent: AgentOptions
    @Option(name: .shortAndLong, help: "Output: table, json or yaml.") var output: OutputFormat = .table
    func run() async throws {
        try await withAgent(agent) { client in
            let c = try await client.capacity()
            switch output {
            case .json: print(try SpecDocuments.json(c))
            case .yaml: print(try SpecDocuments.yaml(c), terminator: "")
            case .table:
                print("""
                    host        \(c.hostname) (agent \(c.agentVersion); \(c.providers.joined(separator: ", ")), \(c.accelerator))
                    vCPUs       \(c.vcpus) total, \(c.allocatedVcpus) allocated, \(c.freeVcpus) free
                    memory      \(c.memoryMb) MiB total, \(c.allocatedMemoryMb) MiB allocated, \(c.freeMemoryMb) MiB free (\(c.memoryAvailableMb) MiB available now)
                    microVMs    \(c.microvms)
                    """)
            }
        }
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a microVM's serial console output.")
    @OptionGroup var agent: AgentOptions
    @Argument(help: "The VM's uid, or its name in --namespace.") var vm: String
    @Option(help: "Namespace of a VM given by name. (default: default)") var namespace = "default"
    @Flag(name: .shortAndLong, help: "Keep printing new output.") var follow = false
    @Option(help: "Only the last N bytes.") var tail: Int64 = 0
    func run() async throws {
        try await withAgent(agent) { client in
            let uid = try await resolveVM(client, vm, namespace: namespace).spec.uid
            try await client.consoleLog(uid: uid, tailBytes: tail, follow: follow) { data in
                FileHandle.standardOutput.write(data)
                return true
            }
        }
    }
}

