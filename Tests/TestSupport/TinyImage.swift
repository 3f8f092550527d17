import Foundation
import HostSystem

/// A tiny OCI image made with the system's tools, for registry and containerd tests.
public enum TinyImage {
    /// A unique image in a temporary directory: one layer (a gzip tar made by the system's tar),
    /// its config and manifest. With `payloadBytes`, the layer also holds `/etc/payload`, that many
    /// random (incompressible) bytes.
    public static func make(payloadBytes: Int = 0) async throws -> (layer: String, layerDigest: String, layerSize: Int64, config: Data, manifest: Data) {
        let dir = NSTemporaryDirectory() + "/lm-push-\(UUID().uuidString.prefix(6))"
        try HostFiles.createDirectory("\(dir)/root/etc")
        try Data("pushed \(UUID().uuidString)\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/root/etc/marker"))
        if payloadBytes > 0 {
            try await HostProcess.run(["dd", "if=/dev/urandom", "of=\(dir)/root/etc/payload", "bs=65536", "count=\((payloadBytes + 65535) / 65536)", "status=none"])
        }
        try await HostProcess.run(["tar", "-C", "\(dir)/root", "-czf", "\(dir)/layer.tar.gz", "etc"])
        let layerData = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/layer.tar.gz"))
        let layerDigest = try await sha256(file: "\(dir)/layer.tar.gz")
        let diffID = "sha256:" + (try await HostProcess.run(["sh", "-c", "gunzip -c '\(dir)/layer.tar.gz' | sha256sum"]).prefix(64))
        let config = Data(#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["\#(diffID)"]}}"#.utf8)
        let configDigest = "sha256:" + (try await HostProcess.run(["sh", "-c", "printf '%s' '\(String(decoding: config, as: UTF8.self))' | sha256sum"]).prefix(64))
        let manifest = Data(#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(configDigest)","size":\#(config.count)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"\#(layerDigest)","size":\#(layerData.count)}]}"#.utf8)
        return ("\(dir)/layer.tar.gz", layerDigest, Int64(layerData.count), config, manifest)
    }

    static func sha256(file: String) async throws -> String {
        "sha256:" + (try await HostProcess.run(["sha256sum", file]).prefix(64))
    }
}
