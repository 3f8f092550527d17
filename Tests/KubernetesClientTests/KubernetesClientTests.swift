import Foundation
import KubernetesClient
import KubernetesTestServer
import Logging
import Synchronization
import Testing

/// A custom resource shaped like ours: spec, status, a status subresource.
struct Widget: KubernetesObject, Equatable {
    static let resource = ResourceType(group: "infrastructure.cluster.x-k8s.io", version: "v1alpha1", kind: "Widget", plural: "widgets")
    struct Spec: Codable, Sendable, Equatable { var size: Int }
    struct Status: Codable, Sendable, Equatable { var ready: Bool?; var note: String? }
    var apiVersion: String? = Widget.resource.apiVersion
    var kind: String? = "Widget"
    var metadata: ObjectMeta
    var spec: Spec
    var status: Status?
}

/// The same resource as a newer schema has it: a spec field `Widget` does not know.
struct WidgetV2: KubernetesObject, Equatable {
    static let resource = Widget.resource
    struct Spec: Codable, Sendable, Equatable { var size: Int; var color: String? }
    var apiVersion: String? = Widget.resource.apiVersion
    var kind: String? = "Widget"
    var metadata: ObjectMeta
    var spec: Spec
}

@Suite("Kubernetes client against the test API server")
struct KubernetesClientTests {
    func withClient(_ body: (KubernetesClient, TestAPIServer) async throws -> Void) async throws {
        let server = try await TestAPIServer.start(bookmarkInterval: .milliseconds(300))
        let client = try KubernetesClient(connection: KubernetesConnection(server: server.server), logger: Logger(label: "test"))
        do { try await body(client, server) } catch {
            try? await client.shutdown()
            try? await server.stop()
            throw error
        }
        try await client.shutdown()
        try await server.stop()
    }

    func widget(_ name: String, size: Int = 1, labels: [String: String]? = nil) -> Widget {
        Widget(metadata: ObjectMeta(name: name, namespace: "ns", labels: labels), spec: .init(size: size))
    }

    @Test("create, get, list with a label selector, merge patch, status subresource, replace conflicts, update retries, delete")
    func crud() async throws {
        try await withClient { c, _ in
            let a = try await c.create(widget("a", labels: ["tier": "x"]))
            #expect(a.metadata.uid != nil && a.metadata.resourceVersion != nil && a.metadata.generation == 1)
            _ = try await c.create(widget("b", labels: ["tier": "y"]))
            await #expect { _ = try await c.create(widget("a")) } throws: { ($0 as? KubernetesAPIError)?.code == 409 }
            #expect(try await c.get(Widget.self, name: "a", namespace: "ns") == a)
            #expect(try await c.list(Widget.self, namespace: "ns", labelSelector: "tier=x").items.map(\.metadata.name) == ["a"])
            #expect(try await c.list(Widget.self, namespace: nil).items.count == 2)

            let patched = try await c.mergePatch(Widget.self, name: "a", namespace: "ns", patch: Data(#"{"spec":{"size":3},"status":{"ready":true}}"#.utf8))
            #expect(patched.spec.size == 3 && patched.metadata.generation == 2 && patched.status == nil, "status changes only through /status")
            let st = try await c.mergePatch(Widget.self, name: "a", namespace: "ns", patch: Data(#"{"status":{"ready":true}}"#.utf8), status: true)
            #expect(st.status?.ready == true && st.metadata.generation == 2)

            var stale = a
            stale.spec.size = 9
            await #expect { _ = try await c.replace(stale) } throws: { ($0 as? KubernetesAPIError)?.isConflict == true }
            let updated = try await c.update(Widget.self, name: "a", namespace: "ns") { $0.spec.size += 1 }
            #expect(updated.spec.size == 4)

            try await c.delete(Widget.self, name: "b", namespace: "ns")
            await #expect { _ = try await c.get(Widget.self, name: "b", namespace: "ns") } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
        }
    }

    @Test("finalizers keep a deleted object with a deletionTimestamp until they are removed; owners take their dependents along")
    func finalizersAndOwners() async throws {
        try await withClient { c, _ in
            var w = widget("held")
            w.metadata.finalizers = ["example.com/cleanup"]
            let held = try await c.create(w)
            try await c.delete(Widget.self, name: "held", namespace: "ns")
            let deleting = try await c.get(Widget.self, name: "held", namespace: "ns")
            #expect(deleting.metadata.deletionTimestamp != nil)
            _ = try await c.update(Widget.self, name: "held", namespace: "ns") { $0.metadata.finalizers = [] }
            await #expect { _ = try await c.get(Widget.self, name: "held", namespace: "ns") } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }

            let owner = try await c.create(widget("owner"))
            var child = widget("child")
            child.metadata.ownerReferences = [OwnerReference(apiVersion: Widget.resource.apiVersion, kind: "Widget", name: "owner", uid: owner.metadata.uid!)]
            _ = try await c.create(child)
            try await c.delete(Widget.self, name: "owner", namespace: "ns")
            await #expect { _ = try await c.get(Widget.self, name: "child", namespace: "ns") } throws: { ($0 as? KubernetesAPIError)?.isNotFound == true }
            _ = held
        }
    }

    @Test("finalizers are changed by a merge patch with the resourceVersion read: fields the type does not know are kept; a stale version is 409 and retried")
    func finalizerPatch() async throws {
        try await withClient { c, server in
            let created = try await c.create(WidgetV2(metadata: ObjectMeta(name: "w", namespace: "ns"), spec: .init(size: 1, color: "blue")))
            let added = try await c.updateFinalizers(Widget.self, name: "w", namespace: "ns") { $0 + ["example.com/a"] }
            #expect(added.metadata.finalizers == ["example.com/a"])
            #expect(try await c.get(WidgetV2.self, name: "w", namespace: "ns").spec.color == "blue", "a field Widget does not know is kept")
            // Idempotent: no write when nothing changes.
            let same = try await c.updateFinalizers(Widget.self, name: "w", namespace: "ns") { $0 }
            #expect(same.metadata.resourceVersion == added.metadata.resourceVersion)

            // A patch carrying a stale resourceVersion is refused, as the API server refuses it.
            let stale = try JSONSerialization.data(withJSONObject: ["metadata": ["finalizers": [String](), "resourceVersion": created.metadata.resourceVersion!]])
            await #expect { _ = try await c.mergePatch(Widget.self, name: "w", namespace: "ns", patch: stale) } throws: { ($0 as? KubernetesAPIError)?.isConflict == true }

            // A change between the read and the patch (made by another client, here curl, while the
            // change is computed): the patch conflicts, the object is read again and the patch retried.
            let calls = Mutex(0)
            let url = "\(server.server)/apis/\(Widget.resource.apiVersion)/namespaces/ns/widgets/w"
            try await c.updateFinalizers(Widget.self, name: "w", namespace: "ns") { current in
                if calls.withLock({ $0 += 1; return $0 }) == 1 {
                    let curl = Process()
                    curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
                    curl.arguments = ["-sf", "-o", "/dev/null", "-X", "PATCH", "-H", "Content-Type: application/merge-patch+json",
                                      "-d", #"{"metadata":{"labels":{"bumped":"yes"}}}"#, url]
                    try? curl.run()
                    curl.waitUntilExit()
                }
                return current.filter { $0 != "example.com/a" }
            }
            #expect(calls.withLock { $0 } == 2, "read again after the conflict")
            let final = try await c.get(WidgetV2.self, name: "w", namespace: "ns")
            #expect((final.metadata.finalizers ?? []).isEmpty && final.spec.color == "blue" && final.metadata.labels?["bumped"] == "yes")

            // What `update` (a replace) does with the same type: the unknown field is lost.
            _ = try await c.update(Widget.self, name: "w", namespace: "ns") { $0.spec.size = 2 }
            #expect(try await c.get(WidgetV2.self, name: "w", namespace: "ns").spec.color == nil)
        }
    }

    @Test("watch from a list's resourceVersion: changes in order, bookmarks; a compacted version is 410 Gone")
    func watch() async throws {
        try await withClient { c, server in
            _ = try await c.create(widget("before"))
            let list = try await c.list(Widget.self, namespace: "ns")
            let rv = try #require(list.metadata.resourceVersion)
            let stream = c.watch(Widget.self, namespace: "ns", resourceVersion: rv, timeoutSeconds: 5)
            let writer = Task {
                try await Task.sleep(for: .milliseconds(200))
                _ = try await c.create(widget("w1"))
                _ = try await c.mergePatch(Widget.self, name: "w1", namespace: "ns", patch: Data(#"{"spec":{"size":2}}"#.utf8))
                try await c.delete(Widget.self, name: "w1", namespace: "ns")
            }
            var seen: [String] = []
            var bookmark = false
            for try await e in stream {
                switch e {
                case .added(let w): seen.append("ADDED \(w.metadata.name ?? "")")
                case .modified(let w): seen.append("MODIFIED \(w.spec.size)")
                case .deleted(let w): seen.append("DELETED \(w.metadata.name ?? "")")
                case .bookmark(let v): bookmark = bookmark || Int(v) ?? 0 > 0
                }
                if seen.count == 3 && bookmark { break }
            }
            try await writer.value
            #expect(seen == ["ADDED w1", "MODIFIED 2", "DELETED w1"], "before was listed, not watched")
            #expect(bookmark)

            server.compact()
            await #expect {
                for try await _ in c.watch(Widget.self, namespace: "ns", resourceVersion: rv, timeoutSeconds: 5) {}
            } throws: { ($0 as? KubernetesAPIError)?.isGone == true }
        }
    }
}
