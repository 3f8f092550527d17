import Foundation
import Testing
@testable import OCIImage

@Suite("Canonical JSON and OCI types")
struct JSONTests {
    private func text(_ value: some Encodable) throws -> String {
        String(decoding: try CanonicalJSON.encode(value), as: UTF8.self)
    }

    let configDigest = "sha256:" + String(repeating: "a", count: 64)
    let layerDigest = "sha256:" + String(repeating: "b", count: 64)

    @Test("manifest: spec field names, sorted keys, compact, slashes unescaped")
    func manifest() throws {
        let manifest = ImageManifest(
            config: Descriptor(mediaType: MediaType.imageConfig, digest: configDigest, size: 123),
            layers: [Descriptor(mediaType: MediaType.layerTarGzip, digest: layerDigest, size: 456)]
        )
        #expect(try text(manifest) == """
        {"config":{"digest":"\(configDigest)","mediaType":"application/vnd.oci.image.config.v1+json","size":123},\
        "layers":[{"digest":"\(layerDigest)","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":456}],\
        "mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}
        """)
        let decoded = try JSONDecoder().decode(ImageManifest.self, from: CanonicalJSON.data(manifest))
        #expect(decoded == manifest)
    }

    @Test("image configuration field names")
    func configuration() throws {
        var config = ImageConfiguration(
            platform: Platform(architecture: "amd64"),
            config: ContainerConfig(user: "0:0", exposedPorts: ["22/tcp": EmptyObject()], env: ["PATH=/usr/bin:/bin"],
                                    entrypoint: ["/sbin/init"], cmd: ["--verbose"], workingDir: "/",
                                    labels: ["io.liquidmetal.kind": "rootfs"]),
            diffIDs: [layerDigest],
            created: SourceDateEpoch.zero.rfc3339,
            history: [History(created: "1970-01-01T00:00:00Z", createdBy: "lmctl image build", emptyLayer: false)]
        )
        config.osVersion = nil
        #expect(try text(config) == """
        {"architecture":"amd64",\
        "config":{"Cmd":["--verbose"],"Entrypoint":["/sbin/init"],"Env":["PATH=/usr/bin:/bin"],"ExposedPorts":{"22/tcp":{}},\
        "Labels":{"io.liquidmetal.kind":"rootfs"},"User":"0:0","WorkingDir":"/"},\
        "created":"1970-01-01T00:00:00Z",\
        "history":[{"created":"1970-01-01T00:00:00Z","created_by":"lmctl image build","empty_layer":false}],\
        "os":"linux","rootfs":{"diff_ids":["\(layerDigest)"],"type":"layers"}}
        """)
        let decoded = try JSONDecoder().decode(ImageConfiguration.self, from: CanonicalJSON.data(config))
        #expect(decoded == config)
    }

    @Test("index with platform and annotations")
    func index() throws {
        let index = ImageIndex(manifests: [Descriptor(
            mediaType: MediaType.imageManifest, digest: configDigest, size: 9,
            annotations: [AnnotationKey.refName: "v1.0"], platform: Platform(architecture: "arm64", variant: "v8"))])
        #expect(try text(index) == """
        {"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"v1.0"},"digest":"\(configDigest)",\
        "mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"arm64","os":"linux","variant":"v8"},\
        "size":9}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}
        """)
        #expect(try JSONDecoder().decode(ImageIndex.self, from: CanonicalJSON.data(index)) == index)
    }

    @Test("keys sort by UTF-8 bytes; strings escape only what JSON requires")
    func sortingAndEscaping() throws {
        let labels = ["a9": "1", "a10": "2", "B": "3", "é": "4", "_": "5"]
        #expect(try text(labels) == #"{"B":"3","_":"5","a10":"2","a9":"1","é":"4"}"#)
        #expect(try text(["s": "quote\" back\\ nl\n tab\t ctl\u{01} slash/ é 😀"]) ==
                #"{"s":"quote\" back\\ nl\n tab\t ctl\u0001 slash/ é 😀"}"#)
        #expect(try text([1.5, 2.0, -0.25]) == "[1.5,2,-0.25]")
        #expect(throws: EncodingError.self) { try CanonicalJSON.encode([Double.nan]) }
        #expect(try text(EmptyObject()) == "{}")
        #expect(try text([Int?.none, 1]) == "[null,1]")
        // Same value, same bytes, whatever the dictionary's insertion history.
        var a: [String: String] = [:]
        var b: [String: String] = [:]
        for i in 0..<200 { a["k\(i)"] = "\(i)" }
        for i in (0..<200).reversed() { b["k\(i)"] = "\(i)" }
        #expect(try CanonicalJSON.encode(a) == CanonicalJSON.encode(b))
    }

    @Test("canonical JSON parses to the same value as JSONEncoder output")
    func agreesWithFoundation() throws {
        let config = ImageConfiguration(platform: Platform(architecture: "amd64"),
                                        config: ContainerConfig(env: ["A=b/c"], labels: ["x": "y\"z"]),
                                        diffIDs: [layerDigest, configDigest])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let ours = try JSONSerialization.jsonObject(with: CanonicalJSON.data(config)) as? NSDictionary
        let foundation = try JSONSerialization.jsonObject(with: encoder.encode(config)) as? NSDictionary
        #expect(ours != nil && ours == foundation)
    }

    @Test("SourceDateEpoch formatting and parsing")
    func epoch() {
        #expect(SourceDateEpoch.zero.rfc3339 == "1970-01-01T00:00:00Z")
        #expect(SourceDateEpoch(seconds: 1_700_000_000).rfc3339 == "2023-11-14T22:13:20Z")
        #expect(SourceDateEpoch(seconds: 951_782_400).rfc3339 == "2000-02-29T00:00:00Z")
        #expect(SourceDateEpoch(seconds: 4_102_444_799).rfc3339 == "2099-12-31T23:59:59Z")
        #expect(SourceDateEpoch(environmentValue: "1700000000")?.seconds == 1_700_000_000)
        #expect(SourceDateEpoch(environmentValue: "-5") == nil)
        #expect(SourceDateEpoch(environmentValue: "12a") == nil)
        #expect(SourceDateEpoch(environmentValue: nil) == nil)
    }

    @Test("digest parsing")
    func digests() throws {
        #expect(try OCIDigest.hex(of: layerDigest) == String(repeating: "b", count: 64))
        for bad in ["sha256:abc", "md5:" + String(repeating: "a", count: 32), "sha256:" + String(repeating: "A", count: 64), "nocolon"] {
            #expect(throws: OCIImageError.invalidDigest(bad)) { try OCIDigest.parse(bad) }
        }
        #expect(OCIDigest.sha256(Array("abc".utf8)) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
