import AsyncHTTPClient
import Crypto
import OCIImage
import Foundation
import Logging
import MicroVMCore
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Credentials for one registry: a user name and password (or token as password).
public struct RegistryCredential: Sendable, Equatable {
    public var username: String
    public var password: String
    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }
}

/// How the agent reaches registries: which ones speak plain HTTP, and the credentials to use.
public struct RegistryConfig: Sendable {
    /// Registries (host or host:port) reached over plain HTTP. Loopback registries always are.
    public var plainHTTP: Set<String>
    public var credentials: [String: RegistryCredential]

    public init(plainHTTP: Set<String> = [], credentials: [String: RegistryCredential] = [:]) {
        self.plainHTTP = plainHTTP
        self.credentials = credentials
    }

    /// Reads credentials from a Docker-style `config.json` (`{"auths": {"host": {"auth": base64(user:pass)}}}`,
    /// or `username`/`password` fields).
    public static func loadCredentials(dockerConfigAt path: String) throws -> [String: RegistryCredential] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AgentError(.invalidArgument, "registry credentials file \(path) cannot be read")
        }
        struct File: Decodable {
            struct Entry: Decodable { var auth: String?; var username: String?; var password: String?; var identitytoken: String? }
            var auths: [String: Entry]?
        }
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: data) } catch {
            throw AgentError(.invalidArgument, "registry credentials file \(path) is not valid JSON: \(error)")
        }
        var out: [String: RegistryCredential] = [:]
        for (host, e) in file.auths ?? [:] {
            let key = host.replacingOccurrences(of: "https://", with: "").replacingOccurrences(of: "http://", with: "").split(separator: "/").first.map(String.init) ?? host
            if let auth = e.auth, let decoded = Data(base64Encoded: auth), let s = String(data: decoded, encoding: .utf8), let colon = s.firstIndex(of: ":") {
                out[key] = RegistryCredential(username: String(s[..<colon]), password: String(s[s.index(after: colon)...]))
            } else if let u = e.username, let p = e.password {
                out[key] = RegistryCredential(username: u, password: p)
            } else if let t = e.identitytoken {
                out[key] = RegistryCredential(username: "<token>", password: t)
            }
        }
        return out
    }

    func usesPlainHTTP(_ registry: String) -> Bool {
        if plainHTTP.contains(registry) { return true }
        let host: String
        if registry.hasPrefix("[") {
            host = String(registry.dropFirst().prefix { $0 != "]" })
        } else {
            host = String(registry.split(separator: ":").first ?? "")
        }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1"
    }
}

/// A failure talking to a registry, worded for the VM's status.
public struct RegistryError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// A small client for the Docker Registry HTTP API v2 / OCI distribution: manifests and blobs,
/// with basic and bearer-token authentication.
public final class RegistryClient: Sendable {
    let http: HTTPClient
    let config: RegistryConfig
    let logger: Logger
    private let tokens = TokenCache()

    public static let manifestMediaTypes = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]

    public init(config: RegistryConfig, logger: Logger) {
        var c = HTTPClient.Configuration()
        c.redirectConfiguration = .follow(max: 5, allowCycles: false)
        c.timeout.connect = .seconds(10)
        c.timeout.read = .seconds(60)
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
        self.config = config
        self.logger = logger
    }

    public func shutdown() async throws { try await http.shutdown() }

    func baseURL(_ ref: ImageReference) -> String {
        let registry = ref.registry == "docker.io" ? "registry-1.docker.io" : ref.registry
        return (config.usesPlainHTTP(ref.registry) ? "http://" : "https://") + registry
    }

    /// Fetches the manifest `reference` names (following an index to linux/amd64).
    /// Returns the manifest's descriptor and bytes.
    public func resolveManifest(_ ref: ImageReference) async throws -> (Descriptor, Data) {
        var (desc, body) = try await fetchManifest(ref, reference: ref.manifestReference)
        if desc.mediaType.contains("index") || desc.mediaType.contains("manifest.list") {
            struct Index: Decodable { var manifests: [Descriptor] }
            let index = try JSONDecoder().decode(Index.self, from: body)
            guard let pick = index.manifests.first(where: { $0.platform?.os == "linux" && $0.platform?.architecture == "amd64" })
                ?? (index.manifests.count == 1 ? index.manifests.first : nil)
            else { throw RegistryError(message: "\(ref): the image index has no linux/amd64 manifest") }
            (desc, body) = try await fetchManifest(ref, reference: pick.digest)
        }
        return (desc, body)
    }

    func fetchManifest(_ ref: ImageReference, reference: String) async throws -> (Descriptor, Data) {
        var req = HTTPClientRequest(url: "\(baseURL(ref))/v2/\(ref.repository)/manifests/\(reference)")
        req.headers.add(name: "Accept", value: Self.manifestMediaTypes.joined(separator: ", "))
        let resp = try await send(req, ref: ref, what: "manifest \(reference)")
        let body = try await resp.body.collect(upTo: 8 << 20)
        let data = Data(buffer: body)
        let digest = sha256Digest(data)
        if reference.hasPrefix("sha256:") && digest != reference {
            throw RegistryError(message: "\(ref): manifest digest mismatch: asked for \(reference), got \(digest)")
        }
        var mediaType = resp.headers.first(name: "Content-Type") ?? ""
        if let semi = mediaType.firstIndex(of: ";") { mediaType = String(mediaType[..<semi]) }
        if !Self.manifestMediaTypes.contains(mediaType) {
            struct Probe: Decodable { var mediaType: String? }
            mediaType = (try? JSONDecoder().decode(Probe.self, from: data).mediaType) ?? "application/vnd.oci.image.manifest.v1+json"
        }
        return (Descriptor(mediaType: mediaType, digest: digest, size: Int64(data.count)), data)
    }

    /// Streams a blob from `offset` on, calling `consume` with each chunk in order. A non-zero offset
    /// is asked for with a `Range` header; when the registry sends the whole blob anyway, the bytes
    /// before `offset` are dropped here.
    public func fetchBlob(_ ref: ImageReference, digest: String, from offset: Int64 = 0, consume: (ByteBuffer) async throws -> Void) async throws {
        var req = HTTPClientRequest(url: "\(baseURL(ref))/v2/\(ref.repository)/blobs/\(digest)")
        if offset > 0 { req.headers.add(name: "Range", value: "bytes=\(offset)-") }
        let resp = try await send(req, ref: ref, what: "blob \(digest)", timeout: .minutes(30), expect: offset > 0 ? [200, 206] : [200])
        // A registry that ignores Range sends the whole blob: skip what the caller already has.
        var skip = resp.status.code == 206 ? 0 : offset
        for try await var chunk in resp.body {
            if skip > 0 {
                let n = Int(min(Int64(chunk.readableBytes), skip))
                chunk.moveReaderIndex(forwardBy: n)
                skip -= Int64(n)
                if chunk.readableBytes == 0 { continue }
            }
            try await consume(chunk)
        }
    }

    /// Sends a request, answering one authentication challenge (Basic or Bearer) if needed, and
    /// checks the answer is one of `expect`.
    func send(
        _ request: HTTPClientRequest, ref: ImageReference, what: String, timeout: TimeAmount = .seconds(60),
        push: Bool = false, expect: Set<UInt> = [200]
    ) async throws -> HTTPClientResponse {
        var req = request
        let scope = "repository:\(ref.repository):\(push ? "pull,push" : "pull")"
        if let auth = await tokens.get(registry: ref.registry, scope: scope) { req.headers.replaceOrAdd(name: "Authorization", value: auth) }
        var resp: HTTPClientResponse
        do {
            resp = try await http.execute(req, timeout: timeout)
        } catch {
            throw RegistryError(message: "registry \(ref.registry) cannot be reached for \(ref) (\(what)): \(error)")
        }
        if resp.status == .unauthorized, let challenge = resp.headers.first(name: "WWW-Authenticate") {
            _ = try? await resp.body.collect(upTo: 1 << 20)
            let auth = try await authorization(for: challenge, ref: ref, scope: scope)
            await tokens.set(auth, registry: ref.registry, scope: scope)
            req.headers.replaceOrAdd(name: "Authorization", value: auth)
            do {
                resp = try await http.execute(req, timeout: timeout)
            } catch {
                throw RegistryError(message: "registry \(ref.registry) cannot be reached for \(ref) (\(what)): \(error)")
            }
        }
        guard expect.contains(resp.status.code) else {
            let body = (try? await resp.body.collect(upTo: 64 << 10)).map { String(buffer: $0) } ?? ""
            throw RegistryError(message: "registry \(ref.registry) answered \(resp.status.code) \(resp.status.reasonPhrase) for \(ref) (\(what))" + Self.summarize(body))
        }
        return resp
    }

    /// Pulls the `errors[].message` out of a registry's JSON error body.
    static func summarize(_ body: String) -> String {
        struct Errors: Decodable { struct E: Decodable { var code: String?; var message: String? }; var errors: [E]? }
        if let e = try? JSONDecoder().decode(Errors.self, from: Data(body.utf8)), let list = e.errors, !list.isEmpty {
            return ": " + list.map { [$0.code, $0.message].compactMap { $0 }.joined(separator: " ") }.joined(separator: "; ")
        }
        let trimmed = body.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? "" : ": " + String(trimmed.prefix(200))
    }

    func authorization(for challenge: String, ref: ImageReference, scope: String) async throws -> String {
        let cred = config.credentials[ref.registry]
        let lower = challenge.lowercased()
        if lower.hasPrefix("basic") {
            guard let cred else { throw RegistryError(message: "registry \(ref.registry) requires credentials for \(ref) and none are configured") }
            return "Basic " + Data("\(cred.username):\(cred.password)".utf8).base64EncodedString()
        }
        guard lower.hasPrefix("bearer") else { throw RegistryError(message: "registry \(ref.registry) asks for unsupported authentication: \(challenge)") }
        let params = Self.parseChallenge(String(challenge.dropFirst("bearer".count)))
        guard let realm = params["realm"], var url = URLComponents(string: realm) else {
            throw RegistryError(message: "registry \(ref.registry) sent a bearer challenge without a realm")
        }
        var q = url.queryItems ?? []
        if let service = params["service"] { q.append(URLQueryItem(name: "service", value: service)) }
        q.append(URLQueryItem(name: "scope", value: params["scope"] ?? scope))
        url.queryItems = q
        var req = HTTPClientRequest(url: url.string ?? realm)
        if let cred { req.headers.add(name: "Authorization", value: "Basic " + Data("\(cred.username):\(cred.password)".utf8).base64EncodedString()) }
        let resp: HTTPClientResponse
        do { resp = try await http.execute(req, timeout: .seconds(30)) } catch {
            throw RegistryError(message: "token service \(realm) for \(ref.registry) cannot be reached: \(error)")
        }
        let body = try await resp.body.collect(upTo: 1 << 20)
        guard resp.status == .ok else {
            throw RegistryError(message: "token service \(realm) refused access to \(ref) (\(resp.status.code))" + Self.summarize(String(buffer: body)))
        }
        struct Token: Decodable { var token: String?; var access_token: String? }
        guard let t = try? JSONDecoder().decode(Token.self, from: Data(buffer: body)), let token = t.token ?? t.access_token else {
            throw RegistryError(message: "token service \(realm) returned no token")
        }
        return "Bearer \(token)"
    }

    /// Parses `realm="…",service="…",scope="…"`.
    static func parseChallenge(_ s: String) -> [String: String] {
        var out: [String: String] = [:]
        var rest = Substring(s.trimmingCharacters(in: .whitespaces))
        while !rest.isEmpty {
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingCharacters(in: CharacterSet(charactersIn: " ,")).lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                let end = rest.firstIndex(of: "\"") ?? rest.endIndex
                value = String(rest[..<end])
                rest = end < rest.endIndex ? rest[rest.index(after: end)...] : ""
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end])
                rest = rest[end...]
            }
            out[key] = value
            rest = rest.drop { $0 == "," || $0 == " " }
        }
        return out
    }
}

/// `sha256:<hex>` of some bytes.
func sha256Digest(_ data: some DataProtocol) -> String {
    "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

actor TokenCache {
    var values: [String: String] = [:]
    func get(registry: String, scope: String) -> String? { values["\(registry) \(scope)"] }
    func set(_ v: String, registry: String, scope: String) { values["\(registry) \(scope)"] = v }
}
