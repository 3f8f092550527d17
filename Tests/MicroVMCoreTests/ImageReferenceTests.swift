import MicroVMCore
import Testing

private let digest = "sha256:" + String(repeating: "0123456789abcdef", count: 4)

@Suite("ImageReference")
struct ImageReferenceTests {
    struct Parsed: Sendable, CustomTestStringConvertible {
        var raw: String
        var registry: String
        var repository: String
        var tag: String?
        var digest: String?
        var normalized: String
        var testDescription: String { raw }
    }

    static let wellFormed: [Parsed] = [
        Parsed(raw: "busybox", registry: "docker.io", repository: "library/busybox", tag: "latest",
               normalized: "docker.io/library/busybox:latest"),
        Parsed(raw: "busybox:1.36", registry: "docker.io", repository: "library/busybox", tag: "1.36",
               normalized: "docker.io/library/busybox:1.36"),
        Parsed(raw: "docker.io/busybox", registry: "docker.io", repository: "library/busybox", tag: "latest",
               normalized: "docker.io/library/busybox:latest"),
        Parsed(raw: "weaveworks/ignite-kernel:5.10.51", registry: "docker.io", repository: "weaveworks/ignite-kernel", tag: "5.10.51",
               normalized: "docker.io/weaveworks/ignite-kernel:5.10.51"),
        Parsed(raw: "127.0.0.1:5111/lm-test/kernel:latest", registry: "127.0.0.1:5111", repository: "lm-test/kernel", tag: "latest",
               normalized: "127.0.0.1:5111/lm-test/kernel:latest"),
        Parsed(raw: "localhost/x", registry: "localhost", repository: "x", tag: "latest",
               normalized: "localhost/x:latest"),
        Parsed(raw: "localhost:5000/a/b/c:v1", registry: "localhost:5000", repository: "a/b/c", tag: "v1",
               normalized: "localhost:5000/a/b/c:v1"),
        Parsed(raw: "ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77", registry: "ghcr.io", repository: "liquidmetal-dev/flintlock-kernel",
               tag: "5.10.77", normalized: "ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77"),
        Parsed(raw: "busybox@" + digest, registry: "docker.io", repository: "library/busybox", tag: nil, digest: digest,
               normalized: "docker.io/library/busybox@" + digest),
        Parsed(raw: "ghcr.io/a/b:v2@" + digest, registry: "ghcr.io", repository: "a/b", tag: "v2", digest: digest,
               normalized: "ghcr.io/a/b:v2@" + digest),
        Parsed(raw: "abc__d-e---f/h_i:Tag_1.x-y", registry: "docker.io", repository: "abc__d-e---f/h_i", tag: "Tag_1.x-y",
               normalized: "docker.io/abc__d-e---f/h_i:Tag_1.x-y"),
    ]

    @Test("well-formed references parse and normalise like containerd", arguments: wellFormed)
    func parses(_ p: Parsed) throws {
        let ref = try ImageReference(parsing: p.raw)
        #expect(ref.registry == p.registry)
        #expect(ref.repository == p.repository)
        #expect(ref.tag == p.tag)
        #expect(ref.digest == p.digest)
        #expect(ref.description == p.normalized)
    }

    @Test("the normalised name parses back to the same reference", arguments: wellFormed)
    func roundTrip(_ p: Parsed) throws {
        let ref = try ImageReference(parsing: p.raw)
        let again = try ImageReference(parsing: ref.description)
        #expect(again == ref)
        #expect(again.description == ref.description)
    }

    @Test("manifestReference prefers the digest over the tag")
    func manifestReference() throws {
        #expect(try ImageReference(parsing: "busybox").manifestReference == "latest")
        #expect(try ImageReference(parsing: "busybox:1.36").manifestReference == "1.36")
        #expect(try ImageReference(parsing: "busybox@" + digest).manifestReference == digest)
        #expect(try ImageReference(parsing: "busybox:1.36@" + digest).manifestReference == digest)
    }

    @Test("references naming the same image compare equal after normalisation")
    func equalAfterNormalisation() throws {
        let forms = ["busybox", "busybox:latest", "docker.io/busybox", "docker.io/library/busybox:latest"]
        let refs = try forms.map { try ImageReference(parsing: $0) }
        #expect(Set(refs).count == 1)
    }

    @Test("malformed references are INVALID_ARGUMENT and quote the input", arguments: [
        "", " ", " spaced", "spaced ", "UPPER/case", "Busybox", "a//b", "host:notaport/x", "host:99999/x", "host:/x",
        "x@sha256:short", "x@md5:" + String(repeating: "0", count: 64), "x@" + digest + "0", "x@",
        "busybox:", "busybox:.tag", "busybox:-tag", "busybox:" + String(repeating: "t", count: 129), "busybox:t@g",
        "/busybox", "busybox/", "a..b", "a.-b", "a___b", "-a", "a-", "ex ample.com/x", "ho_st.io/x",
        "ghcr.io/", "ghcr.io/:tag",
    ])
    func rejects(_ raw: String) {
        let error = #expect(throws: AgentError.self) { try ImageReference(parsing: raw) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.hasPrefix("malformed image reference \"\(raw)\"") == true, "\(String(describing: error))")
    }

    @Test("repository components accept the OCI separators", arguments: ["a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5"])
    func separators(_ component: String) throws {
        #expect(try ImageReference(parsing: component).repository == "library/" + component)
    }

    @Test("a 128-character tag is the longest allowed")
    func longestTag() throws {
        let tag = String(repeating: "t", count: 128)
        #expect(try ImageReference(parsing: "busybox:" + tag).tag == tag)
    }

    @Test("a digest must be ASCII lowercase hex", arguments: [
        // U+FF41 FULLWIDTH LATIN SMALL LETTER A: Character.isHexDigit is true for fullwidth forms.
        "sha256:" + String(repeating: "\u{FF41}", count: 64),
        "sha256:" + String(repeating: "\u{FF10}", count: 64),
    ])
    func digestMustBeASCII(_ d: String) {
        #expect(throws: AgentError.self) { try ImageReference(parsing: "busybox@" + d) }
    }

    @Test("a registry port must be plain digits")
    func registryPortDigitsOnly() {
        #expect(throws: AgentError.self) { try ImageReference(parsing: "registry.local:+5000/x") }
    }
}
