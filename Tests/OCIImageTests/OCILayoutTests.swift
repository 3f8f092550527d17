import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import OCIImage

/// A rootfs-like image built into a fresh layout.
private struct BuiltImage {
    var layout: URL
    var layer: LayerDescriptor
    var manifest: Descriptor
    var blobPath: String { layout.path + "/blobs/sha256/" + (try! OCIDigest.hex(of: layer.descriptor.digest)) }
}

private let imageConfig = ImageConfiguration(
    platform: Platform(architecture: "amd64"),
    config: ContainerConfig(env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], cmd: ["/sbin/init"], workingDir: "/"),
    created: SourceDateEpoch.zero.rfc3339
)

private func buildImage(from root: URL, into layout: URL, tag: String = "v1", config: ImageConfiguration = imageConfig,
                        extra: [TarEntry] = [], epoch: SourceDateEpoch = .zero) throws -> BuiltImage {
    let writer = try OCILayoutWriter(directory: layout)
    let layer = try writer.addLayer(fromDirectory: root, epoch: epoch, extraEntries: extra)
    let manifest = try writer.writeImage(layers: [layer], config: config, tag: tag)
    return BuiltImage(layout: layout, layer: layer, manifest: manifest)
}

@Suite("OCI layout")
struct OCILayoutTests {
    @Test("the same tree gives the same digests despite mtimes, creation order and owners")
    func reproducible() throws {
        let dir = try TemporaryDirectory()
        let devices = SampleTree.canMakeDevices
        try SampleTree.build(at: dir.sub("tree1"), reverse: false, mtime: 1_000_000_000, owner: nil, devices: devices)
        try SampleTree.build(at: dir.sub("tree2"), reverse: true, mtime: 1_600_000_000,
                             owner: isRoot() ? (1234, 5678) : nil, devices: devices)
        if isRoot() {
            #expect(try lstatChecked(dir.sub("tree2/etc/hostname").path).st_uid == 1234)
            #expect(try lstatChecked(dir.sub("tree2/usr/bin/su").path).st_mode & 0o7777 == 0o4755)
        }
        #expect(try lstatChecked(dir.sub("tree1/bin/tool").path).st_mtim.tv_sec
                != lstatChecked(dir.sub("tree2/bin/tool").path).st_mtim.tv_sec)

        let one = try buildImage(from: dir.sub("tree1"), into: dir.sub("layout1"))
        let two = try buildImage(from: dir.sub("tree2"), into: dir.sub("layout2"))
        #expect(one.layer == two.layer)
        #expect(one.manifest.digest == two.manifest.digest)
        #expect(try Data(contentsOf: URL(fileURLWithPath: one.blobPath)) == Data(contentsOf: URL(fileURLWithPath: two.blobPath)))
        let files1 = try FileManager.default.subpathsOfDirectory(atPath: one.layout.path).sorted()
        let files2 = try FileManager.default.subpathsOfDirectory(atPath: two.layout.path).sorted()
        #expect(files1 == files2)
        #expect(try Data(contentsOf: one.layout.appendingPathComponent("index.json"))
                == Data(contentsOf: two.layout.appendingPathComponent("index.json")))

        // The epoch does change the layer, as it should.
        let later = try buildImage(from: dir.sub("tree1"), into: dir.sub("layout3"), epoch: 1_700_000_000)
        #expect(later.layer.diffID != one.layer.diffID)
        // An injected file changes it too.
        let injected = try buildImage(from: dir.sub("tree1"), into: dir.sub("layout4"),
                                      extra: [try .file("/etc/hostname", contents: "vm-7\n")])
        #expect(injected.layer.diffID != one.layer.diffID)
    }

    @Test("system tar lists and extracts the layer faithfully")
    func systemTar() throws {
        let dir = try TemporaryDirectory()
        let devices = SampleTree.canMakeDevices
        let root = dir.sub("tree")
        try SampleTree.build(at: root, reverse: false, mtime: 1_111_111_111, owner: nil, devices: devices)
        let image = try buildImage(from: root, into: dir.sub("layout"),
                                   extra: [try .file("etc/motd", contents: "injected\n", mode: 0o640)], epoch: 1_700_000_000)

        let gzipTest = try sh("gzip -t < '\(image.blobPath)'")
        #expect(gzipTest.status == 0, "\(gzipTest.stderr)")

        let listing = try run("tar", ["--quoting-style=literal", "-tzvf", image.blobPath])
        try #require(listing.status == 0, "\(listing.stderr)")
        let lines = listing.output.split(separator: "\n").map(String.init)
        #expect(lines.count > 20)
        for line in lines {
            #expect(line.contains(" 0/0 "), "owner in: \(line)")
            #expect(line.contains("2023-11-14 22:13"), "mtime in: \(line)")
        }
        let names = try run("tar", ["--quoting-style=literal", "-tzf", image.blobPath]).output.split(separator: "\n").map(String.init)
        #expect(names == names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(names.contains("etc/") && names.contains("etc/motd") && names.contains(SampleTree.paxPath))
        #expect(!names.contains { $0.hasPrefix("./") || $0.hasPrefix("/") })
        #expect(lines.contains { $0.hasPrefix("-rwsr-xr-x") && $0.hasSuffix(" usr/bin/su") })
        #expect(lines.contains { $0.hasPrefix("hrwxr-xr-x") && $0.hasSuffix(" bin/tool-link link to bin/tool") })
        if devices {
            #expect(lines.contains { $0.hasPrefix("crw-rw-rw-") && $0.contains(" 1,3 ") && $0.hasSuffix(" dev/null") })
        }

        let out = dir.sub("extracted")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let extract = try run("tar", ["-xzpf", image.blobPath, "-C", out.path, "--numeric-owner"])
        try #require(extract.status == 0, "\(extract.stderr)")
        try compareTrees(source: root, extracted: out, expectedOwner: isRoot() ? 0 : getuid(),
                         extraPaths: ["etc/motd"])
        #expect(try String(contentsOf: out.appendingPathComponent("etc/motd"), encoding: .utf8) == "injected\n")
        #expect(try lstatChecked(out.appendingPathComponent("etc/motd").path).st_mode & 0o7777 == 0o640)
        #expect(try lstatChecked(out.appendingPathComponent("bin/tool").path).st_mtim.tv_sec == 1_700_000_000)
    }

    @Test("diff_id is the sha256 of the gunzipped blob; the digest is the sha256 of the blob")
    func digestsMatchCoreutils() throws {
        let dir = try TemporaryDirectory()
        let root = dir.sub("tree")
        try SampleTree.build(at: root, reverse: false, mtime: 5, owner: nil, devices: false)
        let image = try buildImage(from: root, into: dir.sub("layout"))
        let unzipped = try sh("gunzip -c < '\(image.blobPath)' | sha256sum")
        #expect(unzipped.status == 0)
        #expect("sha256:" + unzipped.output.prefix(64) == image.layer.diffID)
        let size = try sh("gunzip -c < '\(image.blobPath)' | wc -c")
        #expect(Int64(size.output.trimmingCharacters(in: .whitespacesAndNewlines)) == image.layer.uncompressedSize)
        #expect(try "sha256:" + sha256sum(image.blobPath) == image.layer.descriptor.digest)
        let attributes = try FileManager.default.attributesOfItem(atPath: image.blobPath)
        #expect((attributes[.size] as? NSNumber)?.int64Value == image.layer.descriptor.size)
        // Every blob is named after its content.
        for name in try FileManager.default.contentsOfDirectory(atPath: image.layout.path + "/blobs/sha256") {
            #expect(try sha256sum(image.layout.path + "/blobs/sha256/" + name) == name)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: image.layout.path + "/blobs") == ["sha256"])
    }

    @Test("skopeo and umoci accept the layout")
    func externalTools() throws {
        let dir = try TemporaryDirectory()
        let root = dir.sub("tree")
        let devices = SampleTree.canMakeDevices
        try SampleTree.build(at: root, reverse: false, mtime: 77, owner: nil, devices: devices)
        var config = imageConfig
        config.history = [History(created: SourceDateEpoch.zero.rfc3339, createdBy: "lmctl image build kernel")]
        let image = try buildImage(from: root, into: dir.sub("layout"), tag: "kernel-6.1", config: config)
        let reference = image.layout.path + ":kernel-6.1"
        var accepted: [String] = []

        let raw = try run("skopeo", ["inspect", "--raw", "oci:" + reference])
        let manifestBytes = try Data(contentsOf: image.layout.appendingPathComponent(
            "blobs/sha256/" + OCIDigest.hex(of: image.manifest.digest)))
        if raw.status == 0 {
            #expect(raw.stdout == manifestBytes)
            let inspect = try run("skopeo", ["inspect", "oci:" + reference])
            #expect(inspect.status == 0, "\(inspect.stderr)")
            let info = try JSONSerialization.jsonObject(with: inspect.stdout) as? [String: Any]
            #expect(info?["Architecture"] as? String == "amd64")
            #expect((info?["Layers"] as? [String]) == [image.layer.descriptor.digest])
            accepted.append("skopeo")
        } else {
            Issue.record("skopeo inspect failed: \(raw.stderr)")
        }

        let stat = try run("umoci", ["stat", "--image", reference])
        if stat.status == 0 {
            #expect(stat.output.contains("lmctl image build kernel"), "\(stat.output)")
            accepted.append("umoci stat")
        } else {
            Issue.record("umoci stat failed: \(stat.stderr)")
        }
        if isRoot() {
            let bundle = dir.sub("bundle")
            let unpack = try run("umoci", ["unpack", "--image", reference, bundle.path])
            if unpack.status == 0 {
                try compareTrees(source: root, extracted: bundle.appendingPathComponent("rootfs"), expectedOwner: 0)
                accepted.append("umoci unpack")
            } else {
                Issue.record("umoci unpack failed: \(unpack.stderr)")
            }
        }
        #expect(!accepted.isEmpty)
    }

    @Test("long paths and long symlink targets survive tar -x")
    func longNamesRoundTrip() throws {
        let dir = try TemporaryDirectory()
        let veryLong = (0..<6).map { String(repeating: Character(UnicodeScalar(UInt8(97 + $0))), count: 90) }.joined(separator: "/")
        let target = "../" + String(repeating: "x", count: 200) + "/../target"
        let entries = [
            try TarEntry.file(veryLong + "/file.txt", contents: "deep\n"),
            try TarEntry.symlink("short", target: target),
            try TarEntry.symlink(veryLong + "/link", target: target),
            try TarEntry.file(SampleTree.splitPath, contents: "split\n", mode: 0o600),
        ]
        let writer = try OCILayoutWriter(directory: dir.sub("layout"))
        let layer = try writer.addLayer(entries: entries)
        let blob = dir.sub("layout").path + "/blobs/sha256/" + (try OCIDigest.hex(of: layer.descriptor.digest))
        let out = dir.sub("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let extract = try run("tar", ["-xzf", blob, "-C", out.path])
        try #require(extract.status == 0, "\(extract.stderr)")
        #expect(try String(contentsOf: out.appendingPathComponent(veryLong + "/file.txt"), encoding: .utf8) == "deep\n")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out.appendingPathComponent("short").path) == target)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out.appendingPathComponent(veryLong + "/link").path) == target)
        #expect(try String(contentsOf: out.appendingPathComponent(SampleTree.splitPath), encoding: .utf8) == "split\n")
        #expect(try lstatChecked(out.appendingPathComponent(SampleTree.splitPath).path).st_mode & 0o7777 == 0o600)
    }

    @Test("layout files, reader, re-tagging, reopening, duplicate blobs")
    func layoutBookkeeping() throws {
        let dir = try TemporaryDirectory()
        let layoutURL = dir.sub("layout")
        let writer = try OCILayoutWriter(directory: layoutURL)
        #expect(try String(contentsOf: layoutURL.appendingPathComponent("oci-layout"), encoding: .utf8)
                == #"{"imageLayoutVersion":"1.0.0"}"#)
        #expect(try OCILayout(directory: layoutURL).index.manifests.isEmpty)

        let entries = [try TarEntry.file("boot/vmlinux", contents: pseudoRandomBytes(count: 10_000, seed: 1), mode: 0o644)]
        let layer = try writer.addLayer(entries: entries)
        #expect(try writer.addLayer(entries: entries) == layer) // same blob twice
        let first = try writer.writeImage(layers: [layer], config: imageConfig, tag: "6.1")
        #expect(first.annotations == [AnnotationKey.refName: "6.1"])
        #expect(first.platform == Platform(architecture: "amd64"))
        #expect(first.mediaType == MediaType.imageManifest)

        var config2 = imageConfig
        config2.config?.cmd = ["/bin/sh"]
        let retagged = try writer.writeImage(layers: [layer], config: config2, tag: "6.1")
        #expect(retagged.digest != first.digest)
        _ = try writer.writeImage(layers: [layer], config: imageConfig, tag: "latest")
        #expect(try FileManager.default.contentsOfDirectory(atPath: layoutURL.path + "/blobs") == ["sha256"])

        let layout = try OCILayout(directory: layoutURL)
        #expect(layout.index.manifests.count == 2)
        #expect(layout.tags["6.1"]?.digest == retagged.digest)
        #expect(layout.tags["latest"]?.digest == first.digest)
        let manifest = try layout.manifest(forTag: "6.1")
        #expect(manifest.schemaVersion == 2)
        #expect(manifest.mediaType == MediaType.imageManifest)
        #expect(manifest.layers == [layer.descriptor])
        let config = try layout.configuration(of: manifest)
        #expect(config.rootfs.diffIDs == [layer.diffID])
        #expect(config.rootfs.type == "layers")
        #expect(config.config?.cmd == ["/bin/sh"])
        try layout.verifyBlob(layer.descriptor)
        #expect(try layout.readBlob(layer.descriptor).count == Int(layer.descriptor.size))
        #expect(throws: OCIImageError.tagNotFound("nope")) { try layout.descriptor(forTag: "nope") }

        // Reopening keeps the existing tags.
        let reopened = try OCILayoutWriter(directory: layoutURL)
        #expect(reopened.index == layout.index)
        _ = try reopened.writeImage(layers: [], config: imageConfig, tag: "empty")
        #expect(try OCILayout(directory: layoutURL).tags.keys.sorted() == ["6.1", "empty", "latest"])

        // Corruption is detected.
        let blobPath = try layout.blobURL(for: layer.descriptor.digest).path
        try chmodChecked(blobPath, 0o644)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: blobPath))
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data([0xFF, 0x00, 0xFF]))
        try handle.close()
        #expect(throws: OCIImageError.self) { try layout.verifyBlob(layer.descriptor) }
        #expect(throws: OCIImageError.self) { try layout.readBlob(layer.descriptor) }

        // A failed layer leaves no temporary file behind.
        let vanished = try TarEntry(path: "gone", kind: .regularFile(.file(path: dir.path + "/missing", size: 3)), mode: 0o644)
        #expect(throws: OCIImageError.self) { try writer.addLayer(entries: [vanished]) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: layoutURL.path + "/blobs") == ["sha256"])

        for bad in ["", "-x", "a b", "a..b", "a/", "tag!", "a---b"] {
            #expect(throws: OCIImageError.invalidTag(bad)) { try writer.writeImage(layers: [], config: imageConfig, tag: bad) }
        }
        for good in ["v1", "6.1.0-rc1", "a--b", "registry.io/x:y", "A_b"] {
            #expect(throws: Never.self) { try OCILayoutWriter.validateTag(good) }
        }
    }
}

/// Compares an extracted tree with its source: types, permission bits, contents, link targets, devices, owners.
private func compareTrees(source: URL, extracted: URL, expectedOwner: UInt32, extraPaths: [String] = []) throws {
    let fm = FileManager.default
    let paths = try fm.subpathsOfDirectory(atPath: source.path).sorted()
    #expect(!paths.isEmpty)
    for path in paths {
        let a = source.appendingPathComponent(path).path
        let b = extracted.appendingPathComponent(path).path
        let sa = try lstatChecked(a)
        guard let sb = try? lstatChecked(b) else {
            Issue.record("missing after extraction: \(path)")
            continue
        }
        #expect(sa.st_mode == sb.st_mode, "mode of \(path): \(String(sa.st_mode, radix: 8)) vs \(String(sb.st_mode, radix: 8))")
        #expect(sb.st_uid == expectedOwner && sb.st_gid == expectedOwner, "owner of \(path)")
        switch sa.st_mode & S_IFMT {
        case S_IFREG:
            #expect(try Data(contentsOf: URL(fileURLWithPath: a)) == Data(contentsOf: URL(fileURLWithPath: b)), "content of \(path)")
        case S_IFLNK:
            #expect(try fm.destinationOfSymbolicLink(atPath: a) == fm.destinationOfSymbolicLink(atPath: b), "target of \(path)")
        case S_IFCHR, S_IFBLK:
            #expect(sa.st_rdev == sb.st_rdev, "device of \(path)")
        default:
            break
        }
    }
    let extractedPaths = try fm.subpathsOfDirectory(atPath: extracted.path).sorted()
    #expect(extractedPaths == (paths + extraPaths).sorted())
    let tool = try lstatChecked(extracted.appendingPathComponent("bin/tool").path)
    let link = try lstatChecked(extracted.appendingPathComponent("bin/tool-link").path)
    #expect(tool.st_ino == link.st_ino, "hard link kept")
}
