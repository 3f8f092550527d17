import AgentClient
import CAPMVMAPI
import CAPMVMController
import FlintlockAPI
import Foundation
import HostSystem
import KubernetesClient
import KubernetesTestServer
import Logging
import Placement
import Testing
import TestSupport
import Yams

/// The MicrovmMachine reconciler against the in-process test API server (no Kubernetes API server
/// runs here) and a real flintlockd booting real microVMs.
@Suite("capmvm machine reconciler", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct CAPMVMMachineEndToEndTests {
    @Test("create as Cluster API would → the VM on the host with CAPMVM's metadata → providerID, ready, addresses; a lost providerID does not duplicate; a VM gone after its providerID was recorded is a terminal failure, not recreated; delete after the Machine and Cluster went → VM deleted with the cluster's token, finalizer removed")
    func machineLifecycle() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            try await withAgent(env, ["--basic-auth-token", "s3cret"]) { agent in
                let reconciler = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
                let ns = "default"
                // The objects Cluster API and the kubeadm bootstrap provider would have made; the agent
                // wants the token of the cluster's basic-auth Secret.
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "mvm-auth", namespace: ns), data: [agent.address: Data("s3cret".utf8)]))
                _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "mvm", namespace: ns), spec: .init(
                    controlPlaneEndpoint: APIEndpoint(host: "10.97.0.60", port: 6443),
                    sshPublicKeys: [SSHPublicKey(user: "root", authorizedKeys: ["ssh-ed25519 AAAAcluster"])],
                    placement: .init(staticPool: .init(hosts: [.init(endpoint: agent.address)], basicAuthSecret: "mvm-auth")))))
                _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "mvm", namespace: ns),
                                                  spec: .init(controlPlaneEndpoint: APIEndpoint(host: "10.97.0.60", port: 6443), infrastructureRef: nil)))
                _ = try await kube.mergePatch(Cluster.self, name: "mvm", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"mvm"}}}"#.utf8))
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "m1-bootstrap", namespace: ns), type: "cluster.x-k8s.io/secret",
                                                 data: ["value": Data("#cloud-config\nruncmd: [echo kubeadm]\n".utf8)]))
                let machine = try await kube.create(Machine(metadata: ObjectMeta(name: "m1", namespace: ns, labels: ["cluster.x-k8s.io/cluster-name": "mvm"]),
                                                            spec: .init(clusterName: "mvm", bootstrap: .init(dataSecretName: "m1-bootstrap"), infrastructureRef: .microvmMachine("m1"))))
                var spec = MicrovmMachine.Spec(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: env.rootImage),
                                               kernel: .init(image: env.kernelImage, filename: "boot/vmlinuz"), initrd: .init(image: env.kernelImage, filename: "boot/initrd"),
                                               networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap", address: .init(address: "10.97.0.61/24", gateway: nil, nameservers: nil))])
                spec.kernelCmdline = ["lm_ip": "10.97.0.61/24"]
                spec.sshPublicKeys = [SSHPublicKey(user: "root", authorizedKeys: ["ssh-ed25519 AAAAmachine"])]
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m1", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "mvm"], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "m1", uid: machine.metadata.uid ?? "")]), spec: spec))

                // Not before the cluster's infrastructure is ready.
                #expect(try await reconciler.reconcile(namespace: ns, name: "m1") == .done)
                let waiting = try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns)
                #expect(waiting.status?.conditions?.first?.reason == "WaitingForClusterInfra")
                let client = try agent.client()
                defer { client.close() }
                #expect(try await client.list().isEmpty)
                _ = try await kube.mergePatch(Cluster.self, name: "mvm", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)

                // Created on the host, with CAPMVM's request.
                _ = try await reconciler.reconcile(namespace: ns, name: "m1")
                let vms = try await client.list()
                try #require(vms.count == 1)
                let vm = vms[0]
                #expect(vm.spec.id == "m1" && vm.spec.namespace == ns && vm.spec.labels["cluster-name"] == "mvm")
                #expect(vm.spec.kernel.addNetworkConfig)
                func doc(_ k: String) -> String { String(decoding: Data(base64Encoded: vm.spec.metadata[k] ?? "") ?? Data(), as: UTF8.self) }
                #expect(doc("user-data") == "#cloud-config\nruncmd: [echo kubeadm]\n")
                #expect(doc("meta-data").contains("vm_host: \(agent.address)") && doc("meta-data").contains("local_hostname: m1") && doc("meta-data").contains("platform: liquid_metal"))
                #expect(doc("vendor-data").contains("AAAAmachine") && !doc("vendor-data").contains("AAAAcluster"), "the machine's keys win for the same user")
                var m = try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns)
                #expect(m.spec.providerID == "microvm://\(agent.address)/\(vm.spec.uid)")
                #expect(m.metadata.finalizers == [InfrastructureGroup.machineFinalizer])
                #expect(m.metadata.annotations?[placementAnnotation] == agent.address, "the chosen host is recorded")

                // Running → ready, with its addresses.
                _ = try await client.wait(uid: vm.spec.uid, timeout: .seconds(120)) { $0.status.state == .created }
                _ = try await reconciler.reconcile(namespace: ns, name: "m1")
                m = try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns)
                #expect(m.status?.ready == true && m.status?.vmState == "running")
                #expect(m.status?.addresses?.contains(MachineAddress(type: "InternalIP", address: "10.97.0.61")) == true, "\(String(describing: m.status?.addresses))")
                #expect(m.status?.conditions?.first { $0.type == "MicrovmReady" }?.status == "True")

                // The providerID patch "lost" (as after a failed patch): the VM is found again, not created twice.
                _ = try await kube.mergePatch(MicrovmMachine.self, name: "m1", namespace: ns, patch: Data(#"{"spec":{"providerID":null}}"#.utf8))
                _ = try await reconciler.reconcile(namespace: ns, name: "m1")
                #expect(try await client.list().count == 1)
                #expect(try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns).spec.providerID == "microvm://\(agent.address)/\(vm.spec.uid)")

                #expect(m.status?.initialization?.provisioned == true, "v1beta2's provisioned")
                #expect(m.status?.conditions?.first { $0.type == "Ready" }?.status == "True", "Ready mirrors MicrovmReady")
                #expect(m.status?.conditions?.first { $0.type == "Paused" }?.status == "False")

                // A second machine whose VM vanishes after its providerID was recorded: the providerID
                // cannot change (the CRD's rule, enforced by the test API server as by a real one), so
                // the machine fails for good and no second VM is made.
                let m3owner = try await kube.create(Machine(metadata: ObjectMeta(name: "m3", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "mvm"]),
                                                            spec: .init(clusterName: "mvm", bootstrap: .init(dataSecretName: "m1-bootstrap"), infrastructureRef: .microvmMachine("m3"))))
                var spec3 = spec
                spec3.networkInterfaces = [.init(guestDeviceName: "eth0", type: "tap")]
                spec3.kernelCmdline = nil
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m3", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "mvm"], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "m3", uid: m3owner.metadata.uid ?? "")]), spec: spec3))
                _ = try await reconciler.reconcile(namespace: ns, name: "m3")
                let m3 = try await kube.get(MicrovmMachine.self, name: "m3", namespace: ns)
                let m3id = try #require(m3.spec.providerID.flatMap(ProviderID.init))
                try await client.delete(uid: m3id.uid)
                try await eventually("m3's VM gone from the host") { try await client.list().count == 1 }
                #expect(try await reconciler.reconcile(namespace: ns, name: "m3") == .done)
                let lost = try await kube.get(MicrovmMachine.self, name: "m3", namespace: ns)
                #expect(lost.spec.providerID == m3.spec.providerID, "the providerID stays")
                #expect(lost.status?.failureReason == "UpdateError" && lost.status?.failureMessage?.contains("gone from host") == true, "\(String(describing: lost.status))")
                #expect(lost.status?.ready == false && lost.status?.conditions?.first { $0.type == "Ready" }?.reason == MachineReconciler.lostReason)
                _ = try await reconciler.reconcile(namespace: ns, name: "m3")
                #expect(try await client.list().map(\.spec.id) == ["m1"], "no VM recreated for m3")
                try await kube.delete(Machine.self, name: "m3", namespace: ns)
                while case .requeue = try await reconciler.reconcile(namespace: ns, name: "m3") { try await Task.sleep(for: .milliseconds(200)) }
                await #expect { _ = try await kube.get(MicrovmMachine.self, name: "m3", namespace: ns) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }

                // Delete the Cluster, then the owner Machine: garbage collection deletes the
                // MicrovmMachine, whose finalizer holds it until the VM is deleted, found by providerID
                // on a host of the cluster's placement and reached with the cluster's token (its
                // MicrovmCluster, named after the cluster, is found without the Cluster).
                try await kube.delete(Cluster.self, name: "mvm", namespace: ns)
                try await kube.delete(Machine.self, name: "m1", namespace: ns)
                #expect(try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns).metadata.deletionTimestamp != nil)
                var rounds = 0
                while case .requeue = try await reconciler.reconcile(namespace: ns, name: "m1"), rounds < 60 {
                    rounds += 1
                    try await Task.sleep(for: .milliseconds(500))
                }
                #expect(try await client.list().isEmpty, "the VM is deleted from the host")
                await #expect { _ = try await kube.get(MicrovmMachine.self, name: "m1", namespace: ns) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }

                // A machine whose VM never existed deletes cleanly (CAPMVM #190).
                let m2owner = try await kube.create(Machine(metadata: ObjectMeta(name: "m2", namespace: ns), spec: .init(clusterName: "mvm", bootstrap: .init(), infrastructureRef: .microvmMachine("m2"))))
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "m2", namespace: ns, finalizers: [InfrastructureGroup.machineFinalizer], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "m2", uid: m2owner.metadata.uid ?? "")]), spec: spec))
                try await kube.delete(MicrovmMachine.self, name: "m2", namespace: ns)
                #expect(try await reconciler.reconcile(namespace: ns, name: "m2") == .done)
                await #expect { _ = try await kube.get(MicrovmMachine.self, name: "m2", namespace: ns) } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
            }
        }
    }

    @Test("the controller manager: objects created as Cluster API would → VM created and machine ready, cluster ready with failure domains; delete → VM gone")
    func managerLoop() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            try await withAgent(env) { agent in
                var settings = ControllerSettings()
                settings.namespace = "team-a"
                settings.machineConcurrency = 2
                let manager = ControllerManager(kube: kube, agents: agents, settings: settings, logger: Logger(label: "capmvm"))
                let running = Task { await manager.run() }
                defer { running.cancel() }
                let ns = "team-a"
                let name = try await clusterWithMachine(kube, ns: ns, name: "edge", host: agent.address, env: env)
                let client = try agent.client()
                defer { client.close() }
                let m = try await waitReady(kube, ns: ns, name: name, timeout: .seconds(120))
                #expect(m.status?.ready == true && m.status?.vmState == "running", "\(String(describing: m.status))")
                #expect(try await client.list().count == 1)
                let c = try await kube.get(MicrovmCluster.self, name: "edge", namespace: ns)
                #expect(c.status?.ready == true && c.status?.failureDomains?.byName[agent.address]?.controlPlane == true)
                #expect(c.status?.conditions?.first { $0.type == "LoadBalancerAvailable" }?.reason == "LoadBalancerNotAvailable", "nothing serves on the endpoint")

                try await kube.delete(MicrovmMachine.self, name: name, namespace: ns)
                let deadline = ContinuousClock.now + .seconds(60)
                var gone = false
                while !gone, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(500))
                    do { _ = try await kube.get(MicrovmMachine.self, name: name, namespace: ns) } catch let e as KubernetesAPIError where e.isNotFound { gone = true }
                }
                #expect(gone, "the finalizer is removed once the VM is gone")
                #expect(try await client.list().isEmpty)
                running.cancel()
                await running.value  // stopped before its Kubernetes client is shut down
            }
        }
    }

    @Test("the capmvm executable: kubeconfig, readiness, metrics; with --leader-elect one of two replicas works and the other takes over when it stops")
    func executable() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let dir = try kubeconfigDirectory(server)
            defer { try? HostFiles.remove(dir) }
            func start(_ name: String, health: Int, metrics: Int) throws -> pid_t {
                try startCAPMVM(dir, name, ["--leader-elect", "--health-addr", "127.0.0.1:\(health)", "--metrics-bind-addr", "127.0.0.1:\(metrics)", "--namespace", "team-b"])
            }
            func get(_ url: String) async -> String? { try? await HostProcess.run(["curl", "-sf", "-m", "3", url]) }
            let a = try start("a", health: 19441, metrics: 19481)
            try await Task.sleep(for: .seconds(1))
            let b = try start("b", health: 19442, metrics: 19482)
            defer { for p in [a, b] { kill(p, SIGKILL); _ = HostProcess.waitFor(p) } }

            try await withAgent(env) { agent in
                var ready = false
                for _ in 0..<50 where !ready {
                    ready = await get("http://127.0.0.1:19441/readyz") != nil
                    if !ready { try await Task.sleep(for: .milliseconds(200)) }
                }
                #expect(ready, "the leader is ready: \(String(decoding: HostFiles.tail("\(dir)/a.log", maxBytes: 2000) ?? Data(), as: UTF8.self))")
                #expect(await get("http://127.0.0.1:19442/healthz") == "ok\n", "the standby is alive")
                var standbyReady = false
                for _ in 0..<50 where !standbyReady {
                    standbyReady = await get("http://127.0.0.1:19442/readyz") != nil
                    if !standbyReady { try await Task.sleep(for: .milliseconds(200)) }
                }
                #expect(standbyReady, "the standby is ready too (able to lead), so a rolling update of the Deployment completes")
                let lease = try await kube.get(Lease.self, name: "capmvm-leader-election", namespace: "capmvm-system")
                #expect(lease.spec?.holderIdentity?.isEmpty == false)

                // The leader reconciles a machine.
                let ns = "team-b"
                let mvm = try await clusterWithMachine(kube, ns: ns, name: "exe", host: agent.address, env: env)
                let m = try await waitReady(kube, ns: ns, name: mvm, timeout: .seconds(120))
                #expect(m.status?.ready == true, "\(String(describing: m.status))")
                let metrics = await get("http://127.0.0.1:19481/metrics") ?? ""
                #expect(metrics.contains("capmvm_reconcile_total") && metrics.contains("controller=\"MicrovmMachine\""), "\(metrics.prefix(600))")

                // The leader stops (SIGTERM releases the lease): the standby takes over and keeps reconciling.
                kill(a, SIGTERM)
                #expect(HostProcess.waitFor(a) == .exited(0))
                var took = false
                for _ in 0..<50 where !took {
                    let holder = try await kube.get(Lease.self, name: "capmvm-leader-election", namespace: "capmvm-system").spec?.holderIdentity ?? ""
                    took = !holder.isEmpty && holder != lease.spec?.holderIdentity
                    if !took { try await Task.sleep(for: .milliseconds(200)) }
                }
                #expect(took, "the standby became the leader within 10 s (the stopped leader released its lease)")
                let released = try await kube.get(Lease.self, name: "capmvm-leader-election", namespace: "capmvm-system")
                #expect(released.spec?.holderIdentity != lease.spec?.holderIdentity && (released.spec?.leaseTransitions ?? 0) >= 1)
                try await kube.delete(MicrovmMachine.self, name: mvm, namespace: ns)
                let client = try agent.client()
                defer { client.close() }
                let deadline = ContinuousClock.now + .seconds(60)
                while ContinuousClock.now < deadline, try await !client.list().isEmpty { try await Task.sleep(for: .milliseconds(500)) }
                #expect(try await client.list().isEmpty, "the new leader deleted the VM")
            }
        }
    }
}

/// The flannel flavor of cluster-template.yaml, rendered for a real agent and the test images and
/// applied over HTTP (each object validated against its CRD by the test API server); then one
/// control-plane machine made from its objects as Cluster API's controllers would.
@Suite("capmvm with the cluster template", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct CAPMVMTemplateEndToEndTests {
    @Test("cluster-template-flannel.yaml applied as clusterctl would; a control-plane Machine and MicrovmMachine from its templates → a microVM on HOST_ENDPOINT with the template's size and images → ready")
    func templateMachine() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let agents = AgentConnections()
            defer { agents.closeAll() }
            try await withAgent(env) { agent in
                let ns = "tmpl"
                let text = try String(contentsOfFile: "\(SchemaValidator.repositoryRoot)/templates/cluster-template-flannel.yaml", encoding: .utf8)
                let rendered = try Envsubst.substitute(text, [
                    "CLUSTER_NAME": "tmpl", "CONTROL_PLANE_VIP": "10.97.0.95", "HOST_ENDPOINT": agent.address, "KUBERNETES_VERSION": "v1.31.4",
                    "MVM_ROOT_IMAGE": env.rootImage, "MVM_KERNEL_IMAGE": env.kernelImage, "CONTROL_PLANE_MACHINE_COUNT": "1", "WORKER_MACHINE_COUNT": "0",
                ])
                let schemas = try SchemaValidator.project()
                var objects: [[String: Any]] = []
                for doc in rendered.components(separatedBy: "\n---\n") {
                    let o = try #require(try Yams.load(yaml: doc) as? [String: Any])
                    let apiVersion = o["apiVersion"] as? String ?? "", kind = o["kind"] as? String ?? ""
                    let path = apiVersion == "v1" ? "/api/v1/namespaces/\(ns)/\(kind.lowercased())s"
                        // Without LM_CAPI_CRDS there is no schema for Cluster API's kinds; their plurals are regular.
                        : "/apis/\(apiVersion)/namespaces/\(ns)/\(schemas.entry(apiVersion: apiVersion, kind: kind)?.plural ?? kind.lowercased() + "s")"
                    let body = String(decoding: try JSONSerialization.data(withJSONObject: o), as: UTF8.self)
                    let code = try await HostProcess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                                                          "--data-binary", body, "\(server.server)\(path)"])
                    #expect(code == "201", "POST \(kind): \(code)")
                    objects.append(o)
                }
                #expect(objects.count == 9)

                // What Cluster API's controllers would do next: the Cluster points at its infrastructure,
                // which is ready; KubeadmControlPlane makes a Machine, its bootstrap Secret and a
                // MicrovmMachine from the control plane's MicrovmMachineTemplate.
                _ = try await kube.mergePatch(Cluster.self, name: "tmpl", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
                let template = try await kube.get(MicrovmMachineTemplate.self, name: "tmpl-control-plane", namespace: ns)
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "tmpl-control-plane-x1", namespace: ns), type: "cluster.x-k8s.io/secret",
                                                 data: ["value": Data("## template: jinja\n#cloud-config\n".utf8)]))
                let machine = try await kube.create(Machine(
                    metadata: ObjectMeta(name: "tmpl-control-plane-x1", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "tmpl", ClusterAPIGroup.controlPlaneLabel: ""]),
                    spec: .init(clusterName: "tmpl", bootstrap: .init(dataSecretName: "tmpl-control-plane-x1"), infrastructureRef: .microvmMachine("tmpl-control-plane-9f2kq"))))
                // The infrastructure machine's name need not be the Machine's (the VM is named after the Machine).
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "tmpl-control-plane-9f2kq", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "tmpl"], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "tmpl-control-plane-x1", uid: machine.metadata.uid ?? "")]), spec: template.spec.template.spec))

                let reconciler = MachineReconciler(kube: kube, agents: agents, logger: Logger(label: "capmvm"))
                // The first pass creates the VM but cannot record its providerID: the next pass must
                // find that VM by the machine's uid label, not make another.
                server.refuseRequests { method, _, body in method == "PATCH" && (body?["spec"] as? [String: Any])?["providerID"] != nil }
                await #expect(throws: KubernetesAPIError.self) { _ = try await reconciler.reconcile(namespace: ns, name: "tmpl-control-plane-9f2kq") }
                #expect(server.refusedRequests == 1)
                server.refuseRequests(where: nil)
                try await eventually("the machine is ready", timeout: .seconds(120)) {
                    _ = try await reconciler.reconcile(namespace: ns, name: "tmpl-control-plane-9f2kq")
                    return try await kube.get(MicrovmMachine.self, name: "tmpl-control-plane-9f2kq", namespace: ns).status?.ready == true
                }
                let client = try agent.client()
                defer { client.close() }
                let vms = try await client.list(namespace: ns)
                #expect(vms.count == 1, "one VM, named after the Machine: \(vms.map(\.spec.id))")
                let vm = try #require(vms.first)
                #expect(vm.spec.id == "tmpl-control-plane-x1")
                #expect(vm.spec.vcpu == 2 && vm.spec.memoryInMb == 2048, "the template's size")
                #expect(vm.spec.kernel.filename == "boot/vmlinuz" && vm.spec.rootVolume.source.containerSource == env.rootImage)
                let m = try await kube.get(MicrovmMachine.self, name: "tmpl-control-plane-9f2kq", namespace: ns)
                #expect(m.spec.providerID == "microvm://\(agent.address)/\(vm.spec.uid)")

                try await kube.delete(MicrovmMachine.self, name: "tmpl-control-plane-9f2kq", namespace: ns)
                try await eventually("the machine is gone with its VM") {
                    _ = try await reconciler.reconcile(namespace: ns, name: "tmpl-control-plane-9f2kq")
                    do { _ = try await kube.get(MicrovmMachine.self, name: "tmpl-control-plane-9f2kq", namespace: ns); return false } catch let e as KubernetesAPIError where e.isNotFound { return true }
                }
                #expect(try await client.list().isEmpty)
            }
        }
    }
}

/// A directory with a kubeconfig for the test API server (remove it when done).
func kubeconfigDirectory(_ server: TestAPIServer) throws -> String {
    let dir = "/tmp/lm-capmvm-\(UUID().uuidString.prefix(6))"
    try HostFiles.createDirectory(dir)
    try Data("""
        apiVersion: v1
        kind: Config
        current-context: test
        clusters: [{name: test, cluster: {server: "\(server.server)"}}]
        users: [{name: test, user: {token: test-token}}]
        contexts: [{name: test, context: {cluster: test, user: test}}]
        """.utf8).write(to: URL(fileURLWithPath: "\(dir)/kubeconfig"))
    return dir
}

/// Starts the capmvm executable with `dir`'s kubeconfig, logging to `dir/<name>.log`.
func startCAPMVM(_ dir: String, _ name: String, _ arguments: [String]) throws -> pid_t {
    let log = open("\(dir)/\(name).log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    defer { close(log) }
    return try HostProcess.spawn(["\(TestEnvironment.productsDirectory)/capmvm", "--kubeconfig", "\(dir)/kubeconfig"] + arguments, stdout: log, stderr: log)
}

/// A Cluster, MicrovmCluster (static pool of one host), bootstrap Secret, Machine and MicrovmMachine
/// as Cluster API would create them, the cluster's infrastructure ready; returns the machine's name.
func clusterWithMachine(_ kube: KubernetesClient, ns: String, name: String, host: String, env: TestEnvironment) async throws -> String {
    _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: name, namespace: ns), spec: .init(
        controlPlaneEndpoint: APIEndpoint(host: "10.97.0.80", port: 6443), placement: .init(staticPool: .init(hosts: [.init(endpoint: host)])))))
    _ = try await kube.create(Cluster(metadata: ObjectMeta(name: name, namespace: ns)))
    _ = try await kube.mergePatch(Cluster.self, name: name, namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"\#(name)"}}}"#.utf8))
    _ = try await kube.create(Secret(metadata: ObjectMeta(name: "\(name)-m-bootstrap", namespace: ns), data: ["value": Data("#cloud-config\n".utf8)]))
    let machine = try await kube.create(Machine(metadata: ObjectMeta(name: "\(name)-m", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: name]),
                                                spec: .init(clusterName: name, bootstrap: .init(dataSecretName: "\(name)-m-bootstrap"), infrastructureRef: .microvmMachine("\(name)-m"))))
    let spec = MicrovmMachine.Spec(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: env.rootImage),
                                   kernel: .init(image: env.kernelImage, filename: "boot/vmlinuz"), initrd: .init(image: env.kernelImage, filename: "boot/initrd"),
                                   networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])
    _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "\(name)-m", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: name], ownerReferences: [
        OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "\(name)-m", uid: machine.metadata.uid ?? "")]), spec: spec))
    _ = try await kube.mergePatch(Cluster.self, name: name, namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
    return "\(name)-m"
}

/// Waits until the MicrovmMachine reports ready (or the time is up) and returns it.
func waitReady(_ kube: KubernetesClient, ns: String, name: String, timeout: Duration) async throws -> MicrovmMachine {
    let deadline = ContinuousClock.now + timeout
    var m = try await kube.get(MicrovmMachine.self, name: name, namespace: ns)
    while m.status?.ready != true, ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(500))
        m = try await kube.get(MicrovmMachine.self, name: name, namespace: ns)
    }
    return m
}

/// Dynamic placement over MicrovmHosts: three real agents.
@Suite("capmvm dynamic placement", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct CAPMVMPlacementEndToEndTests {
    @Test("1 control plane + 3 workers over 3 hosts spread by the scheduler; a host stopped mid-way is marked unreachable, its machines say so, new machines avoid it")
    func spreadAndHostLoss() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let agents = AgentConnections()
            let hosts = try (0..<3).map { _ in try AgentProcess(environment: env) }
            defer { agents.closeAll() }
            do {
                for h in hosts { try await h.start() }
                let ns = "fleet"
                for (i, h) in hosts.enumerated() {
                    _ = try await kube.create(MicrovmHost(metadata: ObjectMeta(name: "h\(i)", namespace: ns, labels: ["site": "edge"]),
                                                          spec: .init(endpoint: h.address, failureDomain: "rack-\(i)")))
                }
                var settings = ControllerSettings()
                settings.namespace = ns
                settings.pendingRequeue = .seconds(1)
                settings.hostProbeInterval = .seconds(1)
                let manager = ControllerManager(kube: kube, agents: agents, settings: settings, logger: Logger(label: "capmvm"))
                let running = Task { await manager.run() }
                defer { running.cancel() }
                // The hosts' status comes from their agents.
                try await eventually("all hosts reachable") {
                    try await kube.list(MicrovmHost.self, namespace: ns).items.allSatisfy { $0.status?.reachable == true && ($0.status?.vcpus ?? 0) > 0 }
                }

                _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "fleet", namespace: ns), spec: .init(
                    controlPlaneEndpoint: APIEndpoint(host: "10.97.0.90", port: 6443), placement: .init(dynamicPool: .init(hostSelector: ["site": "edge"])))))
                _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "fleet", namespace: ns)))
                _ = try await kube.mergePatch(Cluster.self, name: "fleet", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"fleet"}},"status":{}}"#.utf8))
                _ = try await kube.mergePatch(Cluster.self, name: "fleet", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
                func addMachine(_ name: String, controlPlane: Bool) async throws -> String {
                    var labels = [ClusterAPIGroup.clusterNameLabel: "fleet"]
                    if controlPlane { labels[ClusterAPIGroup.controlPlaneLabel] = "" }
                    _ = try await kube.create(Secret(metadata: ObjectMeta(name: "\(name)-bootstrap", namespace: ns), data: ["value": Data("#cloud-config\n".utf8)]))
                    let machine = try await kube.create(Machine(metadata: ObjectMeta(name: name, namespace: ns, labels: labels), spec: .init(clusterName: "fleet", bootstrap: .init(dataSecretName: "\(name)-bootstrap"), infrastructureRef: .microvmMachine(name))))
                    let spec = MicrovmMachine.Spec(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: env.rootImage),
                                                   kernel: .init(image: env.kernelImage, filename: "boot/vmlinuz"), initrd: .init(image: env.kernelImage, filename: "boot/initrd"),
                                                   networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])
                    _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: name, namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "fleet"], ownerReferences: [
                        OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: name, uid: machine.metadata.uid ?? "")]), spec: spec))
                    var host = ""
                    try await eventually("\(name) placed") {
                        host = try await kube.get(MicrovmMachine.self, name: name, namespace: ns).spec.providerID.flatMap(ProviderID.init)?.host ?? ""
                        return !host.isEmpty
                    }
                    return host
                }
                var placed: [String: String] = [:]
                placed["cp-0"] = try await addMachine("cp-0", controlPlane: true)
                for w in ["w-0", "w-1", "w-2"] { placed[w] = try await addMachine(w, controlPlane: false) }
                let counts = Dictionary(grouping: placed.values, by: { $0 }).mapValues(\.count)
                #expect(counts.count == 3 && counts.values.sorted() == [1, 1, 2], "spread over all three hosts: \(placed)")
                #expect(Set([placed["cp-0"], placed["w-0"], placed["w-1"]]).count == 3, "the first three machines on distinct hosts: \(placed)")

                // Stop the agent under w-0.
                let lost = try #require(hosts.first { $0.address == placed["w-0"] })
                lost.kill(SIGKILL)
                try await eventually("the host is marked unreachable") {
                    try await kube.list(MicrovmHost.self, namespace: ns).items.first { $0.spec.endpoint == lost.address }?.status?.reachable == false
                }
                try await eventually("w-0 says its host is unreachable") {
                    try await kube.get(MicrovmMachine.self, name: "w-0", namespace: ns).status?.conditions?.contains { $0.reason == "HostUnreachable" } == true
                }
                let w3 = try await addMachine("w-3", controlPlane: false)
                #expect(w3 != lost.address, "a new machine avoids the unreachable host")

                // Bring the host back so that everything is cleaned up through the API.
                try await lost.start()
                running.cancel()
                await running.value
            } catch {
                for h in hosts { await h.cleanUp() }
                throw error
            }
            for h in hosts { await h.cleanUp() }
        }
    }
}

/// A create interrupted by a controller restart, over two hosts of a dynamic pool.
@Suite("capmvm restart during a create", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs root, containerd, QEMU and TAP (always runs in CI)"))
struct CAPMVMRestartEndToEndTests {
    @Test("capmvm killed after CreateMicroVM but before the providerID is recorded: the next capmvm finds the VM on its host, makes no second one anywhere, and finishes the machine")
    func restartDuringCreate() async throws {
        let env = try await TestEnvironment.shared()
        try await withTestAPI { server, kube in
            let hosts = try (0..<2).map { _ in try AgentProcess(environment: env) }
            let dir = try kubeconfigDirectory(server)
            defer { try? HostFiles.remove(dir) }
            var pids: [pid_t] = []
            defer { for p in pids { kill(p, SIGKILL); _ = HostProcess.waitFor(p) } }
            do {
                for h in hosts { try await h.start() }
                let ns = "restart"
                for (i, h) in hosts.enumerated() {
                    _ = try await kube.create(MicrovmHost(metadata: ObjectMeta(name: "h\(i)", namespace: ns, labels: ["site": "r"]),
                                                          spec: .init(endpoint: h.address, failureDomain: "fd-\(i)")))
                }
                // The API server fails every write of a providerID: the create happens, its result is not recorded.
                server.refuseRequests { method, path, body in
                    path.hasSuffix("/microvmmachines/w-0") && (method == "PATCH" || method == "PUT") && (body?["spec"] as? [String: Any])?["providerID"] != nil
                }
                let args = ["--namespace", ns, "--health-addr", "127.0.0.1:19443", "--metrics-bind-addr", "", "--host-probe-interval", "1"]
                pids.append(try startCAPMVM(dir, "first", args))
                try await eventually("both hosts probed") {
                    try await kube.list(MicrovmHost.self, namespace: ns).items.allSatisfy { $0.status?.reachable == true }
                }
                _ = try await kube.create(MicrovmCluster(metadata: ObjectMeta(name: "r", namespace: ns), spec: .init(
                    controlPlaneEndpoint: APIEndpoint(host: "10.97.0.90", port: 6443), placement: .init(dynamicPool: .init(hostSelector: ["site": "r"])))))
                _ = try await kube.create(Cluster(metadata: ObjectMeta(name: "r", namespace: ns)))
                _ = try await kube.mergePatch(Cluster.self, name: "r", namespace: ns, patch: Data(#"{"spec":{"infrastructureRef":{"kind":"MicrovmCluster","name":"r"}}}"#.utf8))
                _ = try await kube.mergePatch(Cluster.self, name: "r", namespace: ns, patch: Data(#"{"status":{"infrastructureReady":true}}"#.utf8), status: true)
                _ = try await kube.create(Secret(metadata: ObjectMeta(name: "w-0-bootstrap", namespace: ns), data: ["value": Data("#cloud-config\n".utf8)]))
                let machine = try await kube.create(Machine(metadata: ObjectMeta(name: "w-0", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "r"]),
                                                            spec: .init(clusterName: "r", bootstrap: .init(dataSecretName: "w-0-bootstrap"), infrastructureRef: .microvmMachine("w-0"))))
                let spec = MicrovmMachine.Spec(vcpu: 1, memoryMb: 1024, rootVolume: .init(id: "root", image: env.rootImage),
                                               kernel: .init(image: env.kernelImage, filename: "boot/vmlinuz"), initrd: .init(image: env.kernelImage, filename: "boot/initrd"),
                                               networkInterfaces: [.init(guestDeviceName: "eth0", type: "tap")])
                _ = try await kube.create(MicrovmMachine(metadata: ObjectMeta(name: "w-0", namespace: ns, labels: [ClusterAPIGroup.clusterNameLabel: "r"], ownerReferences: [
                    OwnerReference(apiVersion: "cluster.x-k8s.io/v1beta1", kind: "Machine", name: "w-0", uid: machine.metadata.uid ?? "")]), spec: spec))

                // The first capmvm creates the VM on one host, then fails to record it; kill it there.
                var first: (host: AgentProcess, uid: String)?
                try await eventually("the first capmvm created the VM and failed to record its providerID") {
                    for h in hosts {
                        let c = try h.client()
                        defer { c.close() }
                        if let vm = try await c.list(namespace: ns).first { first = (h, vm.spec.uid) }
                    }
                    return first != nil && server.refusedRequests > 0
                }
                kill(pids[0], SIGKILL)
                _ = HostProcess.waitFor(pids[0])
                let interrupted = try await kube.get(MicrovmMachine.self, name: "w-0", namespace: ns)
                #expect(interrupted.spec.providerID == nil, "the providerID was never recorded")
                #expect(interrupted.metadata.annotations?[placementAnnotation] == first?.host.address, "the chosen host was recorded before the create")

                // A new capmvm, the API server healthy again.
                server.refuseRequests(where: nil)
                pids.append(try startCAPMVM(dir, "second", args))
                let ready = try await waitReady(kube, ns: ns, name: "w-0", timeout: .seconds(120))
                let log = String(decoding: HostFiles.tail("\(dir)/second.log", maxBytes: 3000) ?? Data(), as: UTF8.self)
                #expect(ready.status?.ready == true, "\(String(describing: ready.status)) \(log)")
                let (host, uid) = try #require(first)
                #expect(ready.spec.providerID == "microvm://\(host.address)/\(uid)", "the providerID names the VM made before the restart")
                var all: [String] = []
                for h in hosts {
                    let c = try h.client()
                    defer { c.close() }
                    all += try await c.list().map { "\(h.address)/\($0.spec.uid)" }
                }
                #expect(all == ["\(host.address)/\(uid)"], "one VM on the two hosts, the first one: \(all)")

                // Delete: VM gone, finalizer removed.
                try await kube.delete(MicrovmMachine.self, name: "w-0", namespace: ns)
                try await eventually("the MicrovmMachine is gone") {
                    do { _ = try await kube.get(MicrovmMachine.self, name: "w-0", namespace: ns); return false } catch let e as KubernetesAPIError where e.isNotFound { return true }
                }
                let c = try host.client()
                defer { c.close() }
                #expect(try await c.list().isEmpty)
            } catch {
                for h in hosts { await h.cleanUp() }
                throw error
            }
            for h in hosts { await h.cleanUp() }
        }
    }
}

/// Polls `condition` until it holds (or fails after `timeout`).
/// The default deadline fits a loaded 2-core machine (CI builds or boots guests beside the test).
func eventually(_ what: String, timeout: Duration = .seconds(240), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(300))
    }
    throw TestEnvironmentError("timed out waiting for: \(what)")
}

/// Runs `body` with a fresh test API server and a client of it, and always stops both.
/// The server validates every object of the project's and Cluster API's kinds against their CRD schemas.
func withTestAPI(_ body: (TestAPIServer, KubernetesClient) async throws -> Void) async throws {
    let server = try await TestAPIServer.start(schemas: try SchemaValidator.project())
    let kube = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "kube"))
    do { try await body(server, kube) } catch {
        try? await kube.shutdown()
        try? await server.stop()
        throw error
    }
    try await kube.shutdown()
    try await server.stop()
}
