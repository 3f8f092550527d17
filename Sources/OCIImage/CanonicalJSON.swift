import Foundation

/// Deterministic JSON for content that gets hashed (configs, manifests, indexes).
///
/// Output is compact (no whitespace), object keys are sorted by their UTF-8 bytes, nil optionals are omitted,
/// "/" is not escaped, and strings escape only `"`, `\` and control characters (as `\b \f \n \r \t` or `\u00XX`).
/// Unlike `JSONEncoder`, the bytes do not depend on the Foundation version or platform.
/// Floating-point values must be finite. Foundation types (`Date`, `Data`, `URL`) get their plain `Codable`
/// forms, not `JSONEncoder` strategies; the OCI types here use none of them. Decode with `JSONDecoder` as usual.
public enum CanonicalJSON {
    /// Encodes a value.
    public static func encode(_ value: some Encodable) throws -> [UInt8] {
        let root = JSONNode()
        try value.encode(to: JSONNodeEncoder(node: root, codingPath: []))
        var out: [UInt8] = []
        root.write(to: &out)
        return out
    }

    /// Encodes a value as `Data`.
    public static func data(_ value: some Encodable) throws -> Data { Data(try encode(value)) }
}

/// A mutable JSON tree node; containers hand out references so nested containers can fill it later.
final class JSONNode {
    enum Kind {
        case empty
        case scalar([UInt8]) // already serialized
        case object
        case array
    }

    var kind: Kind = .empty
    var members: [String: JSONNode] = [:]
    var elements: [JSONNode] = []

    func makeObject() {
        if case .object = kind { return }
        kind = .object
        members = [:]
    }

    func makeArray() {
        if case .array = kind { return }
        kind = .array
        elements = []
    }

    func write(to out: inout [UInt8]) {
        switch kind {
        case .empty:
            // A value that encoded nothing; JSONEncoder writes {} as well.
            out.append(contentsOf: Array("{}".utf8))
        case .scalar(let bytes):
            out.append(contentsOf: bytes)
        case .object:
            out.append(UInt8(ascii: "{"))
            let keys = members.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (i, key) in keys.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONNode.writeString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                members[key]!.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array:
            out.append(UInt8(ascii: "["))
            for (i, element) in elements.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                element.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        }
    }

    static func writeString(_ string: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20:
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

private struct JSONNodeEncoder: Encoder {
    let node: JSONNode
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        node.makeObject()
        return KeyedEncodingContainer(JSONKeyedContainer<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        node.makeArray()
        return JSONUnkeyedContainer(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        JSONSingleValueContainer(node: node, codingPath: codingPath)
    }
}

private struct IndexKey: CodingKey {
    var stringValue: String { "Index \(intValue!)" }
    var intValue: Int?
    init(_ index: Int) { intValue = index }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { self.intValue = intValue }
}

private struct SuperKey: CodingKey {
    var stringValue: String { "super" }
    var intValue: Int? { nil }
    init() {}
    init?(stringValue: String) {}
    init?(intValue: Int) { nil }
}

/// Encodes a value into a fresh node.
private func encodeNode(_ value: some Encodable, codingPath: [any CodingKey]) throws -> JSONNode {
    let child = JSONNode()
    try value.encode(to: JSONNodeEncoder(node: child, codingPath: codingPath))
    return child
}

private func scalar(_ text: String) -> JSONNode {
    let node = JSONNode()
    node.kind = .scalar(Array(text.utf8))
    return node
}

private func floatText<F: BinaryFloatingPoint & LosslessStringConvertible>(_ value: F, codingPath: [any CodingKey]) throws -> String {
    guard value.isFinite else {
        throw EncodingError.invalidValue(value, .init(codingPath: codingPath, debugDescription: "non-finite number"))
    }
    if value == value.rounded(), abs(value) < 9_007_199_254_740_992 { return String(Int64(value)) }
    return value.description
}

private struct JSONKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: JSONNode
    let codingPath: [any CodingKey]

    private func set(_ child: JSONNode, _ key: Key) { node.members[key.stringValue] = child }

    mutating func encodeNil(forKey key: Key) throws { set(scalar("null"), key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { set(scalar(value ? "true" : "false"), key) }
    mutating func encode(_ value: String, forKey key: Key) throws {
        var bytes: [UInt8] = []
        JSONNode.writeString(value, to: &bytes)
        let child = JSONNode()
        child.kind = .scalar(bytes)
        set(child, key)
    }
    mutating func encode(_ value: Double, forKey key: Key) throws { set(scalar(try floatText(value, codingPath: codingPath + [key])), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { set(scalar(try floatText(value, codingPath: codingPath + [key])), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { set(scalar(String(value)), key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        set(try encodeNode(value, codingPath: codingPath + [key]), key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let child = JSONNode()
        child.makeObject()
        set(child, key)
        return KeyedEncodingContainer(JSONKeyedContainer<NestedKey>(node: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = JSONNode()
        child.makeArray()
        set(child, key)
        return JSONUnkeyedContainer(node: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let child = JSONNode()
        node.members["super"] = child
        return JSONNodeEncoder(node: child, codingPath: codingPath + [SuperKey()])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let child = JSONNode()
        set(child, key)
        return JSONNodeEncoder(node: child, codingPath: codingPath + [key])
    }
}

private struct JSONUnkeyedContainer: UnkeyedEncodingContainer {
    let node: JSONNode
    let codingPath: [any CodingKey]
    var count: Int { node.elements.count }

    private func add(_ child: JSONNode) { node.elements.append(child) }
    private var nextPath: [any CodingKey] { codingPath + [IndexKey(count)] }

    mutating func encodeNil() throws { add(scalar("null")) }
    mutating func encode(_ value: Bool) throws { add(scalar(value ? "true" : "false")) }
    mutating func encode(_ value: String) throws {
        var bytes: [UInt8] = []
        JSONNode.writeString(value, to: &bytes)
        let child = JSONNode()
        child.kind = .scalar(bytes)
        add(child)
    }
    mutating func encode(_ value: Double) throws { add(scalar(try floatText(value, codingPath: nextPath))) }
    mutating func encode(_ value: Float) throws { add(scalar(try floatText(value, codingPath: nextPath))) }
    mutating func encode(_ value: Int) throws { add(scalar(String(value))) }
    mutating func encode(_ value: Int8) throws { add(scalar(String(value))) }
    mutating func encode(_ value: Int16) throws { add(scalar(String(value))) }
    mutating func encode(_ value: Int32) throws { add(scalar(String(value))) }
    mutating func encode(_ value: Int64) throws { add(scalar(String(value))) }
    mutating func encode(_ value: UInt) throws { add(scalar(String(value))) }
    mutating func encode(_ value: UInt8) throws { add(scalar(String(value))) }
    mutating func encode(_ value: UInt16) throws { add(scalar(String(value))) }
    mutating func encode(_ value: UInt32) throws { add(scalar(String(value))) }
    mutating func encode(_ value: UInt64) throws { add(scalar(String(value))) }
    mutating func encode<T: Encodable>(_ value: T) throws { add(try encodeNode(value, codingPath: nextPath)) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let child = JSONNode()
        child.makeObject()
        let path = nextPath
        add(child)
        return KeyedEncodingContainer(JSONKeyedContainer<NestedKey>(node: child, codingPath: path))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = JSONNode()
        child.makeArray()
        let path = nextPath
        add(child)
        return JSONUnkeyedContainer(node: child, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let child = JSONNode()
        let path = nextPath
        add(child)
        return JSONNodeEncoder(node: child, codingPath: path)
    }
}

private struct JSONSingleValueContainer: SingleValueEncodingContainer {
    let node: JSONNode
    let codingPath: [any CodingKey]

    private func set(_ text: String) { node.kind = .scalar(Array(text.utf8)) }

    mutating func encodeNil() throws { set("null") }
    mutating func encode(_ value: Bool) throws { set(value ? "true" : "false") }
    mutating func encode(_ value: String) throws {
        var bytes: [UInt8] = []
        JSONNode.writeString(value, to: &bytes)
        node.kind = .scalar(bytes)
    }
    mutating func encode(_ value: Double) throws { set(try floatText(value, codingPath: codingPath)) }
    mutating func encode(_ value: Float) throws { set(try floatText(value, codingPath: codingPath)) }
    mutating func encode(_ value: Int) throws { set(String(value)) }
    mutating func encode(_ value: Int8) throws { set(String(value)) }
    mutating func encode(_ value: Int16) throws { set(String(value)) }
    mutating func encode(_ value: Int32) throws { set(String(value)) }
    mutating func encode(_ value: Int64) throws { set(String(value)) }
    mutating func encode(_ value: UInt) throws { set(String(value)) }
    mutating func encode(_ value: UInt8) throws { set(String(value)) }
    mutating func encode(_ value: UInt16) throws { set(String(value)) }
    mutating func encode(_ value: UInt32) throws { set(String(value)) }
    mutating func encode(_ value: UInt64) throws { set(String(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try value.encode(to: JSONNodeEncoder(node: node, codingPath: codingPath))
    }
}
