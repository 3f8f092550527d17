import CAPMVMAPI
import Foundation
import KubernetesClient
import Testing
import Yams

/// YAML (as users write manifests) to the JSON the API server stores.
func json(_ yaml: String) throws -> Data {
    try JSONSerialization.data(withJSONObject: try #require(try Yams.load(yaml: yaml)))
}

@Suite("capmvm API types")
struct CAPMVMAPITests {
    @Test("a CAPMVM MicrovmMachine manifest decodes with CAPMVM's field names, and encodes back to them")
    func microvmMachine() throws {
        let m = try JSONDecoder().decode(MicrovmMachine.self, from: try json("""
            apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
            kind: MicrovmMachine
            metadata: {name: cp-0, namespace: default, labels: {cluster.x-k8s.io/cluster-name: mvm}}
            spec:
              vcpu: 2
              memoryMb: 2048
              rootVolume: {id: root, image: "ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5"}
              kernel: {image: "ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77", filename: boot/vmlinux}
              kernelCmdline: {console: ttyS0}
              initrd: {image: "ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77", filename: initrd-generic}
              networkInterfaces:
              - {guestDeviceName: eth0, type: macvtap}
              - {guestDeviceName: eth1, type: tap, address: {address: 169.254.0.1/16}}
              sshPublicKeys: [{user: root, authorizedKeys: ["ssh-ed25519 AAAA"]}]
              providerID: microvm://192.168.1.10:9090/01ABC
            status: {ready: true, vmState: running, addresses: [{type: InternalIP, address: 10.0.0.5}]}
            """))
        #expect(m.spec.memoryMb == 2048 && m.spec.networkInterfaces.map(\.type) == ["macvtap", "tap"])
        #expect(m.spec.networkInterfaces[1].address?.address == "169.254.0.1/16")
        #expect(m.status?.addresses == [MachineAddress(type: "InternalIP", address: "10.0.0.5")])
        let back = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(m)) as? [String: Any])
        let spec = try #require(back["spec"] as? [String: Any])
        #expect(Set(spec.keys).isSuperset(of: ["vcpu", "memoryMb", "rootVolume", "kernel", "kernelCmdline", "initrd", "networkInterfaces", "providerID", "sshPublicKeys"]))
        #expect(MicrovmMachine.resource.path(namespace: "default", name: "cp-0", subresource: "status")
                == "/apis/infrastructure.cluster.x-k8s.io/v1alpha1/namespaces/default/microvmmachines/cp-0/status")
    }

    @Test("a MicrovmCluster with a static pool, and one with a dynamic pool")
    func microvmCluster() throws {
        let c = try JSONDecoder().decode(MicrovmCluster.self, from: try json("""
            apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
            kind: MicrovmCluster
            metadata: {name: mvm, namespace: default}
            spec:
              controlPlaneEndpoint: {host: 192.168.1.100, port: 6443}
              placement:
                staticPool:
                  basicAuthSecret: mvm-auth
                  hosts: [{endpoint: "192.168.1.10:9090", controlplaneAllowed: true}, {endpoint: "192.168.1.11:9090"}]
            status: {ready: true, failureDomains: {"192.168.1.10:9090": {controlPlane: true}}}
            """))
        #expect(c.spec.placement.staticPool?.hosts.map(\.endpoint) == ["192.168.1.10:9090", "192.168.1.11:9090"])
        #expect(c.spec.placement.staticPool?.basicAuthSecret == "mvm-auth" && c.status?.failureDomains?.byName["192.168.1.10:9090"]?.controlPlane == true)
        let d = try JSONDecoder().decode(MicrovmCluster.self, from: try json("""
            metadata: {name: mvm2}
            spec: {placement: {dynamicPool: {hostSelector: {site: edge-1}}}}
            """))
        #expect(d.spec.placement.dynamicPool?.hostSelector == ["site": "edge-1"] && d.spec.placement.staticPool == nil)
    }

    @Test("the Cluster API objects capmvm reads: Machine (bootstrap secret, failure domain, control-plane label), Cluster, Secret")
    func clusterAPI() throws {
        let m = try JSONDecoder().decode(Machine.self, from: try json("""
            apiVersion: cluster.x-k8s.io/v1beta1
            kind: Machine
            metadata: {name: cp-0, namespace: default, labels: {cluster.x-k8s.io/cluster-name: mvm, cluster.x-k8s.io/control-plane: ""}}
            spec:
              clusterName: mvm
              version: v1.31.0
              failureDomain: "192.168.1.10:9090"
              bootstrap: {dataSecretName: cp-0-bootstrap, configRef: {kind: KubeadmConfig, name: cp-0}}
              infrastructureRef: {apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1, kind: MicrovmMachine, name: cp-0}
            status: {phase: Provisioning}
            """))
        #expect(m.isControlPlane && m.spec.bootstrap.dataSecretName == "cp-0-bootstrap" && m.spec.failureDomain == "192.168.1.10:9090")
        let c = try JSONDecoder().decode(Cluster.self, from: try json("""
            metadata: {name: mvm}
            spec: {controlPlaneEndpoint: {host: 192.168.1.100, port: 6443}, infrastructureRef: {kind: MicrovmCluster, name: mvm}}
            status: {infrastructureReady: true}
            """))
        #expect(c.status?.infrastructureReady == true && c.spec?.controlPlaneEndpoint?.port == 6443)
        let s = try JSONDecoder().decode(Secret.self, from: try json("""
            metadata: {name: cp-0-bootstrap}
            type: cluster.x-k8s.io/secret
            data: {value: \(Data("#cloud-config\n".utf8).base64EncodedString()), format: \(Data("cloud-config".utf8).base64EncodedString())}
            """))
        #expect(s.data?["value"] == Data("#cloud-config\n".utf8) && s.data?["format"] == Data("cloud-config".utf8))
    }
}

/// The CRD manifests under config/crd/bases agree with the Swift types: every field the types write
/// is in the schema, and the names, defaults and rules CAPMVM users rely on are there.
@Suite("CRD manifests")
struct CRDManifestTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/crd/bases").path

    func crd(_ plural: String) throws -> [String: Any] {
        let text = try String(contentsOfFile: "\(Self.directory)/infrastructure.cluster.x-k8s.io_\(plural).yaml", encoding: .utf8)
        return try #require(try Yams.load(yaml: text) as? [String: Any])
    }

    func schema(_ crd: [String: Any]) throws -> [String: Any] {
        let versions = try #require((crd["spec"] as? [String: Any])?["versions"] as? [[String: Any]])
        return try #require((versions.first?["schema"] as? [String: Any])?["openAPIV3Schema"] as? [String: Any])
    }

    /// Paths of `value` (encoded JSON) missing from `schema`.
    func missing(_ value: Any, _ schema: [String: Any], path: String = "") -> [String] {
        if let object = value as? [String: Any] {
            if path.hasSuffix(".metadata") || path == "metadata" { return [] }  // ObjectMeta is the API server's
            if schema["x-kubernetes-preserve-unknown-fields"] as? Bool == true && schema["properties"] == nil { return [] }
            if let props = schema["properties"] as? [String: Any] {
                return object.flatMap { k, v -> [String] in
                    guard let s = props[k] as? [String: Any] else { return ["\(path).\(k)"] }
                    return missing(v, s, path: "\(path).\(k)")
                }
            }
            if let extra = schema["additionalProperties"] as? [String: Any] {
                return object.flatMap { k, v in missing(v, extra, path: "\(path)[\(k)]") }
            }
            return schema["type"] as? String == "object" ? [] : ["\(path) (not an object in the schema)"]
        }
        if value is [Any], schema["x-kubernetes-preserve-unknown-fields"] as? Bool == true && schema["type"] == nil { return [] }
        if let array = value as? [Any], let items = schema["items"] as? [String: Any] {
            return array.flatMap { missing($0, items, path: "\(path)[]") }
        }
        return []
    }

    func encoded(_ v: some Encodable) throws -> Any { try JSONSerialization.jsonObject(with: JSONEncoder().encode(v)) }

    static var fullMachineSpec: MicrovmMachine.Spec {
        var s = MicrovmMachine.Spec(vcpu: 2, memoryMb: 2048, rootVolume: .init(id: "root", image: "i", readOnly: true, mountPoint: "/x"),
                                    kernel: .init(image: "k", filename: "boot/vmlinux"), initrd: .init(image: "k", filename: "boot/initrd"),
                                    networkInterfaces: [.init(guestDeviceName: "eth0", guestMac: "02:00:00:00:00:01", type: "tap", address: .init(address: "10.0.0.2/24", gateway: "10.0.0.1", nameservers: ["1.1.1.1"]))],
                                    providerID: "microvm://h:9090/u")
        s.provider = "qemu"
        s.volumes = [.init(id: "data", image: "d", readOnly: false, mountPoint: "/data")]
        s.kernelCmdline = ["console": "ttyS0"]
        s.labels = ["a": "b"]
        s.sshPublicKeys = [SSHPublicKey(user: "root", authorizedKeys: ["k"])]
        return s
    }

    @Test("every field the Swift types write is in the CRD schemas")
    func fieldsMatch() throws {
        var machine = MicrovmMachine(metadata: ObjectMeta(name: "m"), spec: Self.fullMachineSpec)
        var st = MicrovmMachine.Status()
        st.ready = true; st.vmState = "running"; st.addresses = [MachineAddress(type: "InternalIP", address: "10.0.0.2")]
        st.failureReason = "r"; st.failureMessage = "m"; st.conditions = [Condition(type: "MicrovmReady", status: "True", severity: "Info", reason: "x", message: "y", lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1)]
        st.initialization = Initialization(provisioned: true)
        machine.status = st
        let cluster = MicrovmCluster(metadata: ObjectMeta(name: "c"), spec: .init(
            controlPlaneEndpoint: APIEndpoint(host: "h", port: 6443), sshPublicKeys: [SSHPublicKey(user: "root", authorizedKeys: ["k"])],
            placement: .init(staticPool: .init(hosts: [.init(name: "h1", endpoint: "h:9090", controlplaneAllowed: true)], basicAuthSecret: "s"), dynamicPool: .init(hostSelector: ["a": "b"])),
            tlsSecretRef: "t"), status: .init(ready: true, conditions: [Condition(type: "Ready", status: "True")], failureDomains: .map(["h:9090": .init(controlPlane: true, attributes: ["a": "b"])])))
        var hostStatus = MicrovmHost.Status()
        hostStatus.reachable = true; hostStatus.agentVersion = "0.2.0"; hostStatus.vcpus = 2; hostStatus.memoryMb = 1; hostStatus.microvms = 1
        hostStatus.allocatedVcpus = 1; hostStatus.allocatedMemoryMb = 1; hostStatus.freeVcpus = 1; hostStatus.freeMemoryMb = 1; hostStatus.lastProbeTime = "2026-01-01T00:00:00Z"
        hostStatus.conditions = [Condition(type: "Reachable", status: "True")]
        let host = MicrovmHost(metadata: ObjectMeta(name: "h"), spec: .init(endpoint: "h:9090", failureDomain: "rack-a", controlplaneAllowed: false, credentialsRef: LocalObjectReference(name: "s")), status: hostStatus)
        let template = MicrovmMachineTemplate(metadata: ObjectMeta(name: "t"), spec: .init(template: .init(metadata: ObjectMeta(name: "x"), spec: Self.fullMachineSpec)))
        var cluster2 = cluster
        cluster2.status?.failureDomains = .list([.init(name: "h:9090", controlPlane: true, attributes: ["a": "b"])])
        cluster2.status?.initialization = Initialization(provisioned: true)
        for (plural, value) in [("microvmmachines", try encoded(machine)), ("microvmclusters", try encoded(cluster)), ("microvmclusters", try encoded(cluster2)), ("microvmhosts", try encoded(host)),
                                ("microvmmachinetemplates", try encoded(template))] {
            let gaps = missing(value, try schema(try crd(plural)))
            #expect(gaps.isEmpty, "\(plural): \(gaps)")
        }
        // The check itself finds a field the schema lacks.
        #expect(missing(["spec": ["vcpu": 1, "bogus": true]], try schema(try crd("microvmmachines"))) == [".spec.bogus"])
    }

    @Test("names, short names, categories, status subresources, CAPMVM's defaults and minimums, CEL rules")
    func contract() throws {
        for (plural, kind, short, status) in [("microvmclusters", "MicrovmCluster", "mvmc", true), ("microvmmachines", "MicrovmMachine", "mvm", true),
                                              ("microvmmachinetemplates", "MicrovmMachineTemplate", "mvmmt", false), ("microvmhosts", "MicrovmHost", "mvmh", true),
                                              ("microvmclustertemplates", "MicrovmClusterTemplate", "mvmct", false)] {
            let c = try crd(plural)
            let spec = try #require(c["spec"] as? [String: Any])
            #expect(spec["group"] as? String == "infrastructure.cluster.x-k8s.io" && spec["scope"] as? String == "Namespaced")
            let names = try #require(spec["names"] as? [String: Any])
            #expect(names["kind"] as? String == kind && names["plural"] as? String == plural && (names["shortNames"] as? [String]) == [short])
            #expect((names["categories"] as? [String]) == ["cluster-api"])
            let version = try #require((spec["versions"] as? [[String: Any]])?.first)
            #expect(version["name"] as? String == "v1alpha1" && version["storage"] as? Bool == true)
            #expect((version["subresources"] != nil) == status, "\(plural) status subresource")
            let labels = (c["metadata"] as? [String: Any])?["labels"] as? [String: String]
            #expect(labels?["cluster.x-k8s.io/v1beta1"] == "v1alpha1" && labels?["cluster.x-k8s.io/v1beta2"] == "v1alpha1", "the contract labels: both contracts, served by v1alpha1")
        }
        let m = try schema(try crd("microvmmachines"))
        let mspec = try #require((m["properties"] as? [String: Any])?["spec"] as? [String: Any])
        let mprops = try #require(mspec["properties"] as? [String: [String: Any]])
        #expect(mprops["memoryMb"]?["minimum"] as? Int == 1024 && mprops["vcpu"]?["minimum"] as? Int == 1)
        #expect(mprops["networkInterfaces"]?["minItems"] as? Int == 1)
        #expect((mprops["kernel"]?["x-kubernetes-validations"] as? [[String: String]])?.first?["rule"] == "self == oldSelf", "spec fields are immutable")
        #expect(Set(mspec["required"] as? [String] ?? []) == ["vcpu", "memoryMb", "rootVolume", "kernel", "networkInterfaces"])
        let c = try schema(try crd("microvmclusters"))
        let placement = try #require((((c["properties"] as? [String: Any])?["spec"] as? [String: Any])?["properties"] as? [String: Any])?["placement"] as? [String: Any])
        #expect((placement["x-kubernetes-validations"] as? [[String: String]])?.first?["rule"] == "has(self.staticPool) != has(self.dynamicPool)")
        let hostItem = try #require(((((placement["properties"] as? [String: Any])?["staticPool"] as? [String: Any])?["properties"] as? [String: Any])?["hosts"] as? [String: Any])?["items"] as? [String: Any])
        #expect(((hostItem["properties"] as? [String: Any])?["controlplaneAllowed"] as? [String: Any])?["default"] as? Bool == true)
    }
}

@Suite("provider manifests")
struct ProviderManifestTests {
    static let config = CRDManifestTests.directory.replacingOccurrences(of: "/crd/bases", with: "")

    func documents(_ file: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: "\(Self.config)/\(file)", encoding: .utf8)
        return try Yams.load_all(yaml: text).compactMap { $0 as? [String: Any] }
    }

    @Test("RBAC grants what capmvm does: its kinds and their status, the Cluster API objects and Secrets it reads, the leader Lease")
    func rbac() throws {
        let docs = try documents("rbac/role.yaml")
        func rules(_ kind: String) -> [[String: Any]] { docs.filter { $0["kind"] as? String == kind }.flatMap { $0["rules"] as? [[String: Any]] ?? [] } }
        func allowed(_ rules: [[String: Any]], _ r: ResourceType, sub: String? = nil, _ verbs: [String]) -> Bool {
            let name = r.plural + (sub.map { "/\($0)" } ?? "")
            return verbs.allSatisfy { verb in
                rules.contains { ($0["apiGroups"] as? [String] ?? []).contains(r.group) && ($0["resources"] as? [String] ?? []).contains(name) && ($0["verbs"] as? [String] ?? []).contains(verb) }
            }
        }
        let cluster = rules("ClusterRole")
        for r in [MicrovmCluster.resource, MicrovmMachine.resource, MicrovmHost.resource] {
            #expect(allowed(cluster, r, ["get", "list", "watch", "update", "patch"]), "\(r.plural)")
            #expect(allowed(cluster, r, sub: "status", ["get", "update", "patch"]), "\(r.plural)/status")
        }
        for r in [Cluster.resource, Machine.resource, Secret.resource] { #expect(allowed(cluster, r, ["get", "list", "watch"]), "\(r.plural)") }
        #expect(allowed(rules("Role"), Lease.resource, ["get", "create", "update"]), "leases")
    }

    @Test("infrastructure-components.yaml is current (scripts/build-components.sh) and holds what clusterctl installs")
    func components() throws {
        let docs = try documents("infrastructure-components.yaml")
        let kinds = docs.map { "\($0["kind"] ?? "")/\((($0["metadata"] as? [String: Any])?["name"]) ?? "")" }
        for expected in ["Namespace/capmvm-system", "Deployment/capmvm-controller-manager", "ClusterRole/capmvm-manager-role",
                         "CustomResourceDefinition/microvmmachines.infrastructure.cluster.x-k8s.io", "CustomResourceDefinition/microvmhosts.infrastructure.cluster.x-k8s.io"] {
            #expect(kinds.contains(expected), "\(expected) in \(kinds)")
        }
        let parts = try ["manager/manager.yaml", "rbac/role.yaml"].flatMap(documents)
            + FileManager.default.contentsOfDirectory(atPath: "\(Self.config)/crd/bases").filter { $0.hasSuffix(".yaml") }.flatMap { try documents("crd/bases/\($0)") }
        #expect(docs.count == parts.count, "every document of config/ is in the components file: run scripts/build-components.sh")
        let meta = try documents("metadata.yaml").first
        #expect(meta?["kind"] as? String == "Metadata" && ((meta?["releaseSeries"] as? [[String: Any]])?.first?["contract"] as? String) == "v1beta1")
    }
}
