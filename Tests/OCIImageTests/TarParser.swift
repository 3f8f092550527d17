/// A small, strict ustar/PAX reader used to check what TarWriter produced.
struct ParsedTarEntry {
    var name: String
    var type: UInt8
    var mode: UInt32
    var uid: UInt64
    var gid: UInt64
    var mtime: UInt64
    var size: UInt64
    var linkName: String
    var uname: String
    var gname: String
    var devMajor: UInt64
    var devMinor: UInt64
    var content: [UInt8]
    var paxRecords: [String: String]
    /// Raw header fields, for checks on the encoding itself.
    var rawName: String
    var rawPrefix: String
}

struct TarParseError: Error, CustomStringConvertible {
    var description: String
}

func parseTar(_ bytes: [UInt8]) throws -> [ParsedTarEntry] {
    func field(_ block: ArraySlice<UInt8>, _ offset: Int, _ width: Int) -> [UInt8] {
        let start = block.startIndex + offset
        let slice = block[start..<(start + width)]
        if let nul = slice.firstIndex(of: 0) { return Array(slice[..<nul]) }
        return Array(slice)
    }
    func string(_ block: ArraySlice<UInt8>, _ offset: Int, _ width: Int) -> String {
        String(decoding: field(block, offset, width), as: UTF8.self)
    }
    func octal(_ block: ArraySlice<UInt8>, _ offset: Int, _ width: Int) throws -> UInt64 {
        var value: UInt64 = 0
        for byte in field(block, offset, width) {
            if byte == UInt8(ascii: " ") { continue }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "7") else {
                throw TarParseError(description: "bad octal digit \(byte) at offset \(offset)")
            }
            value = value * 8 + UInt64(byte - UInt8(ascii: "0"))
        }
        return value
    }
    guard bytes.count % 512 == 0 else { throw TarParseError(description: "length \(bytes.count) is not a multiple of 512") }
    var entries: [ParsedTarEntry] = []
    var offset = 0
    var pending: [String: String] = [:]
    while offset + 512 <= bytes.count {
        let block = bytes[offset..<(offset + 512)]
        if block.allSatisfy({ $0 == 0 }) {
            // End of archive: this block and the next must be zero, and nothing may follow.
            guard offset + 1024 == bytes.count, bytes[(offset + 512)...].allSatisfy({ $0 == 0 }) else {
                throw TarParseError(description: "archive does not end with exactly two zero blocks")
            }
            return entries
        }
        var sum: UInt64 = 0
        for (i, b) in block.enumerated() { sum += (i >= 148 && i < 156) ? 32 : UInt64(b) }
        let stored = try octal(block, 148, 8)
        guard stored == sum else { throw TarParseError(description: "bad checksum at \(offset)") }
        guard field(block, 257, 6) == Array("ustar".utf8), block[block.startIndex + 262] == 0,
              field(block, 263, 2) == Array("00".utf8) else {
            throw TarParseError(description: "not a ustar header at \(offset)")
        }
        let type = block[block.startIndex + 156]
        var size = try octal(block, 124, 12)
        let rawName = string(block, 0, 100)
        let rawPrefix = string(block, 345, 155)
        let dataStart = offset + 512
        if let paxSize = pending["size"].flatMap(UInt64.init) { size = paxSize }
        let content = Array(bytes[dataStart..<(dataStart + Int(size))])
        offset = dataStart + (Int(size) + 511) / 512 * 512
        if type == UInt8(ascii: "x") {
            var rest = content[...]
            while !rest.isEmpty {
                guard let space = rest.firstIndex(of: UInt8(ascii: " ")),
                      let length = Int(String(decoding: rest[..<space], as: UTF8.self)), length <= rest.count
                else { throw TarParseError(description: "bad PAX record") }
                let record = rest[rest.startIndex..<(rest.startIndex + length)]
                guard record.last == UInt8(ascii: "\n"), let eq = record.firstIndex(of: UInt8(ascii: "=")) else {
                    throw TarParseError(description: "bad PAX record")
                }
                let key = String(decoding: record[(space + 1)..<eq], as: UTF8.self)
                let value = String(decoding: record[(eq + 1)..<(record.endIndex - 1)], as: UTF8.self)
                pending[key] = value
                rest = rest[(rest.startIndex + length)...]
            }
            continue
        }
        var name = rawPrefix.isEmpty ? rawName : rawPrefix + "/" + rawName
        var linkName = string(block, 157, 100)
        if let path = pending["path"] { name = path }
        if let link = pending["linkpath"] { linkName = link }
        entries.append(ParsedTarEntry(
            name: name, type: type, mode: UInt32(try octal(block, 100, 8)), uid: try octal(block, 108, 8),
            gid: try octal(block, 116, 8), mtime: try octal(block, 136, 12), size: size, linkName: linkName,
            uname: string(block, 265, 32), gname: string(block, 297, 32), devMajor: try octal(block, 329, 8),
            devMinor: try octal(block, 337, 8), content: content, paxRecords: pending, rawName: rawName, rawPrefix: rawPrefix))
        pending = [:]
    }
    throw TarParseError(description: "missing end-of-archive blocks")
}
