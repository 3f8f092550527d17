import FlintlockAPI
import Foundation
import Yams

/// Helps people write a spec's cloud-init `metadata` (base64 documents): a hostname into meta-data,
/// a user with ssh keys into user-data, whole documents from files.
public enum GuestMetadata {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// Sets `local-hostname` in meta-data (keeping the rest of it).
    public static func setHostname(_ hostname: String, in spec: inout Flintlock_Types_MicroVMSpec) throws {
        var map = try mapping(spec.metadata["meta-data"], document: "meta-data")
        map["local-hostname"] = hostname
        spec.metadata["meta-data"] = Data(try Yams.dump(object: map, sortKeys: true).utf8).base64EncodedString()
    }

    /// Adds a user with passwordless sudo and these ssh keys to user-data, which must be empty or
    /// `#cloud-config` (its other settings are kept).
    public static func addUser(_ name: String, sshKeys: [String], in spec: inout Flintlock_Types_MicroVMSpec) throws {
        var map = try mapping(spec.metadata["user-data"], document: "user-data", cloudConfig: true)
        var users = (map["users"] as? [Any]) ?? []
        users.append([
            "name": name, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": true,
            "ssh_authorized_keys": sshKeys,
        ] as [String: Any])
        map["users"] = users
        spec.metadata["user-data"] = Data(("#cloud-config\n" + (try Yams.dump(object: map, sortKeys: true))).utf8).base64EncodedString()
    }

    /// Sets a whole document (`meta-data`, `user-data`, `vendor-data`, `network-config`) from bytes.
    public static func setDocument(_ key: String, _ data: Data, in spec: inout Flintlock_Types_MicroVMSpec) {
        spec.metadata[key] = data.base64EncodedString()
    }

    /// The public keys in an authorized_keys-style file (blank lines and comments skipped).
    public static func sshKeys(fromFile path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { throw Failure("cannot read ssh key file \(path)") }
        let keys = String(decoding: data, as: UTF8.self).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !keys.isEmpty else { throw Failure("\(path) holds no ssh public key") }
        for k in keys where k.contains("PRIVATE KEY") { throw Failure("\(path) is a private key; give the .pub file") }
        return keys
    }

    static func mapping(_ base64: String?, document: String, cloudConfig: Bool = false) throws -> [String: Any] {
        guard let base64, !base64.isEmpty else { return [:] }
        guard let data = Data(base64Encoded: base64, options: .ignoreUnknownCharacters) else { throw Failure("metadata[\(document)] is not base64") }
        let text = String(decoding: data, as: UTF8.self)
        if text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { return [:] }
        if cloudConfig && !text.hasPrefix("#cloud-config") {
            throw Failure("\(document) is not #cloud-config, so lmctl cannot add to it; put the user and keys into it yourself")
        }
        // A document of comments only (say "#cloud-config" alone) is an empty mapping, as cloud-init reads it.
        guard let loaded = try Yams.load(yaml: text) else { return [:] }
        guard let map = loaded as? [String: Any] else { throw Failure("\(document) is not a YAML mapping") }
        return map
    }
}
