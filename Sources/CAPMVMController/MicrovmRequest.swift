import AgentClient
import CAPMVMAPI
import FlintlockAPI
import Foundation
import KubernetesClient
import Yams

/// The label the provider puts on every microVM it creates: the MicrovmMachine's uid, so that a VM
/// whose providerID never got recorded is found again instead of created twice.
public let machineUIDLabel = "infrastructure.cluster.x-k8s.io/microvmmachine-uid"

/// The annotation on a MicrovmMachine naming the host endpoint chosen for its VM, written before the
/// VM is created.
public let placementAnnotation = "infrastructure.cluster.x-k8s.io/microvm-host"

/// Builds the agent's create request for a machine, as CAPMVM does: id and namespace from the
/// Machine, labels plus `cluster-name`, the machine's VM shape, `add_network_config`, and metadata:
/// user-data from the bootstrap Secret, vendor-data with hostname and ssh users, meta-data with
/// `local_hostname`, `platform: liquid_metal` and `vm_host`.
public enum MicrovmRequest {
    public static func spec(machine: Machine, microvmMachine m: MicrovmMachine, cluster: MicrovmCluster, bootstrapData: Data, hostEndpoint: String) throws -> Flintlock_Types_MicroVMSpec {
        let name = machine.metadata.name ?? ""
        let s = m.spec
        return try .with {
            $0.id = name
            $0.namespace = machine.metadata.namespace ?? "default"
            $0.labels = (s.labels ?? [:]).merging(["cluster-name": machine.spec.clusterName, machineUIDLabel: m.metadata.uid ?? ""]) { $1 }
            $0.vcpu = Int32(s.vcpu)
            $0.memoryInMb = Int32(s.memoryMb)
            if let p = s.provider, !p.isEmpty { $0.provider = p }
            $0.kernel = .with { k in
                k.image = s.kernel.image
                if let f = s.kernel.filename { k.filename = f }
                k.cmdline = s.kernelCmdline ?? [:]
                k.addNetworkConfig = true
            }
            if let i = s.initrd {
                $0.initrd = .with { r in
                    r.image = i.image
                    if let f = i.filename { r.filename = f }
                }
            }
            $0.rootVolume = volume(s.rootVolume)
            $0.additionalVolumes = (s.volumes ?? []).map(volume)
            $0.interfaces = s.networkInterfaces.map { n in
                .with { i in
                    i.deviceID = n.guestDeviceName
                    i.type = n.type.lowercased() == "macvtap" ? .macvtap : .tap
                    if let mac = n.guestMac, !mac.isEmpty { i.guestMac = mac }
                    if let a = n.address {
                        i.address = .with { sa in
                            sa.address = a.address
                            if let g = a.gateway { sa.gateway = g }
                            sa.nameservers = a.nameservers ?? []
                        }
                    }
                }
            }
            $0.metadata = [
                "user-data": bootstrapData.base64EncodedString(),
                "vendor-data": Data(try vendorData(hostname: name, machineKeys: s.sshPublicKeys, clusterKeys: cluster.spec.sshPublicKeys).utf8).base64EncodedString(),
                "meta-data": Data(try Yams.dump(object: ["local_hostname": name, "platform": "liquid_metal", "vm_host": hostEndpoint], sortKeys: true).utf8).base64EncodedString(),
            ]
        }
    }

    /// A MicrovmMachine volume as the agent's volume (`sizeMb` becomes `size_in_mb`).
    public static func volume(_ v: MicrovmMachine.Volume) -> Flintlock_Types_Volume {
        .with {
            $0.id = v.id
            $0.isReadOnly = v.readOnly ?? false
            if let mp = v.mountPoint, !mp.isEmpty { $0.mountPoint = mp }
            if let mb = v.sizeMb, mb > 0 { $0.sizeInMb = Int32(mb) }
            $0.source.containerSource = v.image
        }
    }

    /// `#cloud-config` with the hostname, users and keys (the machine's keys win over the cluster's
    /// for the same user), a final message and a resolv.conf fix, as CAPMVM writes it.
    public static func vendorData(hostname: String, machineKeys: [SSHPublicKey]?, clusterKeys: [SSHPublicKey]?) throws -> String {
        var byUser: [String: [String]] = [:]
        for k in clusterKeys ?? [] { byUser[k.user] = k.authorizedKeys ?? [] }
        for k in machineKeys ?? [] { byUser[k.user] = k.authorizedKeys ?? [] }
        var doc: [String: Any] = [
            "hostname": hostname,
            "preserve_hostname": false,
            "final_message": "The Liquid Metal booted system is good to go after $UPTIME seconds",
            // Guests running systemd-resolved use its stub; others keep what cloud-init wrote.
            "bootcmd": ["[ -e /run/systemd/resolve/stub-resolv.conf ] && ln -sf /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf || true"],
        ]
        if !byUser.isEmpty {
            doc["users"] = byUser.keys.sorted().map { user -> [String: Any] in
                var u: [String: Any] = ["name": user, "ssh_authorized_keys": byUser[user] ?? []]
                if user != "root" { u["sudo"] = "ALL=(ALL) NOPASSWD:ALL"; u["shell"] = "/bin/bash" }
                return u
            }
            if byUser["root"] != nil { doc["disable_root"] = false }
        }
        return "#cloud-config\n" + (try Yams.dump(object: doc, sortKeys: true))
    }
}
