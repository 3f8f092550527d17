import Foundation
import MicroVMCore
import Yams

/// The four cloud-init NoCloud documents a guest receives, decoded and completed by the agent:
/// written to a `cidata` seed disk for QEMU and Cloud Hypervisor, and what a Firecracker MMDS
/// would serve.
public struct CloudInitDocuments: Sendable, Equatable {
    public var metaData: Data
    public var userData: Data
    public var vendorData: Data
    public var networkConfig: Data?

    /// The files of a NoCloud seed, by name (`network-config` only when there is one).
    public var files: [(name: String, data: Data)] {
        var f = [(CloudInitKey.metaData, metaData), (CloudInitKey.userData, userData), (CloudInitKey.vendorData, vendorData)]
        if let networkConfig { f.append((CloudInitKey.networkConfig, networkConfig)) }
        return f
    }

    /// A volume the guest should mount (vendor-data `mounts`).
    public struct Mount: Sendable, Equatable {
        public var device: String
        public var mountPoint: String
        public var readOnly: Bool
        public init(device: String, mountPoint: String, readOnly: Bool) {
            self.device = device
            self.mountPoint = mountPoint
            self.readOnly = readOnly
        }
    }

    /// The mounts a spec asks for: additional volumes with a mount point, by the device name the
    /// guest sees (the root volume is vda; additional volumes follow in order).
    public static func mounts(of spec: MicroVMSpec) -> [Mount] {
        spec.additionalVolumes.enumerated().compactMap { i, v in
            guard let m = v.mountPoint, !m.isEmpty else { return nil }
            return Mount(device: guestDiskName(index: i + 1), mountPoint: m, readOnly: v.isReadOnly)
        }
    }

    /// What the agent adds to a spec's documents.
    public struct Additions: Sendable, Equatable {
        /// The VM's uid: `instance-id` (and Flintlock's `instance_id`) when meta-data has none.
        public var instanceID: String
        /// Interfaces for a generated network-config; nil: generate none.
        public var interfaces: [GuestInterface]?
        public var mounts: [Mount]
        public init(instanceID: String, interfaces: [GuestInterface]?, mounts: [Mount]) {
            self.instanceID = instanceID
            self.interfaces = interfaces
            self.mounts = mounts
        }
    }

    /// The documents for a VM: the spec's own (`metadata`, base64 values) completed with `additions`.
    /// The user's network-config wins over a generated one; mounts are appended to the user's
    /// vendor-data, which must then be `#cloud-config` (or empty). INVALID_ARGUMENT names the document.
    public static func make(metadata: [String: String], additions: Additions) throws(AgentError) -> CloudInitDocuments {
        func decoded(_ key: String) throws(AgentError) -> Data {
            guard let v = metadata[key] else { return Data() }
            guard let d = Data(base64Encoded: v, options: .ignoreUnknownCharacters) else { throw .invalid("metadata[\(key)]", "is not base64") }
            return d
        }
        let metaData = try completedMetaData(try decoded(CloudInitKey.metaData), instanceID: additions.instanceID)
        var vendorData = try decoded(CloudInitKey.vendorData)
        if !additions.mounts.isEmpty { vendorData = try withMounts(vendorData, additions.mounts) }
        var networkConfig: Data? = metadata[CloudInitKey.networkConfig] == nil ? nil : try decoded(CloudInitKey.networkConfig)
        if networkConfig == nil, let interfaces = additions.interfaces, !interfaces.isEmpty {
            networkConfig = Data(NetworkConfigV2.render(interfaces).utf8)
        }
        return CloudInitDocuments(metaData: metaData, userData: try decoded(CloudInitKey.userData), vendorData: vendorData, networkConfig: networkConfig)
    }

    /// Checks what `make` would check, before anything is created.
    public static func validate(metadata: [String: String], mounts: [Mount]) throws(AgentError) {
        _ = try make(metadata: metadata, additions: Additions(instanceID: "check", interfaces: nil, mounts: mounts))
    }

    /// meta-data with `instance-id` (what cloud-init reads) and `instance_id` (what Flintlock adds),
    /// and `local-hostname` copied from Flintlock-style `local_hostname`, each only when missing.
    static func completedMetaData(_ data: Data, instanceID: String) throws(AgentError) -> Data {
        let text = String(decoding: data, as: UTF8.self)
        var map: [String: Any] = [:]
        if !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            let loaded: Any?
            do { loaded = try Yams.load(yaml: text) } catch {
                throw .invalid("metadata[meta-data]", "is not YAML: \(error)")
            }
            if let loaded {
                guard let m = loaded as? [String: Any] else { throw .invalid("metadata[meta-data]", "must be a YAML mapping") }
                map = m
            }
        }
        var added: [(String, String)] = []
        if map["instance-id"] == nil { added.append(("instance-id", (map["instance_id"] as? String) ?? instanceID)) }
        if map["instance_id"] == nil { added.append(("instance_id", (map["instance-id"] as? String) ?? instanceID)) }
        if map["local-hostname"] == nil, let h = map["local_hostname"] as? String { added.append(("local-hostname", h)) }
        guard !added.isEmpty else { return data }
        for (k, v) in added { map[k] = v }
        do {
            return Data(try Yams.dump(object: map, sortKeys: true).utf8)
        } catch {
            throw .invalid("metadata[meta-data]", "cannot be completed: \(error)")
        }
    }

    /// vendor-data with `mounts` entries appended (cloud-config).
    static func withMounts(_ data: Data, _ mounts: [Mount]) throws(AgentError) -> Data {
        let text = String(decoding: data, as: UTF8.self)
        var map: [String: Any] = [:]
        if !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            guard text.hasPrefix("#cloud-config") else {
                throw .invalid("metadata[vendor-data]", "volumes with a mount_point are mounted through vendor-data, which must then be #cloud-config (or empty)")
            }
            let loaded: Any?
            do { loaded = try Yams.load(yaml: text) } catch { throw .invalid("metadata[vendor-data]", "is not YAML: \(error)") }
            if let loaded {
                guard let m = loaded as? [String: Any] else { throw .invalid("metadata[vendor-data]", "must be a cloud-config mapping") }
                map = m
            }
        }
        var entries = (map["mounts"] as? [Any]) ?? []
        for m in mounts {
            // cloud-init's default options, read-only when the volume is.
            let options = "defaults,nofail,x-systemd.after=cloud-init.service,_netdev" + (m.readOnly ? ",ro" : "")
            entries.append([m.device, m.mountPoint, "auto", options])
        }
        map["mounts"] = entries
        do {
            return Data(("#cloud-config\n" + (try Yams.dump(object: map, sortKeys: true))).utf8)
        } catch {
            throw .invalid("metadata[vendor-data]", "cannot be completed: \(error)")
        }
    }
}
