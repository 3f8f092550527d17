import Foundation
import HostSystem
import ImageBuilder
import Testing
import TestSupport

@Suite("cpio archives")
struct CpioTests {
    @Test("the same entries in any order give the same bytes, and cpio(1) reads them back")
    func reproducibleAndReadable() async throws {
        var a = CpioArchive(mtime: 1_700_000_000)
        var b = CpioArchive(mtime: 1_700_000_000)
        let entries: [CpioArchive.Entry] = [
            .init(path: "bin", mode: 0o755, kind: .directory),
            .init(path: "bin/hello", mode: 0o755, kind: .file(Data("#!/bin/sh\necho hi\n".utf8))),
            .init(path: "sbin", mode: 0o777, kind: .symlink("bin")),
            .init(path: "init", mode: 0o755, kind: .file(Data("x".utf8))),
        ]
        for e in entries { a.add(e) }
        for e in entries.reversed() { b.add(e) }
        #expect(a.encoded() == b.encoded())
        let path = NSTemporaryDirectory() + "/lm-cpio-\(UUID().uuidString).cpio"
        try a.encoded().write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let listing = try await HostProcess.run(["sh", "-c", "cpio -itv < '\(path)'"])
        #expect(listing.contains("bin/hello"))
        #expect(listing.contains("sbin -> bin"))
        #expect(listing.contains("init"))
    }
}

/// The real Debian cloud kernel package (downloaded with apt).
@Suite("kernel pieces", .serialized, .enabled(if: TestEnvironment.systemTestsEnabled, "needs apt, dpkg-deb, lz4 and busybox-static (always runs in CI)"))
struct KernelPiecesTests {
    @Test("vmlinux comes out of the cloud kernel's bzImage; the initrd holds the virtio modules and is reproducible")
    func kernelPieces() async throws {
        let work = "/tmp/lm-kernel-pieces"
        let package = try await KernelPackage.newestCloudKernel()
        #expect(package.hasPrefix("linux-image-") && package.hasSuffix("-cloud-amd64"))
        let kernel = try await KernelPackage.fetch(package: package, cacheDirectory: "/tmp/lm-kernel-cache", workDirectory: work)
        #expect(HostFiles.exists(kernel.vmlinuz))

        let vmlinux = "\(work)/vmlinux"
        try await VmlinuxExtractor.extract(bzImage: kernel.vmlinuz, to: vmlinux)
        let info = try await HostProcess.run(["sh", "-c", "head -c 20 '\(vmlinux)' | od -An -tx1"])
        #expect(info.contains("7f 45 4c 46 02"), "a 64-bit ELF")
        #expect((HostFiles.size(vmlinux) ?? 0) > (HostFiles.size(kernel.vmlinuz) ?? 0))

        let initrd = try InitrdBuilder(kernel: kernel, mtime: 1_700_000_000).archive()
        let again = try InitrdBuilder(kernel: kernel, mtime: 1_700_000_000).archive()
        #expect(initrd.encoded() == again.encoded())
        let paths = Set(initrd.entries.map(\.path))
        #expect(paths.contains("init") && paths.contains("bin/busybox"))
        for m in ["virtio_blk", "virtio_net", "virtio_mmio"] {
            #expect(paths.contains("lib/modules/\(kernel.release)/\(m).ko"), "\(m) in the initrd")
        }
        await #expect(throws: ImageBuildError.self) { _ = try await KernelPackage.unpack(deb: "/tmp/no-such.deb", workDirectory: work) }
    }
}
