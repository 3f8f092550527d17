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

    public func insert(_ vm: MicroVM) throws -> MicroVM {
        try wrap {
            try db.write { db in
                if try Row.fetchOne(db, sql: "SELECT uid FROM microvm WHERE namespace = ? AND name = ?", arguments: [vm.spec.namespace, vm.spec.name]) != nil {
                    throw AgentError(.alreadyExists, "a microVM named \(vm.spec.namespace)/\(vm.spec.name) already exists")
                }
                let values = try row(vm)
                let cols = values.keys.sorted()
                try db.execute(
                    sql: "INSERT INTO microvm (\(cols.joined(separator: ","))) VALUES (\(cols.map { _ in "?" }.joined(separator: ",")))",
                    arguments: StatementArguments(cols.map { values[$0]! }))
                return vm
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
        try wrap { try db.write { try $0.execute(sql: "DELETE FROM microvm WHERE uid = ?", arguments: [uid]) } }
    }

    /// Maps SQLite failures to an agent error so callers see a clear message.
    private func wrap<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as AgentError { throw e } catch let e as DatabaseError {
            throw AgentError(.internalError, "state database \(path): \(e.message ?? "\(e)")")
        }
    }
}
