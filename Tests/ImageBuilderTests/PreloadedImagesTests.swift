import Foundation
import HostSystem
import Testing
import TestSupport
@testable import ImageBuilder

@Suite("Preloaded container images (air-gapped nodes)")
struct PreloadedImagesTests {
    func tempDir() throws -> String { try makeTemporaryDirectory("lm-preload") }

    @Test("--preload-image NAME=DIR[:TAG] and NAME=oci-layout:DIR parse; a flag without NAME= is refused with an example")
    func flags() throws {
        let a = try PreloadedImages.parse(flag: "registry.k8s.io/pause:3.10.2=/srv/pause:3.10.2")
        #expect(a == .init(name: "registry.k8s.io/pause:3.10.2", layout: "/srv/pause", tag: "3.10.2"))
        let b = try PreloadedImages.parse(flag: "registry.k8s.io/etcd:3.6.8-0=oci-layout:/srv/etcd")
        #expect(b == .init(name: "registry.k8s.io/etcd:3.6.8-0", layout: "/srv/etcd", tag: nil))
        #expect { try PreloadedImages.parse(flag: "/srv/pause") } throws: { ($0 as? ImageBuildError)?.description.contains("NAME=DIR[:TAG]") == true }
    }

    @Test("a recipe's images parse, print back and are validated: full references, OCI layouts, no duplicates")
    func recipeImages() throws {
        let dir = try tempDir()
        defer { try? HostFiles.remove(dir) }
        try HostFiles.createDirectory("\(dir)/pause")
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: "\(dir)/pause/oci-layout"))
        let yaml = """
            packages: [containerd]
            images:
              - {name: "registry.k8s.io/pause:3.10.2", layout: pause, tag: "3.10.2"}
            """
        let r = try RootfsRecipe.parse(yaml: yaml, baseDirectory: dir)
        #expect(r.images == [.init(name: "registry.k8s.io/pause:3.10.2", layout: "\(dir)/pause", tag: "3.10.2")])
        try r.validate()
        #expect(try RootfsRecipe.parse(yaml: r.yaml(), baseDirectory: "/").images == r.images)
        for (image, needle) in [(RootfsRecipe.PreloadImage(name: "pause", layout: "\(dir)/pause"), "full image reference"),
                                (.init(name: "registry.k8s.io/pause:3.10.2", layout: dir), "not an OCI image layout")] {
            var bad = r
            bad.images = [image]
            #expect { try bad.validate() } throws: { ($0 as? ImageBuildError)?.description.contains(needle) == true }
        }
        var twice = r
        twice.images += r.images
        #expect { try twice.validate() } throws: { ($0 as? ImageBuildError)?.description.contains("listed twice") == true }
    }

    @Test("the copied layout names the image, holds its blobs, and the real ctr imports it under that name",
          .enabled(if: TestEnvironment.systemTestsEnabled, "needs containerd and the fixture layouts (always runs in CI)"))
    func importsWithCtr() async throws {
        let env = try await TestEnvironment.shared()  // also builds the fixture layouts
        let root = try tempDir()
        defer { try? HostFiles.remove(root) }
        let name = "registry.k8s.io/lm-test/preloaded:v1"
        let image = RootfsRecipe.PreloadImage(name: name, layout: FixtureImages.layoutRoot + "/root", tag: "latest")
        let bytes = try PreloadedImages.write([image], into: root) { path, data, mode in
            let full = root + path
            try HostFiles.createDirectory(URL(fileURLWithPath: full).deletingLastPathComponent().path)
            try data.write(to: URL(fileURLWithPath: full))
            chmod(full, mode_t(mode))
        }
        #expect(bytes > 0)
        let dir = root + PreloadedImages.directory + "/00"
        let index = try String(contentsOfFile: dir + "/index.json", encoding: .utf8)
        #expect(index.contains(#""io.containerd.image.name":"\#(name)""#), "\(index)")
        #expect(try String(contentsOfFile: root + "/etc/systemd/system/lm-preload-images.service", encoding: .utf8).contains("Before=kubelet.service cloud-final.service"))
        let script = try String(contentsOfFile: root + "/usr/local/sbin/lm-preload-images", encoding: .utf8)
        #expect(script.contains("ctr --namespace k8s.io images import"))
        // What the guest's lm-preload-images does, against the test containerd (its own namespace).
        let ns = "lm-preload-test"
        let ctr = ["ctr", "--address", env.containerdSocket, "--namespace", ns]
        _ = try? await HostProcess.run(ctr + ["images", "rm", name])
        try await HostProcess.run(["sh", "-c", "tar -C '\(dir)' -cf - oci-layout index.json blobs | \(ctr.joined(separator: " ")) images import -"])
        let listed = try await HostProcess.run(ctr + ["images", "ls", "-q"])
        #expect(listed.split(separator: "\n").contains { $0 == name }, "\(listed)")
        try await HostProcess.run(ctr + ["images", "rm", name])
    }
}
