import FlintlockAPI
import Foundation
import MicroVMCore
import SwiftProtobuf

/// Conversions between Flintlock's wire types and the core model.
enum APIConversion {
    static func spec(from p: Flintlock_Types_MicroVMSpec) -> MicroVMSpec {
        MicroVMSpec(
            name: p.id, namespace: p.namespace, labels: p.labels, vcpu: Int(p.vcpu), memoryInMB: Int(p.memoryInMb),
            kernel: KernelSpec(image: p.kernel.image, cmdline: p.kernel.cmdline, filename: p.kernel.hasFilename ? p.kernel.filename : nil, addNetworkConfig: p.kernel.addNetworkConfig),
            initrd: p.hasInitrd ? InitrdSpec(image: p.initrd.image, filename: p.initrd.hasFilename ? p.initrd.filename : nil) : nil,
            rootVolume: p.hasRootVolume ? volume(p.rootVolume) : nil,
            additionalVolumes: p.additionalVolumes.map(volume),
            interfaces: p.interfaces.map { i in
                NetworkInterfaceSpec(
                    deviceID: i.deviceID, type: i.type == .tap ? .tap : .macvtap,
                    guestMAC: i.hasGuestMac && !i.guestMac.isEmpty ? i.guestMac : nil,
                    address: i.hasAddress ? StaticAddress(address: i.address.address, gateway: i.address.hasGateway ? i.address.gateway : nil, nameservers: i.address.nameservers) : nil,
                    bridgeName: i.hasOverrides && i.overrides.hasBridgeName && !i.overrides.bridgeName.isEmpty ? i.overrides.bridgeName : nil)
            },
            metadata: p.metadata, provider: p.hasProvider && !p.provider.isEmpty ? p.provider : nil, allowGuestAgent: p.allowGuestAgent)
    }

    static func volume(_ v: Flintlock_Types_Volume) -> VolumeSpec {
        VolumeSpec(
            id: v.id, isReadOnly: v.isReadOnly, mountPoint: v.hasMountPoint ? v.mountPoint : nil,
            containerSource: v.source.hasContainerSource ? v.source.containerSource : nil,
            virtiofsSource: v.source.hasVirtiofsSource ? v.source.virtiofsSource : nil,
            partitionID: v.hasPartitionID ? v.partitionID : nil, sizeInMB: v.hasSizeInMb ? Int(v.sizeInMb) : nil)
    }

    static func proto(_ v: VolumeSpec) -> Flintlock_Types_Volume {
        .with {
            $0.id = v.id
            $0.isReadOnly = v.isReadOnly
            if let m = v.mountPoint { $0.mountPoint = m }
            if let c = v.containerSource { $0.source.containerSource = c }
            if let f = v.virtiofsSource { $0.source.virtiofsSource = f }
            if let p = v.partitionID { $0.partitionID = p }
            if let s = v.sizeInMB { $0.sizeInMb = Int32(s) }
        }
    }

    static func timestamp(_ d: Date) -> Google_Protobuf_Timestamp { Google_Protobuf_Timestamp(date: d) }

    static func mount(_ m: MountStatus) -> Flintlock_Types_Mount {
        .with {
            $0.type = m.type == .dev ? .dev : .hostpath
            $0.source = m.source
        }
    }

    static func proto(_ vm: MicroVM) -> Flintlock_Types_MicroVM {
        let s = vm.spec
        return .with { out in
            out.version = Int32(truncatingIfNeeded: vm.version)
            out.spec = .with {
                $0.id = s.name
                $0.namespace = s.namespace
                $0.labels = s.labels
                $0.vcpu = Int32(s.vcpu)
                $0.memoryInMb = Int32(s.memoryInMB)
                $0.kernel = .with { k in
                    k.image = s.kernel.image
                    k.cmdline = s.kernel.cmdline
                    if let f = s.kernel.filename { k.filename = f }
                    k.addNetworkConfig = s.kernel.addNetworkConfig
                }
                if let i = s.initrd {
                    $0.initrd = .with { r in
                        r.image = i.image
                        if let f = i.filename { r.filename = f }
                    }
                }
                if let r = s.rootVolume { $0.rootVolume = proto(r) }
                $0.additionalVolumes = s.additionalVolumes.map(proto)
                $0.interfaces = s.interfaces.map { i in
                    .with {
                        $0.deviceID = i.deviceID
                        $0.type = i.type == .tap ? .tap : .macvtap
                        if let m = i.guestMAC { $0.guestMac = m }
                        if let a = i.address {
                            $0.address = .with { x in
                                x.address = a.address
                                if let g = a.gateway { x.gateway = g }
                                x.nameservers = a.nameservers
                            }
                        }
                        if let b = i.bridgeName { $0.overrides = .with { o in o.bridgeName = b } }
                    }
                }
                $0.metadata = s.metadata
                $0.createdAt = timestamp(vm.createdAt)
                $0.updatedAt = timestamp(vm.updatedAt)
                if let d = vm.deletedAt { $0.deletedAt = timestamp(d) }
                $0.uid = vm.uid
                if let p = s.provider { $0.provider = p }
                $0.allowGuestAgent = s.allowGuestAgent
            }
            let st = vm.status
            out.status = .with {
                switch st.state {
                case .pending: $0.state = .pending
                case .created: $0.state = .created
                case .failed: $0.state = .failed
                case .deleting: $0.state = .deleting
                }
                $0.volumes = st.volumes.mapValues { m in .with { $0.mount = mount(m) } }
                if let k = st.kernelMount { $0.kernelMount = mount(k) }
                if let i = st.initrdMount { $0.initrdMount = mount(i) }
                var interfaces = st.networkInterfaces.mapValues { n in
                    Flintlock_Types_NetworkInterfaceStatus.with {
                        $0.hostDeviceName = n.hostDeviceName
                        $0.index = Int32(n.index)
                        $0.macAddress = n.macAddress
                    }
                }
                // Addresses are known from the start (static, or allocated when the VM was stored).
                for iface in vm.spec.interfaces {
                    let allocated = st.allocatedAddresses?[iface.deviceID]
                    guard let address = allocated ?? iface.address?.address else { continue }
                    interfaces[iface.deviceID, default: .with { $0.macAddress = iface.guestMAC ?? generatedMAC(uid: vm.uid, deviceID: iface.deviceID) }].address = address
                    interfaces[iface.deviceID]?.addressAllocated = allocated != nil
                }
                $0.networkInterfaces = interfaces
                $0.retry = Int32(st.retry)
                $0.failureReason = st.failureReason
                if let t = st.firstConsoleOutputAt { $0.firstConsoleOutputAt = timestamp(t) }
                if let t = st.vmmStartedAt { $0.vmmStartedAt = timestamp(t) }
                $0.restartCount = Int32(st.restartCount)
                $0.vmmPid = st.vmmPID
                $0.accelerator = st.accelerator
            }
        }
    }
}
