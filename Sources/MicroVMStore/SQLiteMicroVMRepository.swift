import Foundation
import GRDB
import MicroVMCore

/// Stores microVMs in one SQLite file (WAL, synchronous=FULL), so that a crash at any instant
/// leaves either the old or the new version of a VM, never a mix.
public final class SQLiteMicroVMRepository: MicroVMRepository {
    private let db: DatabaseQueue
    public let path: String

    /// Opens (creating and migrating when needed) the database at `path`.
    public init(path: String) throws {
        self.path = path
        var config = Configuration()
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        config.busyMode = .timeout(10)
        db = try DatabaseQueue(path: path, configuration: config)
        try db.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = WAL") }
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: microvm") { db in
            try db.create(table: "microvm") { t in
                t.primaryKey("uid", .text)
                t.column("namespace", .text).notNull()
                t.column("name", .text).notNull()
                t.column("state", .text).notNull()
                t.column("version", .integer).notNull()
                t.column("spec", .blob).notNull()
                t.column("status", .blob).notNull()
                t.column("created_at", .double).notNull()
                t.column("updated_at", .double).notNull()
                t.column("deleted_at", .double)
            }
            try db.create(index: "microvm_namespace_name", on: "microvm", columns: ["namespace", "name"], unique: true)
        }
        m.registerMigration("v2: address allocations") { db in
            // One row per address taken on an agent-owned bridge; the primary key makes handing an
            // address out twice impossible, the cascade frees it with its VM.
            try db.create(table: "address_allocation") { t in
                t.column("bridge", .text).notNull()
                t.column("address", .integer).notNull()
                t.column("uid", .text).notNull().references("microvm", column: "uid", onDelete: .cascade)
                t.column("device_id", .text).notNull()
                t.primaryKey(["bridge", "address"])
            }
            try db.create(index: "address_allocation_uid", on: "address_allocation", columns: ["uid"])
        }
        return m
    }

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .millisecondsSince1970
        e.outputFormatting = .sortedKeys
        return e
    }()
    private static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .millisecondsSince1970
        return d
    }()

    private func row(_ vm: MicroVM) throws -> [String: (any DatabaseValueConvertible)?] {
        [
            "uid": vm.uid, "namespace": vm.spec.namespace, "name": vm.spec.name, "state": vm.status.state.rawValue,
            "version": vm.version, "spec": try Self.encoder.encode(vm.spec), "status": try Self.encoder.encode(vm.status),
            "created_at": vm.createdAt.timeIntervalSince1970, "updated_at": vm.updatedAt.timeIntervalSince1970,
            "deleted_at": vm.deletedAt?.timeIntervalSince1970,
        ]
    }

    private func decode(_ row: Row) throws -> MicroVM {
        let spec = try Self.decoder.decode(MicroVMSpec.self, from: row["spec"] as Data)
        let status = try Self.decoder.decode(MicroVMStatus.self, from: row["status"] as Data)
        let deleted: Double? = row["deleted_at"]
        return MicroVM(
            uid: row["uid"], version: row["version"], spec: spec, status: status,
            createdAt: Date(timeIntervalSince1970: row["created_at"]), updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
            deletedAt: deleted.map { Date(timeIntervalSince1970: $0) })
    }

    public func insert(_ vm: MicroVM) throws -> MicroVM { try insert(vm, claims: []) }

    public func insert(_ vm: MicroVM, claims: [AddressClaim]) throws -> MicroVM {
        try wrap {
            try db.write { db in
                if try Row.fetchOne(db, sql: "SELECT uid FROM microvm WHERE namespace = ? AND name = ?", arguments: [vm.spec.namespace, vm.spec.name]) != nil {
                    throw AgentError(.alreadyExists, "a microVM named \(vm.spec.namespace)/\(vm.spec.name) already exists")
                }
                var vm = vm
                var taken: [(String, UInt32, String)] = []
                for claim in claims {
                    let net = claim.network
                    let used = Set(try Int64.fetchAll(db, sql: "SELECT address FROM address_allocation WHERE bridge = ?", arguments: [net.bridge]).map { UInt32($0) })
                        .union(taken.filter { $0.0 == net.bridge }.map(\.1))
                    let reserved: Set<UInt32> = [net.gateway.address.value]
                    if let fixed = claim.fixed {
                        guard !reserved.contains(fixed.value) else {
                            throw AgentError(.invalidArgument, "\(claim.field): \(fixed) is the address of bridge \(net.bridge)")
                        }
                        guard !used.contains(fixed.value) else {
                            let owner = try String.fetchOne(db, sql: "SELECT uid FROM address_allocation WHERE bridge = ? AND address = ?", arguments: [net.bridge, Int64(fixed.value)])
                            throw AgentError(.alreadyExists, "\(claim.field): \(fixed) is already allocated on \(net.bridge)\(owner.map { " (to microVM \($0))" } ?? "")")
                        }
                        taken.append((net.bridge, fixed.value, claim.deviceID))
                    } else {
                        guard let free = net.gateway.hostAddresses.first(where: { !used.contains($0) && !reserved.contains($0) }) else {
                            throw AgentError(.failedPrecondition, "\(claim.field): no free address left in \(net.gateway.networkCIDR) on \(net.bridge)")
                        }
                        taken.append((net.bridge, free, claim.deviceID))
                        vm.status.allocatedAddresses = (vm.status.allocatedAddresses ?? [:])
                            .merging([claim.deviceID: "\(IPv4Address(free))/\(net.gateway.prefixLength)"]) { $1 }
                    }
                }
                let values = try row(vm)
                let cols = values.keys.sorted()
                try db.execute(
                    sql: "INSERT INTO microvm (\(cols.joined(separator: ","))) VALUES (\(cols.map { _ in "?" }.joined(separator: ",")))",
                    arguments: StatementArguments(cols.map { values[$0]! }))
                for (bridge, address, device) in taken {
                    try db.execute(sql: "INSERT INTO address_allocation (bridge, address, uid, device_id) VALUES (?, ?, ?, ?)",
                                   arguments: [bridge, Int64(address), vm.uid, device])
                }
                return vm
            }
        }
    }

    /// Every address allocation: (bridge, address, uid, device_id), ordered.
    public func addressAllocations() throws -> [(bridge: String, address: IPv4Address, uid: String, deviceID: String)] {
        try wrap {
            try db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM address_allocation ORDER BY bridge, address").map {
                    (bridge: $0["bridge"], address: IPv4Address(UInt32(($0["address"] as Int64))), uid: $0["uid"], deviceID: $0["device_id"])
                }
            }
        }
    }

    public func get(uid: String) throws -> MicroVM? {
        try wrap {
            try db.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM microvm WHERE uid = ?", arguments: [uid]).map(decode)
            }
        }
    }

    public func list(namespace: String?, name: String?) throws -> [MicroVM] {
        try wrap {
            try db.read { db in
                var sql = "SELECT * FROM microvm"
                var conds: [String] = []
                var args: [any DatabaseValueConvertible] = []
                if let namespace, !namespace.isEmpty { conds.append("namespace = ?"); args.append(namespace) }
                if let name { conds.append("name = ?"); args.append(name) }
                if !conds.isEmpty { sql += " WHERE " + conds.joined(separator: " AND ") }
                sql += " ORDER BY namespace, name, uid"
                return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(decode)
            }
        }
    }

    public func update(_ vm: MicroVM) throws -> MicroVM {
        try wrap {
            try db.write { db in
                guard let current = try Int.fetchOne(db, sql: "SELECT version FROM microvm WHERE uid = ?", arguments: [vm.uid]) else {
                    throw AgentError(.notFound, "microVM \(vm.uid) not found")
                }
                guard current == vm.version else {
                    throw AgentError(.failedPrecondition, "microVM \(vm.uid) changed concurrently (version \(vm.version), stored \(current))")
                }
                var next = vm
                next.version += 1
                let values = try row(next)
                let cols = values.keys.sorted().filter { $0 != "uid" }
                try db.execute(
                    sql: "UPDATE microvm SET \(cols.map { "\($0) = ?" }.joined(separator: ", ")) WHERE uid = ?",
                    arguments: StatementArguments(cols.map { values[$0]! } + [vm.uid]))
                return next
            }
        }
    }

    public func remove(uid: String) throws {
        try wrap {
            try db.write { db in
                try db.execute(sql: "DELETE FROM address_allocation WHERE uid = ?", arguments: [uid])
                try db.execute(sql: "DELETE FROM microvm WHERE uid = ?", arguments: [uid])
            }
        }
    }

    /// Maps SQLite failures to an agent error so callers see a clear message.
    private func wrap<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as AgentError { throw e } catch let e as DatabaseError {
            throw AgentError(.internalError, "state database \(path): \(e.message ?? "\(e)")")
        }
    }
}
