import Foundation
import HostSystem

/// Extracts the uncompressed ELF kernel (`vmlinux`, what Firecracker and Cloud Hypervisor load)
/// from a bzImage (`vmlinuz`, what QEMU loads), using the boot protocol's payload fields.
public enum VmlinuxExtractor {
    public static func extract(bzImage: String, to target: String) async throws {
        guard let data = FileManager.default.contents(atPath: bzImage), data.count > 0x250 else {
            throw ImageBuildError("\(bzImage) is not a bzImage (too small)")
        }
        guard data[0x202..<0x206] == Data("HdrS".utf8) else { throw ImageBuildError("\(bzImage) is not a bzImage (no HdrS header)") }
        func u32(_ o: Int) -> Int { Int(data[o]) | Int(data[o + 1]) << 8 | Int(data[o + 2]) << 16 | Int(data[o + 3]) << 24 }
        let version = Int(data[0x206]) | Int(data[0x207]) << 8
        guard version >= 0x208 else { throw ImageBuildError("\(bzImage): boot protocol \(String(version, radix: 16)) has no payload fields") }
        let setupSectors = data[0x1f1] == 0 ? 4 : Int(data[0x1f1])
        let offset = (setupSectors + 1) * 512 + u32(0x248)
        let length = u32(0x24c)
        guard offset + length <= data.count, length > 8 else { throw ImageBuildError("\(bzImage): payload out of bounds") }
        var payload = data[offset..<(offset + length)]
        let magic = Array(payload.prefix(6))
        let tool: [String]
        switch magic {
        case _ where magic.starts(with: [0x1f, 0x8b]): tool = ["gzip", "-dc"]
        case _ where magic.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]): tool = ["xz", "-dc"]
        case _ where magic.starts(with: [0x28, 0xb5, 0x2f, 0xfd]): tool = ["zstd", "-qdc"]
        case _ where magic.starts(with: [0x02, 0x21, 0x4c, 0x18]): tool = ["lz4", "-dc"]
        case _ where magic.starts(with: [0x42, 0x5a, 0x68]): tool = ["bzip2", "-dc"]
        case _ where magic.starts(with: [0x5d, 0x00]): tool = ["xz", "--format=lzma", "-dc"]
        default: throw ImageBuildError("\(bzImage): unknown payload compression (magic \(magic.map { String(format: "%02x", $0) }.joined()))")
        }
        // Every format but gzip carries the uncompressed size as a 4-byte trailer.
        if tool[0] != "gzip" { payload = payload.dropLast(4) }
        let compressed = target + ".payload"
        try Data(payload).write(to: URL(fileURLWithPath: compressed))
        defer { try? FileManager.default.removeItem(atPath: compressed) }
        let cmd = (tool + ["--", compressed]).map { "'\($0)'" }.joined(separator: " ") + " > '\(target)'"
        let (status, out) = try await HostProcess.runCapturing(["sh", "-c", cmd])
        guard status == .exited(0) else { throw ImageBuildError("\(tool[0]) could not unpack the kernel payload of \(bzImage): \(out)") }
        guard let head = FileHandle(forReadingAtPath: target).flatMap({ try? $0.read(upToCount: 4) }), head == Data([0x7f, 0x45, 0x4c, 0x46]) else {
            throw ImageBuildError("the unpacked payload of \(bzImage) is not an ELF file")
        }
    }
}
