import Foundation
import Yams

/// Validation of objects against CustomResourceDefinition schemas (OpenAPI v3, structural), as the
/// API server does on create and update: types (with `x-kubernetes-int-or-string`), required
/// fields, unknown fields (refused, as with `kubectl --validate=strict`; kept under
/// `x-kubernetes-preserve-unknown-fields`), enums, string patterns and lengths, numeric bounds, list
/// sizes. Not evaluated: CEL rules (`x-kubernetes-validations`), formats, defaults.
public struct SchemaValidator: Sendable {
    /// One CRD version's schema, by "group/version" and kind.
    public struct Entry: @unchecked Sendable {  // JSON values, read only
        public var group: String
        public var version: String
        public var kind: String
        public var plural: String
        public var schema: [String: Any]
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    /// Loads every served version of the CRDs in `files` (YAML, several documents allowed).
    public init(crdFiles files: [String]) throws {
        for file in files {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            for case let crd as [String: Any] in try Yams.load_all(yaml: text) where crd["kind"] as? String == "CustomResourceDefinition" {
                try add(crd: crd)
            }
        }
    }

    /// The CRD files of a directory (`*.yaml`).
    public init(crdDirectories directories: [String]) throws {
        let files = try directories.flatMap { dir in
            try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted().map { "\(dir)/\($0)" }
        }
        try self.init(crdFiles: files)
    }

    public mutating func add(crd: [String: Any]) throws {
        guard let spec = crd["spec"] as? [String: Any], let group = spec["group"] as? String,
              let names = spec["names"] as? [String: Any], let kind = names["kind"] as? String, let plural = names["plural"] as? String,
              let versions = spec["versions"] as? [[String: Any]] else {
            throw SchemaError(path: "", message: "not a CustomResourceDefinition")
        }
        for v in versions where v["served"] as? Bool != false {
            guard let name = v["name"] as? String, let schema = (v["schema"] as? [String: Any])?["openAPIV3Schema"] as? [String: Any] else { continue }
            entries.append(Entry(group: group, version: name, kind: kind, plural: plural, schema: schema))
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

    /// Problems of `object` against the schema of its apiVersion and kind; a kind without a schema is one.
    public func validate(_ object: [String: Any]) -> [SchemaError] {
        let apiVersion = object["apiVersion"] as? String ?? "", kind = object["kind"] as? String ?? ""
        guard let e = entry(apiVersion: apiVersion, kind: kind) else {
            return [SchemaError(path: "", message: "no schema for \(apiVersion) \(kind)")]
        }
        return Self.validate(object, e.schema, root: true)
    }

    /// Problems of `value` against `schema`, each with its JSON path.
    public static func validate(_ value: Any, _ schema: [String: Any], path: String = "", root: Bool = false) -> [SchemaError] {
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
                    problems += validate(v, s, path: join(path, k))
                } else if let extra = schema["additionalProperties"] as? [String: Any] {
                    problems += validate(v, extra, path: "\(path)[\(k)]")
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
        return problems
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

    /// Cluster API v1.10.5's CRDs (data beside the project: ../shared/capi-crds/v1.10.5, or the
    /// directory $LM_CAPI_CRDS names).
    public static func clusterAPIDirectory() throws -> String {
        let candidates = [ProcessInfo.processInfo.environment["LM_CAPI_CRDS"], "\(repositoryRoot)/../shared/capi-crds/v1.10.5"].compactMap { $0 }
        guard let dir = candidates.first(where: { FileManager.default.fileExists(atPath: "\($0)/cluster.x-k8s.io_clusters.yaml") }) else {
            throw SchemaError(path: "", message: "Cluster API's CRDs not found in \(candidates.joined(separator: " or ")); set LM_CAPI_CRDS to their directory")
        }
        return URL(fileURLWithPath: dir).standardizedFileURL.path
    }

    /// The schemas of the project's CRDs (config/crd/bases) and Cluster API's.
    public static func project() throws -> SchemaValidator {
        try SchemaValidator(crdDirectories: ["\(repositoryRoot)/config/crd/bases", try clusterAPIDirectory()])
    }
}
