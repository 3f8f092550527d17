import AgentClient
import FlintlockAPI
import Foundation
import Testing
import Yams

@Suite("lmctl guest metadata helpers")
struct GuestMetadataTests {
    func doc(_ spec: Flintlock_Types_MicroVMSpec, _ key: String) -> String {
        String(decoding: Data(base64Encoded: spec.metadata[key] ?? "") ?? Data(), as: UTF8.self)
    }

    @Test("hostname goes into meta-data, keeping what is there")
    func hostname() throws {
        var s = Flintlock_Types_MicroVMSpec()
        s.metadata["meta-data"] = Data("instance-id: x\n".utf8).base64EncodedString()
        try GuestMetadata.setHostname("node-1", in: &s)
        let m = try #require(try Yams.load(yaml: doc(s, "meta-data")) as? [String: String])
        #expect(m == ["instance-id": "x", "local-hostname": "node-1"])
    }

    @Test("a user with ssh keys is added to #cloud-config user-data, keeping its settings; other user-data is refused")
    func user() throws {
        var s = Flintlock_Types_MicroVMSpec()
        GuestMetadata.setDocument("user-data", Data("#cloud-config\nruncmd: [[touch, /x]]\n".utf8), in: &s)
        try GuestMetadata.addUser("lm", sshKeys: ["ssh-ed25519 AAAA test"], in: &s)
        let text = doc(s, "user-data")
        #expect(text.hasPrefix("#cloud-config\n"))
        let m = try #require(try Yams.load(yaml: text) as? [String: Any])
        #expect((m["runcmd"] as? [[String]]) == [["touch", "/x"]])
        let users = try #require(m["users"] as? [[String: Any]])
        #expect(users.first?["name"] as? String == "lm" && users.first?["ssh_authorized_keys"] as? [String] == ["ssh-ed25519 AAAA test"])

        var script = Flintlock_Types_MicroVMSpec()
        GuestMetadata.setDocument("user-data", Data("#!/bin/sh\necho hi\n".utf8), in: &script)
        #expect(throws: GuestMetadata.Failure.self) { try GuestMetadata.addUser("lm", sshKeys: ["k"], in: &script) }
    }

    @Test("key files: comments skipped, private keys and empty files refused")
    func keyFiles() throws {
        let dir = NSTemporaryDirectory() + "/lm-keys-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("# mine\nssh-ed25519 AAAA one\n\nssh-rsa BBBB two\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/ok.pub"))
        try Data("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/key"))
        try Data("\n# nothing\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/empty.pub"))
        #expect(try GuestMetadata.sshKeys(fromFile: "\(dir)/ok.pub") == ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"])
        for bad in ["key", "empty.pub", "missing.pub"] {
            #expect(throws: GuestMetadata.Failure.self) { _ = try GuestMetadata.sshKeys(fromFile: "\(dir)/\(bad)") }
        }
    }
}
