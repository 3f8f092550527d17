import Foundation
import KubernetesClient
import Synchronization
import Yams

/// Validation of objects against CustomResourceDefinition schemas (OpenAPI v3, structural), as the
/// API server does on create and update: types (with `x-kubernetes-int-or-string`), required
/// fields, unknown fields (refused, as with `kubectl --validate=strict`; kept under
/// `x-kubernetes-preserve-unknown-fields`), enums, string patterns and lengths, numeric bounds, list
/// sizes, the `date-time` format, and the CEL rules (`x-kubernetes-validations`) our CRDs use:
/// the transition rule `self == oldSelf` (checked on updates where the old object has the field, as
/// the API server does) and `has(self.a) != has(self.b)`. One of our CRDs with any other rule is
/// refused when it is loaded, so a new rule cannot go untested; other CRDs' rules (Cluster API's) are
/// not evaluated. Not applied: defaults, other formats.
public struct SchemaValidator: Sendable {
    /// One CRD version's schema, by "group/version" and kind.
    public struct Entry: @unchecked Sendable {  // JSON values, read only
        public var group: String
        public var version: String
        public var kind: String
        public var plural: String
        public var schema: [String: Any]
        /// Whether the CRD serves a `status` subresource (then only it changes status).
        public var hasStatusSubresource: Bool = true
    }

    public private(set) var entries: [Entry] = []
    /// API groups whose kinds are stored without validation (Cluster API's, when its CRDs are not at hand).
    public var unvalidatedGroups: Set<String> = []

    public init() {}

    /// Loads every served version of the CRDs in `files` (YAML, several documents allowed). With
    /// `refusingUnknownRules` (the project's own CRDs), a CEL rule the validator cannot evaluate is an
    /// error; otherwise (others' CRDs, such as Cluster API's) such rules are not evaluated.
    public init(crdFiles files: [String], refusingUnknownRules: Bool = true) throws {
        for file in files {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            for case let crd as [String: Any] in try Yams.load_all(yaml: text) where crd["kind"] as? String == "CustomResourceDefinition" {
                try add(crd: crd, refusingUnknownRules: refusingUnknownRules)
            }
        }
    }

    /// The CRD files of directories (`*.yaml`).
    public init(crdDirectories directories: [String], refusingUnknownRules: Bool = true) throws {
        let files = try directories.flatMap { dir in
            try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted().map { "\(dir)/\($0)" }
        }
        try self.init(crdFiles: files, refusingUnknownRules: refusingUnknownRules)
    }

    public mutating func add(crd: [String: Any], refusingUnknownRules: Bool = true) throws {
        guard let spec = crd["spec"] as? [String: Any], let group = spec["group"] as? String,
              let names = spec["names"] as? [String: Any], let kind = names["kind"] as? String, let plural = names["plural"] as? String,
              let versions = spec["versions"] as? [[String: Any]] else {
            throw SchemaError(path: "", message: "not a CustomResourceDefinition")
        }
        for v in versions where v["served"] as? Bool != false {
            guard let name = v["name"] as? String, let schema = (v["schema"] as? [String: Any])?["openAPIV3Schema"] as? [String: Any] else { continue }
            if refusingUnknownRules, let rule = Self.unsupportedRules(schema).first {
                throw SchemaError(path: "\(kind) \(name)", message: "CEL rule \(rule) is not one the test API server can evaluate: add it to SchemaValidator.celRule")
            }
            let subresources = v["subresources"] as? [String: Any] ?? [:]
            entries.append(Entry(group: group, version: name, kind: kind, plural: plural, schema: schema, hasStatusSubresource: subresources["status"] != nil))
        }
    }

    /// The schema for an object's `apiVersion` and `kind`.
    public func entry(apiVersion: String, kind: String) -> Entry? {
        entries.first { "\($0.group)/\($0.version)" == apiVersion && $0.kind == kind }
    }

    /// The schema for a REST collection, "group/version/plural".
    public func entry(collection: String) -> Entry? {
        entries.first { "\($0.group)/\($0.version)/\($0.plural)" == collection }
    }

    /// Problems of `object` against the schema of its apiVersion and kind; a kind without a schema is
    /// one, unless its group is one of `unvalidatedGroups`.
    public func validate(_ object: [String: Any]) -> [SchemaError] {
        let apiVersion = object["apiVersion"] as? String ?? "", kind = object["kind"] as? String ?? ""
        guard let e = entry(apiVersion: apiVersion, kind: kind) else {
            let group = apiVersion.split(separator: "/").dropLast().joined(separator: "/")
            if unvalidatedGroups.contains(group) { return [] }
            return [SchemaError(path: "", message: "no schema for \(apiVersion) \(kind)")]
        }
        return Self.validate(object, e.schema, root: true)
    }

    /// Problems of `value` against `schema`, each with its JSON path. `old` is the value at the same
    /// place in the object being replaced (nil on create, or where the old object has none): transition
    /// rules are checked only where it is given.
    public static func validate(_ value: Any, _ schema: [String: Any], path: String = "", root: Bool = false, old: Any? = nil) -> [SchemaError] {
        func error(_ m: String) -> [SchemaError] { [SchemaError(path: path.isEmpty ? "<root>" : path, message: m)] }
        if value is NSNull { return schema["nullable"] as? Bool == true ? [] : error("null is not allowed") }
        if schema["x-kubernetes-int-or-string"] as? Bool == true {
            return isInteger(value) || value is String ? [] : error("must be an integer or a string")
        }
        var problems: [SchemaError] = []
        switch schema["type"] as? String {
        case "object":
            guard let object = value as? [String: Any] else { return error("must be an object, not \(describe(value))") }
            let props = schema["properties"] as? [String: Any] ?? [:]
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] as? Bool == true
            let embedded = root || schema["x-kubernetes-embedded-resource"] as? Bool == true
            for name in schema["required"] as? [String] ?? [] where object[name] == nil {
                problems += [SchemaError(path: join(path, name), message: "Required value")]
            }
            for (k, v) in object.sorted(by: { $0.key < $1.key }) {
                if embedded, ["apiVersion", "kind", "metadata"].contains(k) {
                    continue  // ObjectMeta and the type fields are validated by the API server itself
                } else if let s = props[k] as? [String: Any] {
                    problems += validate(v, s, path: join(path, k), old: (old as? [String: Any])?[k])
                } else if let extra = schema["additionalProperties"] as? [String: Any] {
                    problems += validate(v, extra, path: "\(path)[\(k)]", old: (old as? [String: Any])?[k])
                } else if !preserve && schema["additionalProperties"] as? Bool != true {
                    problems += [SchemaError(path: join(path, k), message: "unknown field")]
                }
            }
            if let max = schema["maxProperties"] as? Int, object.count > max { problems += error("at most \(max) properties") }
            if let min = schema["minProperties"] as? Int, object.count < min { problems += error("at least \(min) properties") }
        case "array":
            guard let array = value as? [Any] else { return error("must be an array, not \(describe(value))") }
            if let max = schema["maxItems"] as? Int, array.count > max { problems += error("must have at most \(max) items") }
            if let min = schema["minItems"] as? Int, array.count < min { problems += error("must have at least \(min) items") }
            if let items = schema["items"] as? [String: Any] {
                for (i, v) in array.enumerated() { problems += validate(v, items, path: "\(path)[\(i)]") }
            }
        case "string":
            guard let s = value as? String else { return error("must be a string, not \(describe(value))") }
            if let max = schema["maxLength"] as? Int, s.count > max { problems += error("may not be longer than \(max)") }
            if let min = schema["minLength"] as? Int, s.count < min { problems += error("must be at least \(min) long") }
            if let pattern = schema["pattern"] as? String, s.range(of: pattern, options: .regularExpression) == nil {
                problems += error("\"\(s)\" does not match \(pattern)")
            }
            if schema["format"] as? String == "date-time", KubernetesTime.parseTime(s) == nil {
                problems += error("Invalid value: \"\(s)\": must be an RFC 3339 date-time")
            }
        case "integer":
            guard isInteger(value) else { return error("must be an integer, not \(describe(value))") }
        case "number":
            guard isNumber(value) else { return error("must be a number, not \(describe(value))") }
        case "boolean":
            guard isBool(value) else { return error("must be a boolean, not \(describe(value))") }
        default:
            break  // no type: anything (x-kubernetes-preserve-unknown-fields)
        }
        if let allowed = schema["enum"] as? [Any], !allowed.contains(where: { equal($0, value) }) {
            problems += error("Unsupported value \(describe(value)): supported values are \(allowed.map(describe).joined(separator: ", "))")
        }
        if isNumber(value), let n = double(value) {
            if let min = schema["minimum"].flatMap(double), n < min { problems += error("must be greater than or equal to \(min)") }
            if let max = schema["maximum"].flatMap(double), n > max { problems += error("must be less than or equal to \(max)") }
        }
        for rule in schema["x-kubernetes-validations"] as? [[String: Any]] ?? [] {
            guard let text = rule["rule"] as? String, celRule(text, value, old: old) == false else { continue }
            let message = rule["message"] as? String ?? "failed rule: \(text)"
            problems += error("Invalid value: \"\(schema["type"] as? String ?? "object")\": \(message)")
        }
        return problems
    }

    /// The CEL rules the test server evaluates: true or false, nil when the rule does not apply (a
    /// transition rule on a create, or where the old object lacks the field) or is unknown.
    static func celRule(_ rule: String, _ value: Any, old: Any?) -> Bool? {
        let r = rule.trimmingCharacters(in: .whitespaces)
        if r == "self == oldSelf" {
            guard let old else { return nil }
            return equal(value, old)
        }
        if let (a, b) = hasInequality(r) {
            let o = value as? [String: Any] ?? [:]
            return (o[a] != nil) != (o[b] != nil)
        }
        return nil
    }

    /// `has(self.a) != has(self.b)` → (a, b).
    static func hasInequality(_ r: String) -> (String, String)? {
        let parts = r.components(separatedBy: "!=").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2 else { return nil }
        func field(_ p: String) -> String? {
            guard p.hasPrefix("has(self."), p.hasSuffix(")") else { return nil }
            let f = String(p.dropFirst("has(self.".count).dropLast())
            return f.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } && !f.isEmpty ? f : nil
        }
        guard let a = field(parts[0]), let b = field(parts[1]) else { return nil }
        return (a, b)
    }

    /// Every rule in `schema` that `celRule` cannot evaluate.
    static func unsupportedRules(_ schema: Any) -> [String] {
        var out: [String] = []
        if let o = schema as? [String: Any] {
            for rule in o["x-kubernetes-validations"] as? [[String: Any]] ?? [] {
                let text = rule["rule"] as? String ?? ""
                if text.trimmingCharacters(in: .whitespaces) != "self == oldSelf" && hasInequality(text) == nil { out.append(text) }
            }
            for (k, v) in o where k != "x-kubernetes-validations" { out += unsupportedRules(v) }
        } else if let a = schema as? [Any] {
            for v in a { out += unsupportedRules(v) }
        }
        return out
    }

    static func join(_ path: String, _ k: String) -> String { path.isEmpty ? k : "\(path).\(k)" }

    /// Booleans: Swift's (from YAML) or Foundation's (from JSON), where an NSNumber 1 also casts to Bool.
    static func isBool(_ v: Any) -> Bool {
        let t = String(describing: type(of: v))
        return t == "Bool" || t == "__NSCFBoolean"
    }

    static func isInteger(_ v: Any) -> Bool { !isBool(v) && v is Int }

    static func isNumber(_ v: Any) -> Bool { !isBool(v) && (v is Int || v is Double) }

    static func double(_ v: Any) -> Double? {
        if let i = v as? Int { return Double(i) }
        if let d = v as? Double { return d }
        return (v as? NSNumber)?.doubleValue
    }

    static func describe(_ v: Any) -> String {
        if let s = v as? String { return "\"\(s)\"" }
        if v is [Any] { return "an array" }
        if v is [String: Any] { return "an object" }
        return "\(v)"
    }

    static func equal(_ a: Any, _ b: Any) -> Bool {
        let opts: JSONSerialization.WritingOptions = [.sortedKeys, .fragmentsAllowed]
        return (try? JSONSerialization.data(withJSONObject: a, options: opts)) == (try? JSONSerialization.data(withJSONObject: b, options: opts))
    }
}

public struct SchemaError: Error, Sendable, CustomStringConvertible, Equatable {
    public var path: String
    public var message: String
    public var description: String { "\(path): \(message)" }
}

extension SchemaValidator {
    /// The repository's root (this file is Tests/KubernetesTestServer/SchemaValidation.swift).
    public static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// Cluster API's CRDs (v1.10.5's are the reference data): the directory `$LM_CAPI_CRDS` names,
    /// or nil when it is not set. The repository never reads anything outside itself on its own.
    public static func clusterAPIDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        guard let dir = environment["LM_CAPI_CRDS"], !dir.isEmpty else { return nil }
        guard FileManager.default.fileExists(atPath: "\(dir)/cluster.x-k8s.io_clusters.yaml") else {
            throw SchemaError(path: "", message: "LM_CAPI_CRDS=\(dir) holds no cluster.x-k8s.io_clusters.yaml: point it at a directory of Cluster API's CRDs")
        }
        return URL(fileURLWithPath: dir).standardizedFileURL.path
    }

    /// Cluster API's API groups.
    public static let clusterAPIGroups: Set = ["cluster.x-k8s.io", "bootstrap.cluster.x-k8s.io", "controlplane.cluster.x-k8s.io",
                                               "addons.cluster.x-k8s.io", "ipam.cluster.x-k8s.io", "runtime.cluster.x-k8s.io"]

    /// Whether Cluster API's CRDs were found (`LM_CAPI_CRDS`), so that its kinds are validated too.
    public var validatesClusterAPI: Bool { unvalidatedGroups.isEmpty }

    /// The schemas of the project's CRDs (config/crd/bases), and Cluster API's when `LM_CAPI_CRDS`
    /// names them; without them Cluster API's kinds are stored unvalidated, which is said once.
    public static func project() throws -> SchemaValidator {
        guard let capi = try clusterAPIDirectory() else {
            var v = try SchemaValidator(crdDirectories: ["\(repositoryRoot)/config/crd/bases"])
            v.unvalidatedGroups = clusterAPIGroups
            warnOnce()
            return v
        }
        var v = try SchemaValidator(crdDirectories: ["\(repositoryRoot)/config/crd/bases"])
        let capiSchemas = try SchemaValidator(crdDirectories: [capi], refusingUnknownRules: false)
        v.entries += capiSchemas.entries
        return v
    }

    static let warned = Mutex(false)
    static func warnOnce() {
        guard warned.withLock({ w in defer { w = true }; return !w }) else { return }
        FileHandle.standardError.write(Data("note: LM_CAPI_CRDS is not set: objects of Cluster API's kinds are stored without validation (set it to a directory of Cluster API's CRDs to check them too)\n".utf8))
    }
}
