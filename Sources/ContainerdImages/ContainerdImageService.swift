import ContainerdAPI
import Foundation
import GRPCCore
import HostSystem
import Logging
import MicroVMCore
import OCIRegistry

/// The agent's ImageService on containerd: images are pulled into containerd's content store and
/// unpacked into a snapshotter; files and ext4 volume images are taken from a read-only view of
/// the image's snapshot and cached under `cacheDirectory`, one per snapshot chain id.
/// Each VM holds a containerd lease on everything it uses.
public final class ContainerdImageService: ImageService {
    public let connection: ContainerdConnection
    public let snapshotter: String
    public let cacheDirectory: String
    let puller: ImagePuller
    let logger: Logger
    let pulls = SingleFlight<PulledImage>()
    /// Images this agent pulled (reference → image), re-validated by one snapshot stat on use.
    let known = LockedMap<PulledImage>()
    /// (lease, manifest) pairs already added to a lease.
    let held = LockedSet()
    let materialize = SingleFlight<String>()

    public init(socketPath: String, namespace: String, snapshotter: String, cacheDirectory: String, registry: RegistryConfig, logger: Logger) throws {
        let conn = try ContainerdConnection(socketPath: socketPath, namespace: namespace, logger: logger)
        self.connection = conn
        self.snapshotter = snapshotter
        self.cacheDirectory = cacheDirectory
        self.logger = logger
        self.puller = ImagePuller(conn: conn, registry: RegistryClient(config: registry, logger: logger), snapshotter: snapshotter, logger: logger)
        Self.unmountLeftovers(under: "\(cacheDirectory)/mnt", logger: logger)
    }

    /// Unmounts and removes snapshot views an earlier run left mounted (it died while building a
    /// volume image). The views themselves belong to VM leases and go with them.
    static func unmountLeftovers(under dir: String, logger: Logger) {
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, fields[4].hasPrefix(dir + "/") else { continue }
            let point = String(fields[4])
            if umount(point) == 0 {
                logger.warning("unmounted a snapshot view left by an earlier run", metadata: ["path": "\(point)"])
            }
        }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            _ = rmdir("\(dir)/\(entry)")
        }
    }

    public func shutdown() async {
        try? await puller.registry.shutdown()
        connection.close()
    }

    /// The lease that holds what one VM uses.
    public static func leaseID(for vm: MicroVMRef) -> String { "liquidmetal/\(vm.uid)" }

    public func checkAvailable() async throws { _ = try await connection.serverVersion() }

    /// Pulls (once at a time per reference) and makes sure the VM's lease holds the image.
    public func pull(_ reference: String, for vm: MicroVMRef) async throws -> PulledImage {
        let ref: ImageReference
        do { ref = try ImageReference(parsing: reference) } catch { throw error }
        let lease = try await ensureLease(for: vm)
        let image: PulledImage
        if let known = known.get(ref.description), try await puller.snapshotExists(known.topChainID) {
            image = known  // pulled earlier by this agent and still unpacked: one round trip
        } else {
            image = try await pulls.run(key: ref.description) { try await self.puller.pull(ref, lease: lease) }
            known.set(ref.description, image)
        }
        if held.insert("\(lease) \(image.manifest.digest)") {
            do { try await hold(image, lease: lease) } catch {
                held.remove("\(lease) \(image.manifest.digest)")
                throw error
            }
        }
        return image
    }

    public func fetchFile(reference: String, filename: String, for vm: MicroVMRef) async throws -> ImageFile {
        let image = try await pull(reference, for: vm)
        let dir = "\(cacheDirectory)/\(snapshotter)/\(Digest.hex(image.topChainID))/files"
        let target = "\(dir)/\(filename)"
        if HostFiles.exists(target) { return ImageFile(path: target) }
        let path = try await materialize.run(key: target) {
            if HostFiles.exists(target) { return target }
            try await self.withView(of: image, for: vm) { root in
                let source = "\(root)/\(filename)"
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: source, isDirectory: &isDir), !isDir.boolValue else {
                    throw AgentError(.failedPrecondition, "\(filename) is not a file in image \(reference)")
                }
                let resolved = URL(fileURLWithPath: source).resolvingSymlinksInPath().path
                guard resolved.hasPrefix(root + "/") || resolved == source else {
                    throw AgentError(.failedPrecondition, "\(filename) in image \(reference) links outside the image")
                }
                try HostFiles.createDirectory((target as NSString).deletingLastPathComponent)
                let tmp = target + ".partial"
                try HostFiles.remove(tmp)
                try FileManager.default.copyItem(atPath: resolved, toPath: tmp)
                guard rename(tmp, target) == 0 else { throw AgentError(.internalError, "cannot move \(tmp) to \(target)") }
            }
            return target
        }
        return ImageFile(path: path)
    }

    public func volumeImage(reference: String, for vm: MicroVMRef) async throws -> ImageFile {
        let image = try await pull(reference, for: vm)
        let target = "\(cacheDirectory)/\(snapshotter)/\(Digest.hex(image.topChainID))/volume.ext4"
        if HostFiles.exists(target) { return ImageFile(path: target) }
        let path = try await materialize.run(key: target) {
            if HostFiles.exists(target) { return target }
            try await self.withView(of: image, for: vm) { root in
                try HostFiles.createDirectory((target as NSString).deletingLastPathComponent)
                try await Ext4Builder.build(from: root, to: target, logger: self.logger)
            }
            return target
        }
        return ImageFile(path: path)
    }

    /// Creates the VM's lease if it does not exist yet; returns its id.
    func ensureLease(for vm: MicroVMRef) async throws -> String {
        let id = Self.leaseID(for: vm)
        try await connection.call("leases create") {
            do {
                _ = try await connection.leases.create(.with {
                    $0.id = id
                    $0.labels = ["liquidmetal.io/uid": vm.uid, "liquidmetal.io/namespace": vm.namespace, "liquidmetal.io/name": vm.name]
                }, metadata: connection.metadata(), options: ContainerdConnection.options())
            } catch let e as RPCError where e.isAlreadyExists {}
        }
        return id
    }

    /// Adds the image's content and snapshots to the lease (content pulled earlier for another VM
    /// is not added automatically).
    func hold(_ image: PulledImage, lease: String) async throws {
        var resources: [(String, String)] = [(image.manifest.digest, "content"), (image.config.digest, "content")]
        resources += image.layers.map { ($0.digest, "content") }
        resources += image.chainIDs.map { ($0, "snapshots/\(snapshotter)") }
        let connection = self.connection
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (id, type) in resources {
                group.addTask {
                    try await connection.call("leases add resource") {
                        _ = try await connection.leases.addResource(.with {
                            $0.id = lease
                            $0.resource = .with { r in r.id = id; r.type = type }
                        }, metadata: connection.metadata(), options: ContainerdConnection.options())
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    public func hasLease(for vm: MicroVMRef) async throws -> Bool {
        let id = Self.leaseID(for: vm)
        return try await connection.call("leases list") {
            let all = try await connection.leases.list(.with { $0.filters = ["id==\(id)"] }, metadata: connection.metadata(), options: ContainerdConnection.options())
            return all.leases.contains { $0.id == id }
        }
    }

    public func releaseLease(for vm: MicroVMRef) async throws {
        let id = Self.leaseID(for: vm)
        held.removeAll(prefix: id + " ")
        try await connection.call("leases delete") {
            do {
                _ = try await connection.leases.delete(.with { $0.id = id }, metadata: connection.metadata(), options: ContainerdConnection.options())
            } catch let e as RPCError where e.isNotFound {}
        }
    }

    /// Mounts a read-only view of the image's filesystem for the duration of `body`.
    func withView<T: Sendable>(of image: PulledImage, for vm: MicroVMRef, _ body: (String) async throws -> T) async throws -> T {
        let key = "lm-view-\(UUID().uuidString)"
        let lease = Self.leaseID(for: vm)
        let mounts = try await connection.call("snapshots view") {
            try await connection.snapshots.view(.with {
                $0.snapshotter = snapshotter
                $0.key = key
                $0.parent = image.topChainID
            }, metadata: connection.metadata(lease: lease), options: ContainerdConnection.options(timeout: .seconds(600))).mounts
        }
        defer { Task { [puller] in try? await puller.removeSnapshot(key) } }
        let mountPoint = "\(cacheDirectory)/mnt/\(UUID().uuidString)"
        try HostFiles.createDirectory(mountPoint)
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let root = try await Mounter.mount(mounts, at: mountPoint)
        do {
            let result = try await body(root)
            if root == mountPoint { try await Mounter.unmount(mountPoint) }
            return result
        } catch {
            if root == mountPoint { try? await Mounter.unmount(mountPoint) }
            throw error
        }
    }
}

final class LockedMap<V: Sendable>: @unchecked Sendable {
    private var values: [String: V] = [:]
    private let lock = NSLock()
    func get(_ k: String) -> V? { lock.withLock { values[k] } }
    func set(_ k: String, _ v: V) { lock.withLock { values[k] = v } }
}

final class LockedSet: @unchecked Sendable {
    private var values: Set<String> = []
    private let lock = NSLock()
    func insert(_ v: String) -> Bool { lock.withLock { values.insert(v).inserted } }
    func remove(_ v: String) { lock.withLock { _ = values.remove(v) } }
    func removeAll(prefix: String) { lock.withLock { values = values.filter { !$0.hasPrefix(prefix) } } }
}

/// Runs one task per key at a time; concurrent callers with the same key share its result.
actor SingleFlight<Value: Sendable> {
    private var inFlight: [String: Task<Value, any Error>] = [:]

    func run(key: String, _ work: @escaping @Sendable () async throws -> Value) async throws -> Value {
        if let t = inFlight[key] { return try await t.value }
        let t = Task { try await work() }
        inFlight[key] = t
        defer { inFlight[key] = nil }
        return try await t.value
    }
}

/// Mounting containerd's mount descriptions with mount(8).
enum Mounter {
    /// Mounts and returns the directory holding the filesystem. A single bind mount is used in
    /// place (no mount needed for reading).
    static func mount(_ mounts: [Containerd_Types_Mount], at target: String) async throws -> String {
        guard mounts.count == 1, let m = mounts.first else {
            throw AgentError(.internalError, "containerd returned \(mounts.count) mounts for a view; expected one")
        }
        if m.type == "bind" || m.type == "rbind" { return m.source }
        var options = m.options
        if !options.contains("ro") { options.append("ro") }
        try await HostProcess.run(["mount", "-t", m.type, m.source, target, "-o", options.joined(separator: ",")])
        return target
    }

    static func unmount(_ target: String) async throws {
        try await HostProcess.run(["umount", target])
    }
}

/// Builds ext4 images from directories with `mkfs.ext4 -d`.
public enum Ext4Builder {
    /// Writes an ext4 image of `directory` to `target` (via a temporary file and a rename),
    /// sized for the content plus headroom.
    public static func build(from directory: String, to target: String, logger: Logger) async throws {
        let usage = try await HostProcess.run(["du", "-s", "-x", "--block-size=1", directory])
        let used = Int64(usage.split(separator: "\t").first.flatMap { Int64($0.trimmingCharacters(in: .whitespaces)) } ?? 0)
        let inodes = Int64(try await HostProcess.run(["find", directory, "-xdev", "-printf", "."]).utf8.count)
        // Room for metadata and small files, at least 64 MiB, rounded to MiB.
        let bytes = max(64 << 20, used + used / 4 + inodes * 512 + (32 << 20))
        let mib = (bytes + (1 << 20) - 1) >> 20
        let tmp = target + ".partial"
        try HostFiles.remove(tmp)
        let start = ContinuousClock.now
        try await HostProcess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-L", "lmroot", "-N", "\(max(inodes * 2, 4096))", "-d", directory, tmp, "\(mib)M"])
        guard rename(tmp, target) == 0 else { throw AgentError(.internalError, "cannot move \(tmp) to \(target)") }
        logger.info("built volume image", metadata: ["path": "\(target)", "size_mib": "\(mib)", "took": "\(ContinuousClock.now - start)"])
    }
}
