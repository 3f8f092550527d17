import Foundation
import MicroVMCore
import MicroVMStore
import Testing

// MARK: - Fixtures

/// A fixed instant with a millisecond fraction, so that precision losses show.
private let t0 = Date(timeIntervalSince1970: 1_712_345_678.901)

private func makeVM(
    uid: String = ULID.make(), namespace: String = "default", name: String,
    labels: [String: String] = [:], createdAt: Date = t0
) -> MicroVM {
    let spec = MicroVMSpec(
        name: name, namespace: namespace, labels: labels, vcpu: 2, memoryInMB: 1024,
        kernel: KernelSpec(image: "ghcr.io/liquidmetal-dev/kernel:6.1", filename: "boot/vmlinuz"),
        rootVolume: VolumeSpec(id: "root", containerSource: "ghcr.io/liquidmetal-dev/ubuntu:22.04"),
        provider: "qemu")
    return MicroVM(uid: uid, spec: spec, createdAt: createdAt, updatedAt: createdAt)
}

/// A VM with every field set to something other than its default.
private func richVM() -> MicroVM {
    var spec = MicroVMSpec(
        name: "web-1", namespace: "team-a",
        labels: ["app": "web", "cluster.x-k8s.io/cluster-name": "c1", "unicode": "grüße", "empty": ""],
        vcpu: 4, memoryInMB: 4096,
        kernel: KernelSpec(image: "127.0.0.1:5111/lm-test/kernel:latest", cmdline: ["console": "ttyS0", "quiet": ""], filename: "boot/vmlinuz"),
        initrd: InitrdSpec(image: "busybox", filename: "boot/initrd"),
        rootVolume: VolumeSpec(id: "root", isReadOnly: false, containerSource: "ghcr.io/x/root:1", sizeInMB: 2048),
        additionalVolumes: [VolumeSpec(id: "data", isReadOnly: true, containerSource: "ghcr.io/x/data:1")],
        interfaces: [NetworkInterfaceSpec(deviceID: "eth0", type: .tap, guestMAC: "02:00:00:00:00:01", bridgeName: "br0")],
        provider: "qemu", allowGuestAgent: true)
    spec.metadata = [:]
    var status = MicroVMStatus(state: .created)
    status.volumes = ["root": MountStatus(type: .dev, source: "/var/lib/lm/root.qcow2"), "data": MountStatus(type: .hostPath, source: "/srv/data")]
    status.kernelMount = MountStatus(type: .hostPath, source: "/var/lib/lm/kernel")
    status.initrdMount = MountStatus(type: .hostPath, source: "/var/lib/lm/initrd")
    status.networkInterfaces = ["eth0": InterfaceStatus(hostDeviceName: "lmabcdefght0", index: 7, macAddress: "02:00:00:00:00:01")]
    status.retry = 3
    status.failureReason = "kernel: pull failed: unauthorized"
    status.firstConsoleOutputAt = Date(timeIntervalSince1970: 1_712_345_680.123)
    status.vmmStartedAt = Date(timeIntervalSince1970: 1_712_345_679.456)
    status.restartCount = 2
    status.vmmPID = 4242
    status.accelerator = "kvm"
    return MicroVM(
        uid: "01HV3K8Z5Q7W2X9Y4R6T1M0N8P", version: 1, spec: spec, status: status,
        createdAt: t0, updatedAt: Date(timeIntervalSince1970: 1_712_345_690.789),
        deletedAt: Date(timeIntervalSince1970: 1_712_345_700.001))
}

private func millis(_ d: Date) -> Int64 { Int64((d.timeIntervalSince1970 * 1000).rounded()) }
private func millis(_ d: Date?) -> Int64? { d.map { millis($0) } }

/// The VM with every timestamp rounded to whole milliseconds: the precision the store promises.
private func atMillis(_ vm: MicroVM) -> MicroVM {
    func r(_ d: Date) -> Date { Date(timeIntervalSince1970: Double(millis(d)) / 1000) }
    var v = vm
    v.createdAt = r(v.createdAt)
    v.updatedAt = r(v.updatedAt)
    v.deletedAt = v.deletedAt.map(r)
    v.status.firstConsoleOutputAt = v.status.firstConsoleOutputAt.map(r)
    v.status.vmmStartedAt = v.status.vmmStartedAt.map(r)
    return v
}

/// Expects two VMs to be the same, timestamps compared to the millisecond.
private func expectSame(_ a: MicroVM?, _ b: MicroVM?, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.map(atMillis) == b.map(atMillis), sourceLocation: sourceLocation)
}

@discardableResult
private func expectError(_ code: AgentError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> AgentError? {
    let error = #expect(throws: AgentError.self, sourceLocation: sourceLocation) { try body() }
    #expect(error?.code == code, sourceLocation: sourceLocation)
    return error
}

// MARK: - Tests

@Suite("SQLiteMicroVMRepository")
final class StoreTests {
    let directory: URL
    var path: String { directory.appendingPathComponent("state.db").path }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("lm-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    // MARK: Opening

    @Test("opening a path that does not exist creates an empty database")
    func createsDatabase() throws {
        #expect(!FileManager.default.fileExists(atPath: path))
        let repo = try SQLiteMicroVMRepository(path: path)
        #expect(repo.path == path)
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(try repo.list(namespace: nil, name: nil).isEmpty)
    }

    @Test("opening an existing empty file migrates it into a working database")
    func migratesEmptyFile() throws {
        #expect(FileManager.default.createFile(atPath: path, contents: Data()))
        let repo = try SQLiteMicroVMRepository(path: path)
        #expect(try repo.list(namespace: nil, name: nil).isEmpty)
        let vm = try repo.insert(makeVM(name: "vm1"))
        expectSame(try repo.get(uid: vm.uid), vm)
        let header = try Data(contentsOf: URL(fileURLWithPath: path)).prefix(16)
        #expect(header == Data("SQLite format 3\0".utf8))
    }

    @Test("opening an already migrated file again keeps its data")
    func reopenMigrated() throws {
        let vm = try SQLiteMicroVMRepository(path: path).insert(makeVM(name: "vm1"))
        for _ in 0..<3 {
            let repo = try SQLiteMicroVMRepository(path: path)
            #expect(try repo.list(namespace: nil, name: nil).map(\.uid) == [vm.uid])
        }
    }

    @Test("a file that is not a database is refused")
    func refusesGarbage() throws {
        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: path))
        #expect(throws: (any Error).self) { _ = try SQLiteMicroVMRepository(path: path) }
    }

    // MARK: Insert, get, list

    @Test("insert then get returns the same VM; an unknown uid gives nil")
    func insertGet() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let vm = richVM()
        let inserted = try repo.insert(vm)
        #expect(inserted == vm)
        expectSame(try repo.get(uid: vm.uid), vm)
        #expect(try repo.get(uid: ULID.make()) == nil)
        #expect(try repo.get(uid: "") == nil)
    }

    @Test("list filters by namespace and name; nil or empty namespace means all, sorted by namespace then name")
    func list() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let a1 = try repo.insert(makeVM(namespace: "a", name: "web"))
        let a2 = try repo.insert(makeVM(namespace: "a", name: "db"))
        let b1 = try repo.insert(makeVM(namespace: "b", name: "web"))
        let d1 = try repo.insert(makeVM(namespace: "default", name: "solo"))

        #expect(try repo.list(namespace: nil, name: nil).map(\.uid) == [a2.uid, a1.uid, b1.uid, d1.uid])
        #expect(try repo.list(namespace: "", name: nil).map(\.uid) == [a2.uid, a1.uid, b1.uid, d1.uid])
        #expect(try repo.list(namespace: "a", name: nil).map(\.uid) == [a2.uid, a1.uid])
        #expect(try repo.list(namespace: "b", name: nil).map(\.uid) == [b1.uid])
        #expect(try repo.list(namespace: "nope", name: nil).isEmpty)
        #expect(try repo.list(namespace: "a", name: "web").map(\.uid) == [a1.uid])
        #expect(try repo.list(namespace: nil, name: "web").map(\.uid) == [a1.uid, b1.uid])
        #expect(try repo.list(namespace: "b", name: "db").isEmpty)
        #expect(try repo.list(namespace: nil, name: "missing").isEmpty)
    }

    @Test("a second VM with the same namespace and name is ALREADY_EXISTS; other namespaces are fine")
    func duplicateName() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let first = try repo.insert(makeVM(namespace: "ns", name: "vm1"))
        let error = expectError(.alreadyExists) { _ = try repo.insert(makeVM(namespace: "ns", name: "vm1")) }
        #expect(error?.message.contains("ns/vm1") == true)
        #expect(try repo.list(namespace: "ns", name: "vm1").map(\.uid) == [first.uid])

        _ = try repo.insert(makeVM(namespace: "other", name: "vm1"))
        #expect(try repo.list(namespace: nil, name: "vm1").count == 2)
    }

    @Test("inserting a uid that is already stored fails and keeps the stored VM")
    func duplicateUID() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let vm = try repo.insert(makeVM(name: "vm1"))
        #expect(throws: AgentError.self) { _ = try repo.insert(makeVM(uid: vm.uid, name: "vm2")) }
        #expect(try repo.get(uid: vm.uid)?.spec.name == "vm1")
        #expect(try repo.list(namespace: nil, name: nil).count == 1)
    }

    // MARK: Update

    @Test("update writes the VM and bumps its version")
    func updateBumpsVersion() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        var vm = try repo.insert(makeVM(name: "vm1"))
        #expect(vm.version == 1)

        vm.status.state = .created
        vm.status.vmmPID = 99
        vm.updatedAt = t0.addingTimeInterval(5)
        let updated = try repo.update(vm)
        #expect(updated.version == 2)
        var expected = vm
        expected.version = 2
        #expect(updated == expected)
        expectSame(try repo.get(uid: vm.uid), expected)

        let again = try repo.update(updated)
        #expect(again.version == 3)
        #expect(try repo.get(uid: vm.uid)?.version == 3)
    }

    @Test("an update from a stale version is FAILED_PRECONDITION and changes nothing")
    func staleVersion() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let original = try repo.insert(makeVM(name: "vm1"))
        var fresh = original
        fresh.status.state = .created
        let stored = try repo.update(fresh)

        var stale = original
        stale.status.state = .failed
        stale.status.failureReason = "should not be written"
        let error = expectError(.failedPrecondition) { _ = try repo.update(stale) }
        #expect(error?.message.contains(original.uid) == true)
        expectSame(try repo.get(uid: original.uid), stored)

        var ahead = stored
        ahead.version = 10
        _ = expectError(.failedPrecondition) { _ = try repo.update(ahead) }
    }

    @Test("updating a VM that is not stored is NOT_FOUND")
    func updateMissing() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let error = expectError(.notFound) { _ = try repo.update(makeVM(name: "ghost")) }
        #expect(error?.message.contains("not found") == true)
        #expect(try repo.list(namespace: nil, name: nil).isEmpty)
    }

    @Test("of concurrent updates from the same version exactly one wins")
    func concurrentUpdates() async throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let vm = try repo.insert(makeVM(name: "vm1"))
        let results = await withTaskGroup(of: Result<MicroVM, AgentError>.self) { group in
            for i in 0..<8 {
                group.addTask {
                    var v = vm
                    v.status.vmmPID = Int32(i + 1)
                    do { return .success(try repo.update(v)) } catch let e as AgentError { return .failure(e) } catch {
                        return .failure(AgentError(.internalError, "\(error)"))
                    }
                }
            }
            var all: [Result<MicroVM, AgentError>] = []
            for await r in group { all.append(r) }
            return all
        }
        let winners = results.compactMap { try? $0.get() }
        let losers = results.compactMap { r -> AgentError? in if case .failure(let e) = r { e } else { nil } }
        #expect(winners.count == 1)
        #expect(losers.count == 7)
        #expect(losers.allSatisfy { $0.code == .failedPrecondition })
        let stored = try #require(try repo.get(uid: vm.uid))
        #expect(stored.version == 2)
        #expect(stored.status.vmmPID == winners.first?.status.vmmPID)
    }

    // MARK: Remove

    @Test("remove deletes the record and frees the name; removing again is harmless")
    func remove() throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        let vm = try repo.insert(makeVM(name: "vm1"))
        let other = try repo.insert(makeVM(name: "vm2"))
        try repo.remove(uid: vm.uid)
        #expect(try repo.get(uid: vm.uid) == nil)
        #expect(try repo.list(namespace: nil, name: nil).map(\.uid) == [other.uid])
        _ = expectError(.notFound) { _ = try repo.update(vm) }

        try repo.remove(uid: vm.uid)
        let reborn = try repo.insert(makeVM(name: "vm1"))
        #expect(try repo.list(namespace: "default", name: "vm1").map(\.uid) == [reborn.uid])
    }

    // MARK: Persistence

    @Test("a second repository on the same file reads back everything, also after the first is gone")
    func persistence() throws {
        let rich = richVM()
        let updated: MicroVM
        do {
            let first = try SQLiteMicroVMRepository(path: path)
            _ = try first.insert(rich)
            _ = try first.insert(makeVM(namespace: "b", name: "other"))
            var changed = rich
            changed.status.retry = 4
            changed.status.restartCount = 3
            changed.updatedAt = Date(timeIntervalSince1970: 1_712_345_999.999)
            updated = try first.update(changed)

            // Another connection sees the committed writes while the first is still open.
            let second = try SQLiteMicroVMRepository(path: path)
            expectSame(try second.get(uid: rich.uid), updated)
        }

        let reopened = try SQLiteMicroVMRepository(path: path)
        let back = try #require(try reopened.get(uid: rich.uid))
        expectSame(back, updated)
        #expect(back.version == 2)
        #expect(back.spec == updated.spec)
        #expect(back.spec.labels == rich.spec.labels)
        #expect(back.status.state == .created)
        #expect(back.status.volumes == rich.status.volumes)
        #expect(back.status.networkInterfaces == rich.status.networkInterfaces)
        #expect(back.status.failureReason == rich.status.failureReason)
        #expect((back.status.retry, back.status.restartCount, back.status.vmmPID) == (4, 3, 4242))
        #expect(back.status.accelerator == "kvm")
        #expect(millis(back.createdAt) == 1_712_345_678_901)
        #expect(millis(back.updatedAt) == 1_712_345_999_999)
        #expect(millis(back.deletedAt) == 1_712_345_700_001)
        #expect(millis(back.status.vmmStartedAt) == 1_712_345_679_456)
        #expect(millis(back.status.firstConsoleOutputAt) == 1_712_345_680_123)
        #expect(try reopened.list(namespace: nil, name: nil).map(\.spec.name) == ["other", "web-1"])

        // Version checks keep working across connections.
        _ = expectError(.failedPrecondition) { _ = try reopened.update(rich) }
        #expect(try reopened.update(back).version == 3)
    }

    @Test("nil optional fields stay nil after a round trip")
    func nilsStayNil() throws {
        let vm = makeVM(name: "plain")
        _ = try SQLiteMicroVMRepository(path: path).insert(vm)
        let back = try #require(try SQLiteMicroVMRepository(path: path).get(uid: vm.uid))
        #expect(back.deletedAt == nil)
        #expect(back.spec.initrd == nil)
        #expect(back.status.kernelMount == nil)
        #expect(back.status.vmmStartedAt == nil)
        #expect(back.status.firstConsoleOutputAt == nil)
        #expect(back.status == MicroVMStatus(state: .pending))
        #expect(back.spec == vm.spec)
    }

    @Test("every state survives a round trip", arguments: MicroVMState.allCases)
    func states(_ state: MicroVMState) throws {
        let repo = try SQLiteMicroVMRepository(path: path)
        var vm = makeVM(name: "vm-\(state.rawValue.lowercased())")
        vm.status.state = state
        _ = try repo.insert(vm)
        #expect(try SQLiteMicroVMRepository(path: path).get(uid: vm.uid)?.status.state == state)
    }
}

@Suite("address allocations")
final class AddressAllocationTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lm-ipam-\(UUID().uuidString)")
    var path: String { directory.appendingPathComponent("state.db").path }
    /// A /29: gateway .1, guests .2 to .6.
    let net = AgentNetwork(bridge: "lm0", gateway: IPv4Interface(cidr: "10.200.0.1/29")!)

    init() throws { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(at: directory) }

    func claim(_ device: String = "eth0", fixed: String? = nil) -> AddressClaim {
        AddressClaim(deviceID: device, network: net, fixed: fixed.flatMap { IPv4Address($0) }, field: "interfaces[0]")
    }

    @Test("lowest free address first, never twice, kept across reopening, freed with its VM; fixed claims are checked")
    func allocate() throws {
        var repo = try SQLiteMicroVMRepository(path: path)
        let a = try repo.insert(makeVM(name: "a"), claims: [claim("eth0"), claim("eth1")])
        #expect(a.status.allocatedAddresses == ["eth0": "10.200.0.2/29", "eth1": "10.200.0.3/29"])
        let b = try repo.insert(makeVM(name: "b"), claims: [claim(fixed: "10.200.0.5")])
        #expect(b.status.allocatedAddresses == nil, "a fixed (static) address is reserved, not allocated")
        #expect(try repo.get(uid: a.uid)?.status.allocatedAddresses == a.status.allocatedAddresses)

        // Taken and reserved addresses are refused, and nothing of the refused VM is stored.
        expectAgentError(.alreadyExists, field: "interfaces[0]") { _ = try repo.insert(makeVM(name: "c"), claims: [claim(fixed: "10.200.0.3")]) }
        expectAgentError(.invalidArgument, field: "interfaces[0]") { _ = try repo.insert(makeVM(name: "c"), claims: [claim(fixed: "10.200.0.1")]) }
        #expect(try repo.list(namespace: nil, name: "c").isEmpty)

        // Reopened (an agent restart): the same allocations; the next one skips taken addresses.
        repo = try SQLiteMicroVMRepository(path: path)
        #expect(try repo.addressAllocations().map(\.address.description) == ["10.200.0.2", "10.200.0.3", "10.200.0.5"])
        let d = try repo.insert(makeVM(name: "d"), claims: [claim()])
        #expect(d.status.allocatedAddresses == ["eth0": "10.200.0.4/29"])
        let e = try repo.insert(makeVM(name: "e"), claims: [claim()])
        #expect(e.status.allocatedAddresses == ["eth0": "10.200.0.6/29"])
        expectAgentError(.failedPrecondition, field: "interfaces[0]") { _ = try repo.insert(makeVM(name: "f"), claims: [claim()]) }

        // Deleting a VM frees its addresses.
        try repo.remove(uid: a.uid)
        let g = try repo.insert(makeVM(name: "g"), claims: [claim()])
        #expect(g.status.allocatedAddresses == ["eth0": "10.200.0.2/29"])
        #expect(try repo.addressAllocations().filter { $0.uid == a.uid }.isEmpty)
    }
}

/// Expects `body` to throw an `AgentError` with `code` whose message names `field` first.
private func expectAgentError(_ code: AgentError.Code, field: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    let error = #expect(throws: AgentError.self, sourceLocation: sourceLocation) { try body() }
    guard let error else { return }
    #expect(error.code == code, "code of \(error)", sourceLocation: sourceLocation)
    #expect(error.message.hasPrefix("\(field): "), "message \"\(error.message)\" should name \(field)", sourceLocation: sourceLocation)
}
