import Foundation
import Testing
@testable import OCIImage

@Suite("GzipWriter")
struct GzipWriterTests {
    private func gzip(_ data: [UInt8], level: Int = 6, chunkSizes: [Int] = [Int.max]) throws -> (bytes: [UInt8], summary: GzipSummary) {
        let sink = MemorySink()
        let writer = try GzipWriter(sink: sink, level: level)
        var offset = 0
        var i = 0
        while offset < data.count {
            let size = min(chunkSizes[i % chunkSizes.count], data.count - offset)
            try writer.write(Array(data[offset..<(offset + size)]))
            offset += size
            i += 1
        }
        let summary = try writer.finish()
        return (sink.bytes, summary)
    }

    @Test("fixed header: no name, mtime 0, OS Unix", arguments: [(6, UInt8(0)), (9, UInt8(2)), (1, UInt8(4)), (0, UInt8(4))])
    func header(level: Int, expectedXFL: UInt8) throws {
        let (bytes, _) = try gzip(Array("hello".utf8), level: level)
        #expect(Array(bytes.prefix(10)) == [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, expectedXFL, 3])
    }

    @Test("digests and sizes of both sides; gzip -t and gunzip accept the output", arguments: [0, 6, 9])
    func roundTrip(level: Int) throws {
        let data = pseudoRandomBytes(count: 300_000, seed: 7) + [UInt8](repeating: 65, count: 500_000)
        let (bytes, summary) = try gzip(data, level: level)
        #expect(summary.compressedSize == Int64(bytes.count))
        #expect(summary.compressedDigest == OCIDigest.sha256(bytes))
        #expect(summary.uncompressedSize == Int64(data.count))
        #expect(summary.uncompressedDigest == OCIDigest.sha256(data))
        let dir = try TemporaryDirectory()
        let file = dir.sub("out.gz")
        try Data(bytes).write(to: file)
        let test = try run("gzip", ["-t", file.path])
        #expect(test.status == 0, "\(test.stderr)")
        let unzipped = try run("gunzip", ["-c", file.path])
        #expect(unzipped.status == 0)
        #expect(Array(unzipped.stdout) == data)
    }

    @Test("output does not depend on how the input is chunked")
    func chunkingIrrelevant() throws {
        let data = pseudoRandomBytes(count: 200_000, seed: 3) + Array(String(repeating: "tar header padding ", count: 20_000).utf8)
        let reference = try gzip(data)
        for chunks in [[1], [512], [7, 512, 100_000, 3], [65_536], [1_000_000]] {
            let other = try gzip(data, chunkSizes: chunks)
            #expect(other.bytes == reference.bytes, "chunks \(chunks)")
            #expect(other.summary == reference.summary)
        }
    }

    @Test("empty input is a valid gzip stream")
    func empty() throws {
        let (bytes, summary) = try gzip([])
        #expect(summary.uncompressedSize == 0)
        #expect(summary.uncompressedDigest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let dir = try TemporaryDirectory()
        try Data(bytes).write(to: dir.sub("e.gz"))
        #expect(try run("gzip", ["-t", dir.sub("e.gz").path]).status == 0)
    }

    @Test("invalid level and use after finish are errors")
    func misuse() throws {
        #expect(throws: OCIImageError.self) { try GzipWriter(sink: MemorySink(), level: 10) }
        let writer = try GzipWriter(sink: MemorySink())
        try writer.finish()
        #expect(throws: OCIImageError.alreadyFinished) { try writer.write([1, 2, 3]) }
        #expect(throws: OCIImageError.alreadyFinished) { try writer.finish() }
    }
}
