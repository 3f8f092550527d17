import Foundation
import Yams

/// How to reach a Kubernetes API server: resolved from a kubeconfig (a context's cluster and user)
/// or from the in-cluster service account.
public struct KubernetesConnection: Sendable, Equatable {
    public enum Credentials: Sendable, Equatable {
        case none
        /// A bearer token.
        case token(String)
        /// A token read from this file before each request (service accounts' tokens rotate).
        case tokenFile(String)
        /// A client certificate and key (PEM).
        case clientCertificate(certificatePEM: Data, keyPEM: Data)
        case basic(username: String, password: String)
    }

    /// "https://host:port" (no trailing slash).
    public var server: String
    /// PEM bundle that signs the server's certificate; nil: the system's roots.
    public var certificateAuthorityPEM: Data?
    public var insecureSkipTLSVerify: Bool
    public var tlsServerName: String?
    public var credentials: Credentials
    /// The context's namespace (or the service account's), "default" when none.
    public var namespace: String

    public init(server: String, certificateAuthorityPEM: Data? = nil, insecureSkipTLSVerify: Bool = false, tlsServerName: String? = nil,
                credentials: Credentials = .none, namespace: String = "default") {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.certificateAuthorityPEM = certificateAuthorityPEM
        self.insecureSkipTLSVerify = insecureSkipTLSVerify
        self.tlsServerName = tlsServerName
        self.credentials = credentials
        self.namespace = namespace
    }
}

public struct KubeConfigError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// kubeconfig files as kubectl reads them: `clusters`, `users`, `contexts`, `current-context`;
/// several files (KUBECONFIG=a:b) merge with the first file winning for each name; relative paths
/// resolve against the file that names them.
public enum KubeConfig {
    /// The connection for `context` (default: `current-context`) from the files in `$KUBECONFIG`, else
    /// `~/.kube/config`.
    public static func load(context: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> KubernetesConnection {
        let paths: [String]
        if let k = environment["KUBECONFIG"], !k.isEmpty {
            paths = k.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        } else {
            paths = ["\(environment["HOME"] ?? NSHomeDirectory())/.kube/config"]
        }
        var files: [(path: String, text: String)] = []
        for p in paths {
            guard let data = FileManager.default.contents(atPath: p) else {
                if paths.count == 1 { throw KubeConfigError("kubeconfig \(p) cannot be read") }
                continue  // kubectl skips missing files in a KUBECONFIG list
            }
            files.append((p, String(decoding: data, as: UTF8.self)))
        }
        return try resolve(files: files, context: context)
    }

    /// Resolves a connection from kubeconfig texts (first file wins for each name).
    public static func resolve(files: [(path: String, text: String)], context requested: String? = nil) throws -> KubernetesConnection {
        var clusters: [String: ([String: Any], String)] = [:]
        var users: [String: ([String: Any], String)] = [:]
        var contexts: [String: [String: Any]] = [:]
        var current: String?
        for (path, text) in files {
            let loaded: Any?
            do { loaded = try Yams.load(yaml: text) } catch { throw KubeConfigError("kubeconfig \(path) is not YAML: \(error)") }
            guard let doc = loaded as? [String: Any] else {
                if loaded == nil { continue }
                throw KubeConfigError("kubeconfig \(path) is not a mapping")
            }
            let dir = (path as NSString).deletingLastPathComponent
            for (key, target) in [("clusters", "cluster"), ("users", "user")] {
                for entry in doc[key] as? [[String: Any]] ?? [] {
                    guard let name = entry["name"] as? String, let body = entry[target] as? [String: Any] else { continue }
                    if key == "clusters" { if clusters[name] == nil { clusters[name] = (body, dir) } } else if users[name] == nil { users[name] = (body, dir) }
                }
            }
            for entry in doc["contexts"] as? [[String: Any]] ?? [] {
                guard let name = entry["name"] as? String, let body = entry["context"] as? [String: Any] else { continue }
                if contexts[name] == nil { contexts[name] = body }
            }
            if current == nil, let c = doc["current-context"] as? String, !c.isEmpty { current = c }
        }
        guard let contextName = requested ?? current else { throw KubeConfigError("no context: the kubeconfig has no current-context and none was named") }
        guard let ctx = contexts[contextName] else { throw KubeConfigError("context \"\(contextName)\" is not in the kubeconfig (have: \(contexts.keys.sorted().joined(separator: ", ")))") }
        guard let clusterName = ctx["cluster"] as? String, let (cluster, clusterDir) = clusters[clusterName] else {
            throw KubeConfigError("context \"\(contextName)\" names cluster \"\(ctx["cluster"] ?? "")\", which is not in the kubeconfig")
        }
        guard let server = cluster["server"] as? String, !server.isEmpty else { throw KubeConfigError("cluster \"\(clusterName)\" has no server") }
        var conn = KubernetesConnection(server: server, namespace: (ctx["namespace"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? "default")
        conn.certificateAuthorityPEM = try bytes(cluster, data: "certificate-authority-data", file: "certificate-authority", dir: clusterDir, what: "cluster \"\(clusterName)\"")
        conn.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        conn.tlsServerName = cluster["tls-server-name"] as? String
        if let userName = ctx["user"] as? String, !userName.isEmpty {
            guard let (user, userDir) = users[userName] else { throw KubeConfigError("context \"\(contextName)\" names user \"\(userName)\", which is not in the kubeconfig") }
            let what = "user \"\(userName)\""
            if let token = user["token"] as? String, !token.isEmpty {
                conn.credentials = .token(token)
            } else if let file = user["tokenFile"] as? String, !file.isEmpty {
                conn.credentials = .tokenFile(absolute(file, dir: userDir))
            } else if let cert = try bytes(user, data: "client-certificate-data", file: "client-certificate", dir: userDir, what: what) {
                guard let key = try bytes(user, data: "client-key-data", file: "client-key", dir: userDir, what: what) else {
                    throw KubeConfigError("\(what) has a client certificate but no client key")
                }
                conn.credentials = .clientCertificate(certificatePEM: cert, keyPEM: key)
            } else if let u = user["username"] as? String, let p = user["password"] as? String {
                conn.credentials = .basic(username: u, password: p)
            } else if user["exec"] != nil || user["auth-provider"] != nil {
                throw KubeConfigError("\(what) authenticates with an exec plugin or auth provider, which this client does not run; use a token or a client certificate")
            }
        }
        return conn
    }

    /// The in-cluster connection: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's token
    /// (re-read before each request), CA and namespace under `directory`.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws -> KubernetesConnection {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty, let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty else {
            throw KubeConfigError("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
        }
        guard FileManager.default.fileExists(atPath: "\(directory)/token") else { throw KubeConfigError("no service account token at \(directory)/token") }
        let namespace = (try? String(contentsOfFile: "\(directory)/namespace", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return KubernetesConnection(server: "https://\(hostPart):\(port)", certificateAuthorityPEM: FileManager.default.contents(atPath: "\(directory)/ca.crt"),
                                    credentials: .tokenFile("\(directory)/token"), namespace: namespace.flatMap { $0.isEmpty ? nil : $0 } ?? "default")
    }

    static func absolute(_ path: String, dir: String) -> String {
        path.hasPrefix("/") || dir.isEmpty ? path : (dir as NSString).appendingPathComponent(path)
    }

    static func bytes(_ m: [String: Any], data: String, file: String, dir: String, what: String) throws -> Data? {
        if let b64 = m[data] as? String, !b64.isEmpty {
            guard let d = Data(base64Encoded: b64, options: .ignoreUnknownCharacters) else { throw KubeConfigError("\(what): \(data) is not base64") }
            return d
        }
        if let f = m[file] as? String, !f.isEmpty {
            let p = absolute(f, dir: dir)
            guard let d = FileManager.default.contents(atPath: p) else { throw KubeConfigError("\(what): \(file) \(p) cannot be read") }
            return d
        }
        return nil
    }
}
