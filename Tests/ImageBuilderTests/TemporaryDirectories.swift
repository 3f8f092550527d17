import Foundation
import HostSystem

/// A new directory under the system's temporary directory, named PREFIX-<random>; the caller removes it.
func makeTemporaryDirectory(_ prefix: String) throws -> String {
    let dir = "\(NSTemporaryDirectory())\(prefix)-\(UUID().uuidString.prefix(8))"
    try HostFiles.createDirectory(dir)
    return dir
}
