import Foundation
import HostSystem

/// A Debian kernel package, downloaded and unpacked.
public struct KernelPackage: Sendable {
    /// Where the package is unpacked (holds boot/ and lib/modules/).
    public var root: String
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    public var release: String
    public var debPath: String

    public var vmlinuz: String { "\(root)/boot/vmlinuz-\(release)" }
    public var config: String { "\(root)/boot/config-\(release)" }
    public var modulesDirectory: String { "\(root)/lib/modules/\(release)" }

    /// The package apt would install for `linux-image-cloud-amd64` (the newest Debian 12 cloud kernel).
    public static func newestCloudKernel() async throws -> String {
        let out = try await HostProcess.run(["apt-cache", "depends", "linux-image-cloud-amd64"])
        guard let name = out.split(separator: "\n").compactMap({ line -> String? in
            let t = line.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("Depends: linux-image-") else { return nil }
            return String(t.dropFirst("Depends: ".count))
        }).first else {
            throw ImageBuildError("apt knows no linux-image-cloud-amd64 package: run apt-get update, or pass --deb FILE")
        }
        return name
    }

    /// Downloads `package` with apt (cached in `cacheDirectory`) and unpacks it under `workDirectory`.
    public static func fetch(package: String, cacheDirectory: String, workDirectory: String) async throws -> KernelPackage {
        try HostFiles.createDirectory(cacheDirectory)
        let existing = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory).filter { $0.hasPrefix(package + "_") && $0.hasSuffix(".deb") }
        let deb: String
        if let found = existing.sorted().last {
            deb = "\(cacheDirectory)/\(found)"
        } else {
            let (status, output) = try await HostProcess.runCapturing(["sh", "-c", "cd \"$0\" && apt-get download \"$1\"", cacheDirectory, package])
            guard status == .exited(0) else {
                throw ImageBuildError("cannot download \(package) with apt-get: \(output.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            guard let got = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory).first(where: { $0.hasPrefix(package + "_") && $0.hasSuffix(".deb") }) else {
                throw ImageBuildError("apt-get download \(package) left no .deb in \(cacheDirectory)")
            }
            deb = "\(cacheDirectory)/\(got)"
        }
        return try await unpack(deb: deb, workDirectory: workDirectory)
    }

    /// Unpacks a local kernel .deb.
    public static func unpack(deb: String, workDirectory: String) async throws -> KernelPackage {
        guard HostFiles.exists(deb) else { throw ImageBuildError("kernel package \(deb) does not exist") }
        let root = "\(workDirectory)/kernel-package"
        try HostFiles.remove(root)
        try HostFiles.createDirectory(root)
        try await HostProcess.run(["dpkg-deb", "-x", deb, root])
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/boot")) ?? []
        guard let image = boot.sorted().first(where: { $0.hasPrefix("vmlinuz-") }) else {
            throw ImageBuildError("\(deb) holds no boot/vmlinuz-*: is it a linux-image package?")
        }
        let release = String(image.dropFirst("vmlinuz-".count))
        return KernelPackage(root: root, release: release, debPath: deb)
    }

    /// Whether the kernel was built with `option` as a module (`=m`).
    public func isModule(_ option: String) -> Bool {
        let text = (try? String(contentsOfFile: config, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").contains("\(option)=m")
    }
}

/// A failure building an image, worded for the user.
public struct ImageBuildError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
