import CAPMVMAPI
import CAPMVMController
import Foundation
import Testing
import Yams

@Suite("capmvm controller pieces")
struct CAPMVMControllerTests {
    @Test("the work queue: a key once in the queue, never twice at once, run again when added while running")
    func workQueue() async {
        let q = WorkQueue()
        await q.add("a")
        await q.add("a")
        await q.add("b")
        #expect(await q.depth == 2)
        let first = await q.next()
        #expect(first == "a")
        await q.add("a")  // while a runs
        #expect(await q.next() == "b")
        #expect(await q.depth == 0, "a waits until its run is done")
        await q.done("a")
        #expect(await q.next() == "a")
        await q.done("a")
        await q.done("b")
        await q.close()
        #expect(await q.next() == nil)
    }

    @Test("vendor-data: hostname, users with keys (the machine's win), sudo for non-root users, final message")
    func vendorData() throws {
        let text = try MicrovmRequest.vendorData(hostname: "cp-0",
            machineKeys: [SSHPublicKey(user: "root", authorizedKeys: ["m-root"])],
            clusterKeys: [SSHPublicKey(user: "root", authorizedKeys: ["c-root"]), SSHPublicKey(user: "ops", authorizedKeys: ["c-ops"])])
        #expect(text.hasPrefix("#cloud-config\n"))
        let doc = try #require(try Yams.load(yaml: text) as? [String: Any])
        #expect(doc["hostname"] as? String == "cp-0" && doc["final_message"] != nil)
        let users = try #require(doc["users"] as? [[String: Any]])
        #expect(users.map { $0["name"] as? String } == ["ops", "root"])
        #expect(users[1]["ssh_authorized_keys"] as? [String] == ["m-root"] && users[0]["sudo"] as? String == "ALL=(ALL) NOPASSWD:ALL")
        #expect(doc["disable_root"] as? Bool == false)
    }
}
