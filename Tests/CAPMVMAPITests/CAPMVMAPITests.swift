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
        #expect(c.spec.placement.staticPool?.basicAuthSecret == "mvm-auth" && c.status?.failureDomains?["192.168.1.10:9090"]?.controlPlane == true)
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
