import Foundation
import HostSystem
import OCIImage

/// Container images a Debian root filesystem carries for containerd, so that a node starts its containers without
/// reaching any registry (air-gapped sites): each image is copied from an OCI layout into
/// `/var/lib/liquidmetal/images/<n>/` (an OCI layout of its own, naming the image), and a first-boot unit,
/// `lm-preload-images.service`, imports them into containerd's `k8s.io` namespace (the kubelet's) before the
/// kubelet and cloud-init's commands start.
public enum PreloadedImages {
    /// Where the image keeps the layouts, and the stamp that says they were imported.
    public static let directory = "/var/lib/liquidmetal/images"
    public static let stamp = "/var/lib/liquidmetal/images/.imported"
    public static let unitName = "lm-preload-images.service"

    /// `NAME=DIR[:TAG]` (the `--preload-image` flag): the reference containerd will know the image by, and an OCI
    /// layout with it (the entry tagged TAG; without one, the layout's only image).
    public static func parse(flag: String) throws -> RootfsRecipe.PreloadImage {
        guard let eq = flag.firstIndex(of: "="), eq != flag.startIndex else {
            throw ImageBuildError("--preload-image \"\(flag)\": expected NAME=DIR[:TAG], e.g. registry.k8s.io/pause:3.10.2=./pause-layout")
        }
        let name = String(flag[..<eq])
        var path = String(flag[flag.index(after: eq)...])
        if path.hasPrefix("oci-layout:") { path.removeFirst("oci-layout:".count) }
        var tag: String?
        // DIR:TAG, unless the whole thing is a directory (a path may hold a colon).
        if !FileManager.default.fileExists(atPath: path), let colon = path.lastIndex(of: ":") {
            tag = String(path[path.index(after: colon)...])
            path = String(path[..<colon])
        }
        return .init(name: name, layout: URL(fileURLWithPath: path).standardizedFileURL.path, tag: tag)
    }

    /// Checks a reference's form: `[registry/]repository:tag` or `@sha256:...`, as containerd names images.
    static func validate(_ image: RootfsRecipe.PreloadImage, field: String) throws {
        let pattern = #"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$"#
        guard RootfsRecipe.matches(image.name, pattern), image.name.contains("/") else {
            throw ImageBuildError("recipe: \(field).name \"\(image.name)\" is not a full image reference with a tag, e.g. registry.k8s.io/pause:3.10.2")
        }
        guard FileManager.default.fileExists(atPath: image.layout + "/oci-layout") else {
            throw ImageBuildError("recipe: \(field) (\(image.name)): \(image.layout) is not an OCI image layout (no oci-layout file)")
        }
    }

    /// Copies each image's manifest, configuration and layers into the tree (an OCI layout per image naming it,
    /// under `directory`) and writes the import script and unit; the caller enables the unit. Returns the bytes of
    /// blobs copied.
    static func write(_ images: [RootfsRecipe.PreloadImage], into root: String,
                      writeFile: (String, Data, UInt32) throws -> Void) throws -> Int64 {
        var total: Int64 = 0
        for (i, image) in images.enumerated() {
            let layout = try OCILayout(directory: URL(fileURLWithPath: image.layout))
            var descriptor = try pick(image, in: layout)
            // A multi-platform index: the linux/amd64 manifest (the guests' platform).
            if descriptor.mediaType == MediaType.imageIndex || descriptor.mediaType == "application/vnd.docker.distribution.manifest.list.v2+json" {
                let index = try JSONDecoder().decode(ImageIndex.self, from: layout.readBlob(descriptor))
                guard let m = index.manifests.first(where: { $0.platform?.os == "linux" && $0.platform?.architecture == "amd64" }) else {
                    throw ImageBuildError("\(image.name): the index in \(image.layout) has no linux/amd64 image")
                }
                descriptor = m
            }
            let manifest = try layout.manifest(descriptor)
            let target = "\(directory)/\(String(format: "%02d", i))"
            var seen = Set<String>()
            for blob in [descriptor, manifest.config] + manifest.layers where seen.insert(blob.digest).inserted {
                let source = try layout.blobURL(for: blob.digest)
                let dest = try DebianRootfs.hostPath(of: "\(target)/blobs/sha256/\(OCIDigest.hex(of: blob.digest))", in: root)
                try HostFiles.createDirectory(URL(fileURLWithPath: dest).deletingLastPathComponent().path)
                try? FileManager.default.removeItem(atPath: dest)
                do { try FileManager.default.copyItem(atPath: source.path, toPath: dest) } catch {
                    throw ImageBuildError("\(image.name): cannot copy blob \(blob.digest) from \(image.layout): \(error.localizedDescription)")
                }
                total += blob.size
            }
            var entry = descriptor
            entry.annotations = [containerdNameAnnotation: image.name, AnnotationKey.refName: image.name]
            entry.platform = nil
            try writeFile("\(target)/index.json", CanonicalJSON.data(ImageIndex(manifests: [entry])), 0o644)
            try writeFile("\(target)/oci-layout", Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), 0o644)
            try writeFile("\(target)/name", Data((image.name + "\n").utf8), 0o644)
        }
        try writeFile("/usr/local/sbin/lm-preload-images", Data(importScript.utf8), 0o755)
        try writeFile("/etc/systemd/system/\(unitName)", Data(unit.utf8), 0o644)
        return total
    }

    /// The annotation `ctr images import` names an image by.
    static let containerdNameAnnotation = "io.containerd.image.name"

    static func pick(_ image: RootfsRecipe.PreloadImage, in layout: OCILayout) throws -> Descriptor {
        if let tag = image.tag { return try layout.descriptor(forTag: tag) }
        guard layout.index.manifests.count == 1, let only = layout.index.manifests.first else {
            let tags = layout.tags.keys.sorted()
            throw ImageBuildError("\(image.name): \(image.layout) holds \(layout.index.manifests.count) images; name one as DIR:TAG (tags: \(tags.joined(separator: ", ")))")
        }
        return only
    }

    /// Imports every layout once; says on the console what it imported and how long it took.
    static let importScript = """
        #!/bin/sh
        # Written by lmctl image build: imports the container images this image carries (under
        # \(directory)) into containerd's k8s.io namespace, where the kubelet finds them, once.
        set -eu
        dir=\(directory)
        t0=$(cut -d' ' -f1 /proc/uptime)
        n=0 pids="" failed=0
        for d in "$dir"/*/; do
          [ -f "$d/index.json" ] || continue
          name=$(cat "$d/name")
          # In parallel: unpacking the layers is what takes the time.
          (tar -C "$d" -cf - oci-layout index.json blobs | ctr --namespace k8s.io images import - >/dev/null &&
            echo "lm-preload-images: imported $name") &
          pids="$pids $!"
          n=$((n + 1))
        done
        for p in $pids; do wait "$p" || failed=$((failed + 1)); done
        if [ "$failed" -gt 0 ]; then echo "lm-preload-images: $failed of $n imports failed" >&2; exit 1; fi
        touch \(stamp)
        echo "lm-preload-images: $n images imported in $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.0f", b - a}') s"

        """

    static let unit = """
        # Written by lmctl image build: the images this image carries, imported into containerd on first boot.
        [Unit]
        Description=Import preloaded container images into containerd (Liquid Metal)
        Requires=containerd.service
        After=containerd.service
        Before=kubelet.service cloud-final.service
        ConditionPathExists=!\(stamp)

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/local/sbin/lm-preload-images
        StandardOutput=journal+console

        [Install]
        WantedBy=multi-user.target

        """
}
