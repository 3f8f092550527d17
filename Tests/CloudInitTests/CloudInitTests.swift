import CloudInit
import Foundation
import HostSystem
import MicroVMCore
import Testing
import Yams

func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }
func text(_ d: Data?) -> String { String(decoding: d ?? Data(), as: UTF8.self) }
func yaml(_ d: Data?) throws -> [String: Any] { try #require(try Yams.load(yaml: text(d)) as? [String: Any]) }

@Suite("cloud-init documents")
struct CloudInitDocumentsTests {
    let none = CloudInitDocuments.Additions(instanceID: "01UID", interfaces: nil, mounts: [])

    @Test("instance-id and instance_id are added to meta-data when missing; the user's own win")
    func instanceID() throws {
        let empty = try CloudInitDocuments.make(metadata: [:], additions: none)
        #expect(try yaml(empty.metaData)["instance-id"] as? String == "01UID")
        #expect(try yaml(empty.metaData)["instance_id"] as? String == "01UID")
        #expect(empty.userData.isEmpty && empty.vendorData.isEmpty && empty.networkConfig == nil)

        let own = try CloudInitDocuments.make(metadata: ["meta-data": b64("instance-id: mine\nlocal-hostname: n1\n")], additions: none)
        let m = try yaml(own.metaData)
        #expect(m["instance-id"] as? String == "mine" && m["instance_id"] as? String == "mine" && m["local-hostname"] as? String == "n1")

        // CAPMVM writes Flintlock-style keys: cloud-init reads the dashed ones.
        let capmvm = try CloudInitDocuments.make(metadata: ["meta-data": b64("instance_id: m-1\nlocal_hostname: node-1\nplatform: liquid_metal\n")], additions: none)
        let c = try yaml(capmvm.metaData)
        #expect(c["instance-id"] as? String == "m-1" && c["local-hostname"] as? String == "node-1" && c["platform"] as? String == "liquid_metal")

        let complete = "instance-id: a\ninstance_id: a\n"
        #expect(text(try CloudInitDocuments.make(metadata: ["meta-data": b64(complete)], additions: none).metaData) == complete, "left byte for byte as it was")
    }

    @Test("user-data and vendor-data pass through; network-config: the user's wins over a generated one")
    func passThroughAndNetworkConfig() throws {
        let ifaces = [GuestInterface(deviceID: "eth0", mac: "02:AA:00:00:00:01", address: nil)]
        let add = CloudInitDocuments.Additions(instanceID: "u", interfaces: ifaces, mounts: [])
        let generated = try CloudInitDocuments.make(metadata: ["user-data": b64("#cloud-config\nruncmd: [echo hi]\n")], additions: add)
        #expect(text(generated.userData) == "#cloud-config\nruncmd: [echo hi]\n")
        #expect(text(generated.networkConfig).contains("macaddress: \"02:aa:00:00:00:01\""))
        let own = try CloudInitDocuments.make(metadata: ["network-config": b64("version: 1\n")], additions: add)
        #expect(text(own.networkConfig) == "version: 1\n")
        #expect(generated.files.map(\.name) == ["meta-data", "user-data", "vendor-data", "network-config"])
    }

    @Test("network-config v2: static addresses with gateway and nameservers, DHCP otherwise, matched by MAC")
    func networkConfigV2() throws {
        let out = NetworkConfigV2.render([
            GuestInterface(deviceID: "eth0", mac: "02:00:00:00:00:01", address: StaticAddress(address: "10.0.0.5/24", gateway: "10.0.0.1", nameservers: ["1.1.1.1", "9.9.9.9"])),
            GuestInterface(deviceID: "eth1", mac: "02:00:00:00:00:02", address: nil),
            GuestInterface(deviceID: "eth2", mac: "02:00:00:00:00:03", address: StaticAddress(address: "fd00::5/64", gateway: "fd00::1/64")),
        ])
        let doc = try #require(try Yams.load(yaml: out) as? [String: Any])
        #expect(doc["version"] as? Int == 2)
        let eth = try #require(doc["ethernets"] as? [String: [String: Any]])
        #expect((eth["eth0"]?["match"] as? [String: String])?["macaddress"] == "02:00:00:00:00:01")
        #expect(eth["eth0"]?["addresses"] as? [String] == ["10.0.0.5/24"])
        #expect(eth["eth0"]?["gateway4"] as? String == "10.0.0.1")
        #expect((eth["eth0"]?["nameservers"] as? [String: [String]])?["addresses"] == ["1.1.1.1", "9.9.9.9"])
        #expect(eth["eth0"]?["dhcp4"] == nil)
        #expect(eth["eth1"]?["dhcp4"] as? Bool == true && eth["eth1"]?["dhcp6"] as? Bool == true && eth["eth1"]?["dhcp-identifier"] as? String == "mac")
        #expect(eth["eth2"]?["gateway6"] as? String == "fd00::1")
    }

    @Test("volumes with a mount point become vendor-data mounts, appended to the user's cloud-config")
    func mounts() throws {
        let mounts = [CloudInitDocuments.Mount(device: "vdb", mountPoint: "/data", readOnly: false),
                      CloudInitDocuments.Mount(device: "vdc", mountPoint: "/ro", readOnly: true)]
        let add = CloudInitDocuments.Additions(instanceID: "u", interfaces: nil, mounts: mounts)
        let fresh = try CloudInitDocuments.make(metadata: [:], additions: add)
        #expect(text(fresh.vendorData).hasPrefix("#cloud-config\n"))
        let m = try #require(try yaml(fresh.vendorData)["mounts"] as? [[String]])
        #expect(m.map { $0[0] } == ["vdb", "vdc"] && m[0][1] == "/data" && m[1][3].hasSuffix(",ro") && !m[0][3].contains(",ro"))

        let merged = try CloudInitDocuments.make(metadata: ["vendor-data": b64("#cloud-config\nhostname: x\nmounts:\n- [vdz, /z]\n")], additions: add)
        let v = try yaml(merged.vendorData)
        #expect(v["hostname"] as? String == "x")
        #expect((v["mounts"] as? [[String]])?.map { $0[0] } == ["vdz", "vdb", "vdc"])

        #expect(throws: AgentError.invalid("metadata[vendor-data]", "volumes with a mount_point are mounted through vendor-data, which must then be #cloud-config (or empty)")) {
            _ = try CloudInitDocuments.make(metadata: ["vendor-data": b64("#!/bin/sh\necho hi\n")], additions: add)
        }
    }

    @Test("bad documents are INVALID_ARGUMENT naming the document")
    func badDocuments() {
        for (md, field) in [(["meta-data": b64("- a list\n")], "metadata[meta-data]"), (["meta-data": b64("a: [unclosed\n")], "metadata[meta-data]")] {
            do {
                _ = try CloudInitDocuments.make(metadata: md, additions: none)
                Issue.record("\(md) accepted")
            } catch {
                #expect(error.code == .invalidArgument && error.message.hasPrefix(field), "\(error)")
            }
        }
    }
}

@Suite("cloud-init seed disk", .enabled(if: (try? HostProcess.resolveExecutable("mkfs.vfat")) != nil && (try? HostProcess.resolveExecutable("mcopy")) != nil || ProcessInfo.processInfo.environment["CI"] == "true", "needs dosfstools and mtools (always runs in CI)"))
struct SeedDiskTests {
    @Test("a FAT image labelled CIDATA holding the documents, 8 MiB")
    func seed() async throws {
        let docs = try CloudInitDocuments.make(metadata: ["user-data": b64("#cloud-config\nruncmd: [echo hi]\n")],
                                               additions: .init(instanceID: "01SEED", interfaces: [GuestInterface(deviceID: "eth0", mac: "02:00:00:00:00:09", address: nil)], mounts: []))
        let dir = NSTemporaryDirectory() + "/lm-seed-\(UUID().uuidString.prefix(8))"
        try HostFiles.createDirectory(dir)
        defer { try? HostFiles.remove(dir) }
        try await SeedDisk.write(docs, to: "\(dir)/a.img", volumeID: 0x1234_5678)
        let blkid = try await HostProcess.run(["blkid", "-o", "export", "\(dir)/a.img"])
        #expect(blkid.contains("LABEL=CIDATA") && blkid.contains("TYPE=vfat") && blkid.contains("UUID=1234-5678"), "\(blkid)")
        for (name, data) in docs.files {
            #expect(try await SeedDisk.read(name, from: "\(dir)/a.img") == data, "\(name)")
        }
        #expect(HostFiles.size("\(dir)/a.img") == 8 << 20)
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/a.img.tmp-\(getpid())"), "no temporary file left")
    }
}
