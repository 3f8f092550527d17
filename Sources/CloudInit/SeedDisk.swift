import Foundation
import HostSystem
import MicroVMCore

/// A cloud-init NoCloud seed disk: a FAT filesystem labelled `CIDATA` holding `meta-data`,
/// `user-data`, `vendor-data` and (when there is one) `network-config` in its root. Made with
/// dosfstools (`mkfs.vfat`) and mtools (`mcopy`), no mount needed. cloud-init finds it by label.
public enum SeedDisk {
    public static let label = "CIDATA"

    /// Writes the seed image to `path` (atomically: a temporary file renamed into place), with the
    /// FAT volume id `volumeID` (stable per VM).
    public static func write(_ documents: CloudInitDocuments, to path: String, volumeID: UInt32) async throws {
        let tmp = "\(path).tmp-\(getpid())"
        let staging = "\(path).files-\(getpid())"
        defer {
            try? HostFiles.remove(tmp)
            try? HostFiles.remove(staging)
        }
        try HostFiles.createDirectory(staging)
        var total = 0
        for (name, data) in documents.files {
            try HostFiles.writeAtomically(data, to: "\(staging)/\(name)", mode: 0o600)
            total += data.count
        }
        // FAT overhead is small; 8 MiB (as Flintlock's) unless the documents need more.
        let kib = max(8192, (total / 1024) * 2 + 1024)
        try HostFiles.remove(tmp)
        do {
            try await HostProcess.run(["mkfs.vfat", "-n", label, "-i", String(format: "%08X", volumeID), "-C", tmp, String(kib)],
                                      environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
            // MTOOLS_SKIP_CHECK: the image has no partition table, which mtools would otherwise question.
            let files = documents.files.map { "\(staging)/\($0.name)" }
            try await HostProcess.run(["mcopy", "-i", tmp, "-o"] + files + ["::/"],
                                      environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MTOOLS_SKIP_CHECK": "1"])
        } catch let e as CommandError {
            throw AgentError(.internalError, "cannot build the cloud-init seed disk: \(e)")
        } catch let e as SpawnError {
            throw AgentError(.failedPrecondition, "cannot build the cloud-init seed disk (install dosfstools and mtools): \(e)")
        }
        guard rename(tmp, path) == 0 else { throw AgentError(.internalError, "cannot move the seed disk into \(path): errno \(errno)") }
    }

    /// Reads one file back from a seed image (for checks and tests).
    public static func read(_ name: String, from path: String) async throws -> Data {
        let out = try await HostProcess.run(["mtype", "-i", path, "::/\(name)"], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MTOOLS_SKIP_CHECK": "1"])
        return Data(out.utf8)
    }
}
