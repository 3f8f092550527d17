import Foundation
import KubernetesClient
import Testing

@Suite("kubeconfig and in-cluster configuration")
struct KubeConfigTests {
    let ca = Data("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".utf8)

    var config: String {
        """
        apiVersion: v1
        kind: Config
        current-context: dev
        clusters:
        - name: dev-cluster
          cluster:
            server: https://10.0.0.1:6443/
            certificate-authority-data: \(ca.base64EncodedString())
            tls-server-name: api.dev
        - name: lab
          cluster: {server: "https://lab:6443", certificate-authority: certs/ca.crt, insecure-skip-tls-verify: true}
        users:
        - name: admin
          user: {client-certificate-data: \(Data("CERT".utf8).base64EncodedString()), client-key-data: \(Data("KEY".utf8).base64EncodedString())}
        - name: robot
          user: {token: abc.def}
        - name: sso
          user: {exec: {command: kubelogin}}
        - name: halfcert
          user: {client-certificate-data: \(Data("CERT".utf8).base64EncodedString())}
        contexts:
        - name: dev
          context: {cluster: dev-cluster, user: admin, namespace: capmvm-system}
        - name: lab
          context: {cluster: lab, user: robot}
        - name: sso
          context: {cluster: dev-cluster, user: sso}
        - name: broken
          context: {cluster: nowhere, user: robot}
        - name: half
          context: {cluster: dev-cluster, user: halfcert}
        """
    }

    @Test("the current context: server, CA data, TLS server name, client certificate, namespace")
    func currentContext() throws {
        let c = try KubeConfig.resolve(files: [("/home/u/.kube/config", config)])
        #expect(c.server == "https://10.0.0.1:6443" && c.certificateAuthorityPEM == ca && c.tlsServerName == "api.dev")
        #expect(c.credentials == .clientCertificate(certificatePEM: Data("CERT".utf8), keyPEM: Data("KEY".utf8)))
        #expect(c.namespace == "capmvm-system")
    }

    @Test("a named context: CA file relative to the kubeconfig, token, default namespace")
    func namedContext() throws {
        let dir = NSTemporaryDirectory() + "/lm-kube-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: "\(dir)/certs", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try ca.write(to: URL(fileURLWithPath: "\(dir)/certs/ca.crt"))
        try Data(config.utf8).write(to: URL(fileURLWithPath: "\(dir)/config"))
        let c = try KubeConfig.load(context: "lab", environment: ["KUBECONFIG": "\(dir)/missing:\(dir)/config"])
        #expect(c.server == "https://lab:6443" && c.certificateAuthorityPEM == ca && c.insecureSkipTLSVerify)
        #expect(c.credentials == .token("abc.def") && c.namespace == "default")
    }

    @Test("several files: the first one wins for each name and for current-context")
    func merge() throws {
        let first = "current-context: lab\nclusters:\n- name: lab\n  cluster: {server: https://first:6443}\n"
        let c = try KubeConfig.resolve(files: [("/a/config", first), ("/b/config", config)])
        #expect(c.server == "https://first:6443" && c.credentials == .token("abc.def"))
    }

    @Test("errors name what is missing", arguments: [
        ("nope", "context \"nope\" is not in the kubeconfig"),
        ("broken", "names cluster \"nowhere\""),
        ("sso", "exec plugin"),
        ("half", "no client key"),
        ("lab", "certificate-authority /k8s/certs/ca.crt cannot be read"),
    ])
    func errors(context: String, message: String) {
        #expect { _ = try KubeConfig.resolve(files: [("/k8s/config", config)], context: context) } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test("in cluster: service host and port, the token file, CA and namespace")
    func inCluster() throws {
        let dir = NSTemporaryDirectory() + "/lm-sa-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("tok".utf8).write(to: URL(fileURLWithPath: "\(dir)/token"))
        try ca.write(to: URL(fileURLWithPath: "\(dir)/ca.crt"))
        try Data("capmvm-system\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/namespace"))
        let c = try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"], directory: dir)
        #expect(c == KubernetesConnection(server: "https://10.96.0.1:443", certificateAuthorityPEM: ca, credentials: .tokenFile("\(dir)/token"), namespace: "capmvm-system"))
        #expect(throws: KubeConfigError.self) { _ = try KubeConfig.inCluster(environment: [:], directory: dir) }
    }
}
