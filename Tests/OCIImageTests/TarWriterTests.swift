import CXattr
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import OCIImage

@Suite("TarWriter")
struct TarWriterTests {
    private func archive(_ entries: [TarEntry], epoch: SourceDateEpoch = .zero) throws -> [UInt8] {
        let sink = MemorySink()
        try TarWriter.write(entries: entries, to: sink, sourceDateEpoch: epoch)
        return sink.bytes
    }

    @Test("headers carry fixed owner, mtime and permission bits only")
    func fixedMetadata() throws {
        let entries = [
            try TarEntry.file("etc/hostname", contents: "vm-1\n", mode: 0o100644),
            try TarEntry.file("usr/bin/su", contents: "x", mode: 0o4755),
            try TarEntry.directory("tmp", mode: 0o1777),
            try TarEntry.symlink("lib", target: "usr/lib"),
            try TarEntry.characterDevice("dev/null", major: 1, minor: 3),
            try TarEntry.blockDevice("dev/vda", major: 254, minor: 0),
            try TarEntry.fifo("run/fifo", mode: 0o600),
        ]
        let bytes = try archive(entries, epoch: 1_700_000_000)
        #expect(bytes.count % 512 == 0)
        #expect(bytes.suffix(1024).allSatisfy { $0 == 0 })
        let parsed = try parseTar(bytes)
        for entry in parsed {
            #expect(entry.uid == 0 && entry.gid == 0, "\(entry.name)")
            #expect(entry.uname == "" && entry.gname == "", "\(entry.name)")
            #expect(entry.mtime == 1_700_000_000, "\(entry.name)")
        }
        let byName = Dictionary(uniqueKeysWithValues: parsed.map { ($0.name, $0) })
        #expect(byName["etc/hostname"]?.mode == 0o644)
        #expect(byName["etc/hostname"]?.content == Array("vm-1\n".utf8))
        #expect(byName["etc/hostname"]?.type == UInt8(ascii: "0"))
        #expect(byName["usr/bin/su"]?.mode == 0o4755)
        #expect(byName["tmp/"]?.mode == 0o1777)
        #expect(byName["tmp/"]?.type == UInt8(ascii: "5"))
        #expect(byName["lib"]?.type == UInt8(ascii: "2"))
        #expect(byName["lib"]?.linkName == "usr/lib")
        #expect(byName["dev/null"]?.type == UInt8(ascii: "3"))
        #expect(byName["dev/null"]?.devMajor == 1 && byName["dev/null"]?.devMinor == 3)
        #expect(byName["dev/vda"]?.type == UInt8(ascii: "4"))
        #expect(byName["dev/vda"]?.devMajor == 254)
        #expect(byName["run/fifo"]?.type == UInt8(ascii: "6"))
        #expect(byName["run/fifo"]?.mode == 0o600)
        // Missing parents were added as 0755 directories.
        #expect(byName["etc/"]?.mode == 0o755)
        #expect(byName["usr/bin/"]?.type == UInt8(ascii: "5"))
    }

    @Test("entries are sorted by the bytes of their names, directories before contents")
    func ordering() throws {
        let entries = [
            try TarEntry.file("b", contents: ""),
            try TarEntry.file("a/x", contents: ""),
            try TarEntry.file("a.txt", contents: ""),
            try TarEntry.file("a-b", contents: ""),
            try TarEntry.directory("a"),
            try TarEntry.file("B", contents: ""),
            try TarEntry.file("a/y/z", contents: ""),
        ]
        let names = try parseTar(try archive(entries)).map(\.name)
        #expect(names == ["B", "a-b", "a.txt", "a/", "a/x", "a/y/", "a/y/z", "b"])
    }

    @Test("the order of the input does not change the bytes")
    func inputOrderIrrelevant() throws {
        let entries = try (0..<40).map { i in
            i % 5 == 0 ? try TarEntry.directory("d\(i % 3)/sub\(i)") : try TarEntry.file("d\(i % 3)/f\(i)", contents: "\(i)")
        }
        let reference = try archive(entries)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5 {
            #expect(try archive(entries.shuffled(using: &generator)) == reference)
        }
    }

    @Test("paths are normalized and '..' is rejected")
    func pathValidation() throws {
        #expect(try TarEntry.file("/etc//./hostname", contents: "").path == "etc/hostname")
        #expect(try TarEntry.directory("./var/lib/").archiveName == "var/lib/")
        #expect(try TarEntry.file("...", contents: "").path == "...")
        #expect(try TarEntry.file("a/..b", contents: "").path == "a/..b")
        for bad in ["../etc/passwd", "a/../../b", "a/..", "..", "", "/", "./", "a\0b"] {
            #expect(throws: OCIImageError.self, "\(bad.debugDescription)") { try TarEntry.file(bad, contents: "x") }
        }
        #expect(throws: OCIImageError.self) { try TarEntry.hardLink("a", target: "../b") }
        // Symlink targets may point upwards; they are data, not archive paths.
        #expect(try TarEntry.symlink("usr/lib64", target: "../lib").kind == .symlink(target: "../lib"))
    }

    @Test("a layer from entries with '..' in a path cannot be built")
    func layoutRejectsDotDot() throws {
        let dir = try TemporaryDirectory()
        let writer = try OCILayoutWriter(directory: dir.sub("layout"))
        #expect(throws: OCIImageError.invalidPath("etc/../../x", reason: "contains a \"..\" component")) {
            _ = try writer.addLayer(entries: [try TarEntry.file("etc/../../x", contents: "boom")])
        }
    }

    @Test("inconsistent entry sets are rejected")
    func inconsistentEntries() throws {
        #expect(throws: OCIImageError.self) {
            try archive([try TarEntry.file("etc", contents: "file"), try TarEntry.file("etc/hostname", contents: "x")])
        }
        #expect(throws: OCIImageError.self) {
            try archive([try TarEntry.hardLink("a", target: "missing")])
        }
        // A hard link must come after its target in archive order.
        #expect(throws: OCIImageError.self) {
            try archive([try TarEntry.hardLink("a", target: "b"), try TarEntry.file("b", contents: "x")])
        }
        #expect(try archive([try TarEntry.file("a", contents: "x"), try TarEntry.hardLink("b", target: "a")]).count > 0)
    }

    @Test("later entries replace earlier ones with the same path")
    func overrides() throws {
        let parsed = try parseTar(try archive([
            try TarEntry.file("etc/hostname", contents: "old\n"),
            try TarEntry.file("/etc/hostname", contents: "new\n", mode: 0o600),
        ]))
        #expect(parsed.map(\.name) == ["etc/", "etc/hostname"])
        #expect(parsed.last?.content == Array("new\n".utf8))
        #expect(parsed.last?.mode == 0o600)
    }

    @Test("long names use the ustar prefix, then PAX; long link targets use PAX")
    func longNames() throws {
        let split = String(repeating: "p", count: 120) + "/" + String(repeating: "n", count: 90)
        let pax = String(repeating: "q", count: 200) + "/" + String(repeating: "r", count: 101)
        let longTarget = "/" + String(repeating: "t", count: 150)
        let exactly100 = String(repeating: "x", count: 100)
        let parsed = try parseTar(try archive([
            try TarEntry.file(split, contents: "split"),
            try TarEntry.file(pax, contents: "pax"),
            try TarEntry.symlink("link", target: longTarget),
            try TarEntry.file(exactly100, contents: "100"),
        ]))
        let byName = Dictionary(uniqueKeysWithValues: parsed.map { ($0.name, $0) })
        #expect(byName[split]?.rawPrefix == String(repeating: "p", count: 120))
        #expect(byName[split]?.rawName == String(repeating: "n", count: 90))
        #expect(byName[split]?.paxRecords.isEmpty == true)
        #expect(byName[pax]?.paxRecords["path"] == pax)
        #expect(byName[pax]?.content == Array("pax".utf8))
        #expect(byName["link"]?.paxRecords["linkpath"] == longTarget)
        #expect(byName[exactly100]?.rawName == exactly100)
        #expect(byName[exactly100]?.paxRecords.isEmpty == true)
    }

    @Test("PAX record lengths count their own digits", arguments: [1, 5, 85, 86, 87, 88, 89, 990, 991, 992, 993, 994, 995, 9_990])
    func paxRecordLength(valueLength: Int) throws {
        let record = TarWriter.paxRecord(key: "path", value: [UInt8](repeating: UInt8(ascii: "v"), count: valueLength))
        let space = try #require(record.firstIndex(of: UInt8(ascii: " ")))
        let declared = try #require(Int(String(decoding: record[..<space], as: UTF8.self)))
        #expect(declared == record.count)
        #expect(record.last == UInt8(ascii: "\n"))
    }

    @Test("ustar name splitting")
    func splitting() {
        func split(_ s: String) -> (String, String)? {
            TarWriter.splitUstarName(Array(s.utf8)).map { (String(decoding: $0.prefix, as: UTF8.self), String(decoding: $0.name, as: UTF8.self)) }
        }
        let a = String(repeating: "a", count: 50), b = String(repeating: "b", count: 60), c = String(repeating: "c", count: 30)
        #expect(split("\(a)/\(b)/\(c)")! == (a, "\(b)/\(c)"))
        #expect(split(String(repeating: "z", count: 101)) == nil)
        #expect(split(String(repeating: "z", count: 160) + "/x") == nil) // prefix too long
        #expect(split("a/" + String(repeating: "z", count: 101)) == nil) // last component too long
        #expect(split(String(repeating: "z", count: 101) + "/") == nil) // a directory name that long
    }

    @Test("out-of-range values are errors")
    func ranges() throws {
        #expect(throws: OCIImageError.self) { try archive([try TarEntry.file("a", contents: "")], epoch: -1) }
        #expect(throws: OCIImageError.self) { try archive([try TarEntry.file("a", contents: "")], epoch: 0o100000000000) }
        #expect(throws: OCIImageError.self) { try archive([try TarEntry.characterDevice("d", major: 1 << 21, minor: 0)]) }
        let writer = TarWriter(sink: MemorySink())
        try writer.finish()
        #expect(throws: OCIImageError.alreadyFinished) { try writer.append(try TarEntry.directory("x")) }
    }

    @Test("a file that changed size since it was scanned is an error")
    func changedFile() throws {
        let dir = try TemporaryDirectory()
        let file = dir.sub("f")
        try writeFile(file, "12345")
        let entry = try TarEntry.file("f", copying: file)
        #expect(entry.kind == .regularFile(.file(path: file.path, size: 5)))
        try writeFile(file, "123")
        #expect(throws: OCIImageError.fileChanged(path: file.path)) { try archive([entry]) }
        try writeFile(file, "1234567")
        #expect(throws: OCIImageError.fileChanged(path: file.path)) { try archive([entry]) }
        try writeFile(file, "abcde")
        #expect(try parseTar(try archive([entry])).first?.content == Array("abcde".utf8))
    }

    @Test("scanning a tree: types, hard links, streaming of files larger than a read chunk")
    func scanning() throws {
        let dir = try TemporaryDirectory()
        let root = dir.sub("root")
        let devices = SampleTree.canMakeDevices
        try SampleTree.build(at: root, reverse: false, mtime: 1_234_567, owner: nil, devices: devices)
        let parsed = try parseTar(try {
            let sink = MemorySink()
            let writer = TarWriter(sink: sink)
            try writer.appendDirectory(root)
            try writer.finish()
            return sink.bytes
        }())
        let names = parsed.map(\.name)
        #expect(names == names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(!names.contains { $0.hasPrefix("./") || $0.hasPrefix("/") })
        let byName = Dictionary(uniqueKeysWithValues: parsed.map { ($0.name, $0) })
        #expect(byName["usr/lib/big.bin"]?.content == SampleTree.bigFile)
        #expect(byName["bin/tool"]?.type == UInt8(ascii: "0"))
        #expect(byName["bin/tool-link"]?.type == UInt8(ascii: "1"))
        #expect(byName["bin/tool-link"]?.linkName == "bin/tool")
        #expect(byName["bin/tool-link"]?.size == 0)
        #expect(byName["etc/café"]?.content == Array("unicode\n".utf8))
        #expect(byName["long-link"]?.linkName == SampleTree.longTarget)
        #expect(byName[SampleTree.paxPath]?.content == Array("pax\n".utf8))
        #expect(byName["run/initctl"]?.type == UInt8(ascii: "6"))
        #expect(byName["var/empty/"]?.mode == 0o700)
        #expect(byName["tmp/"]?.mode == 0o1777)
        #expect(byName["usr/bin/wall"]?.mode == 0o2755)
        if devices {
            #expect(byName["dev/null"]?.type == UInt8(ascii: "3"))
            #expect(byName["dev/loop0"]?.devMajor == 7)
        }
        #expect(parsed.allSatisfy { $0.mtime == 0 && $0.uid == 0 && $0.gid == 0 })
        // Without hard link detection the second path is a full copy.
        let plain = try parseTar(try {
            let sink = MemorySink()
            let writer = TarWriter(sink: sink)
            try writer.appendDirectory(root, detectHardLinks: false)
            try writer.finish()
            return sink.bytes
        }())
        #expect(plain.first { $0.name == "bin/tool-link" }?.content == Array("#!/bin/sh\necho tool\n".utf8))
    }

    @Test("sockets are skipped")
    func sockets() throws {
        let dir = try TemporaryDirectory()
        let root = dir.sub("root")
        try writeFile(root.appendingPathComponent("keep"), "k")
        let socketPath = root.appendingPathComponent("sock").path
        let fd = try #require(makeUnixSocket(at: socketPath))
        defer { close(fd) }
        #expect(try lstatChecked(socketPath).st_mode & S_IFMT == S_IFSOCK)
        let entries = try TarWriter.entries(inDirectory: root)
        #expect(entries.map(\.path) == ["keep"])
    }
}

@Suite("TarWriter owners and extended attributes")
struct TarWriterOwnershipTests {
    @Test("an entry's uid, gid and xattrs are written; entries without them stay 0:0 with no records")
    func ownersAndXattrs() throws {
        var ping = try TarEntry.file("usr/bin/ping", contents: "elf", mode: 0o755)
        let capability: [UInt8] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00]
        ping.xattrs = ["security.capability": capability]
        var shadow = try TarEntry.file("etc/shadow", contents: "root:*:19675:0:99999:7:::\n", mode: 0o640)
        shadow.group = 42
        var home = try TarEntry.directory("home/debian", mode: 0o755)
        home.owner = 1000
        home.group = 1000
        let plain = try TarEntry.file("etc/hostname", contents: "lm\n")
        let sink = MemorySink()
        try TarWriter.write(entries: [ping, shadow, home, plain], to: sink, sourceDateEpoch: 1)
        let parsed = Dictionary(uniqueKeysWithValues: try parseTar(sink.bytes).map { ($0.name, $0) })
        #expect(parsed["usr/bin/ping"]?.paxRecords["SCHILY.xattr.security.capability"] == String(decoding: capability, as: UTF8.self))
        #expect(parsed["usr/bin/ping"]?.uid == 0)
        #expect(parsed["etc/shadow"]?.uid == 0)
        #expect(parsed["etc/shadow"]?.gid == 42)
        #expect(parsed["home/debian/"]?.uid == 1000)
        #expect(parsed["home/debian/"]?.gid == 1000)
        #expect(parsed["etc/hostname"]?.paxRecords.isEmpty == true)
        #expect(parsed["etc/hostname"]?.uid == 0 && parsed["etc/hostname"]?.gid == 0)
    }

    @Test("scanning records owners only when asked")
    func scannedOwners() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lm-owners-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("owned")
        try Data("x".utf8).write(to: file)
        var expectedUID = getuid(), expectedGID = getgid()
        if getuid() == 0 {
            #expect(chown(file.path, 1234, 4321) == 0)
            (expectedUID, expectedGID) = (1234, 4321)
        }
        let plain = try TarWriter.entries(inDirectory: dir)
        #expect(plain.first?.owner == 0 && plain.first?.group == 0)
        let owned = try TarWriter.entries(inDirectory: dir, metadata: .ownersAndCapabilities)
        #expect(owned.first?.owner == expectedUID)
        #expect(owned.first?.group == expectedGID)
        #expect(owned.first?.xattrs.isEmpty == true)
        // Extended attributes are recorded only when named.
        let value: [UInt8] = Array("lm".utf8)
        try #require(setxattr(file.path, "user.lm-test", value, value.count, 0) == 0, "the temporary directory takes user xattrs (errno \(errno))")
        let withXattr = try TarWriter.entries(inDirectory: dir, metadata: .ownersAndXattrs(xattrNames: ["user.lm-test"]))
        #expect(withXattr.first?.xattrs == ["user.lm-test": value])
        #expect(try TarWriter.entries(inDirectory: dir, metadata: .ownersAndCapabilities).first?.xattrs.isEmpty == true, "unnamed attributes are left out")
    }

    @Test("an xattr name with '=' is refused")
    func badXattrName() throws {
        var e = try TarEntry.file("a", contents: "x")
        e.xattrs = ["user.a=b": [1]]
        #expect(throws: OCIImageError.self) { try TarWriter.write(entries: [e], to: MemorySink()) }
    }
}
