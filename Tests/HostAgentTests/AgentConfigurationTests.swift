import Foundation
import HostAgent
import MicroVMCore
import Testing

@Suite("flintlockd configuration")
struct AgentConfigurationTests {
    @Test("Flintlock's defaults")
    func defaults() throws {
        let c = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: [:])
        #expect(c.grpcEndpoint == "localhost:9090")
        #expect(c.stateDir == "/var/lib/flintlock")
        #expect(c.containerdSocket == "/run/containerd/containerd.sock")
        #expect(c.containerdNamespace == "flintlock")
        #expect(c.resyncPeriod == .seconds(600))
        #expect(c.basicAuthToken == nil)
        #expect(c.qemuAccel == "auto")
    }

    @Test("a flag beats the environment, which beats the config file")
    func precedence() throws {
        let file = """
            grpc-endpoint: 0.0.0.0:1111
            state-dir: /from/file
            containerd-ns: filens
            resync-period: 90s
            insecure-registry: [reg.a:5000, reg.b:5000]
            """
        let env = ["FLINTLOCKD_STATE_DIR": "/from/env", "FLINTLOCKD_CONTAINERD_NS": "envns", "UNRELATED": "x"]
        let c = try AgentConfiguration.resolve(configFileText: file, environment: env, flags: ["containerd-ns": "flagns"])
        #expect(c.grpcEndpoint == "0.0.0.0:1111")
        #expect(c.stateDir == "/from/env")
        #expect(c.containerdNamespace == "flagns")
        #expect(c.resyncPeriod == .seconds(90))
        #expect(c.insecureRegistries == ["reg.a:5000", "reg.b:5000"])
    }

    @Test("bad settings are refused with the setting named", arguments: [
        ("resync-period", "soon"), ("qemu-accel", "hvf"), ("containerd-snapshotter", "zfs"), ("grpc-endpoint", "nohost"),
        ("reconcile-workers", "0"), ("bridge-name", "a-bridge-name-too-long"), ("insecure", "maybe"),
    ])
    func refused(key: String, value: String) {
        #expect {
            _ = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: [key: value])
        } throws: { error in
            (error as? AgentError)?.message.contains(key) == true
        }
    }

    @Test("the agent's bridge: --bridge-cidr needs --bridge-name and a gateway address with room for guests", arguments: [
        (["bridge-cidr": "10.200.0.1/24"], "bridge-cidr"),
        (["bridge-name": "lm0", "bridge-cidr": "10.200.0.0/24"], "bridge-cidr"),
        (["bridge-name": "lm0", "bridge-cidr": "10.200.0.1/31"], "bridge-cidr"),
        (["bridge-name": "lm0", "bridge-cidr": "10.200.0.1"], "bridge-cidr"),
        (["bridge-name": "lm0", "bridge-cidr": "10.200.0.1/24", "bridge-nameservers": "1.1.1.1,dns"], "bridge-nameservers[1]"),
        (["bridge-nameservers": "1.1.1.1"], "bridge-nameservers"),
        (["parent-iface": "eth/0"], "parent-iface"),
    ])
    func agentBridgeRefused(flags: [String: String], field: String) {
        #expect {
            _ = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: flags)
        } throws: { error in
            (error as? AgentError)?.message.hasPrefix("\(field): ") == true
        }
    }

    @Test("the agent's bridge from flags")
    func agentBridge() throws {
        let c = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["bridge-name": "lm0", "bridge-cidr": "10.200.0.1/24", "bridge-nameservers": "1.1.1.1, 9.9.9.9"])
        let n = try #require(try c.agentNetwork())
        #expect(n.bridge == "lm0" && n.gateway.description == "10.200.0.1/24" && n.nameservers == ["1.1.1.1", "9.9.9.9"])
        #expect(try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["bridge-name": "br0"]).agentNetwork() == nil)
    }

    @Test("unknown config file keys and TLS without a key are refused")
    func refusedFile() {
        #expect(throws: AgentError.self) { _ = try AgentConfiguration.resolve(configFileText: "grpc-endpiont: x:1", environment: [:], flags: [:]) }
        #expect(throws: AgentError.self) { _ = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["tls-cert": "/c.pem"]) }
    }

    @Test("durations", arguments: [("10m", 600_000), ("30s", 30_000), ("1h30m", 5_400_000), ("500ms", 500), ("1.5s", 1500)])
    func durations(text: String, ms: Int64) throws {
        #expect(try AgentConfiguration.parseDuration(text, key: "d") == .milliseconds(ms))
    }
}
