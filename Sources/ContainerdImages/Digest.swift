import Crypto
import Foundation

enum Digest {
    static func sha256(_ data: some DataProtocol) -> String {
        "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// containerd's chain ids: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
    static func chainIDs(diffIDs: [String]) -> [String] {
        var out: [String] = []
        for d in diffIDs {
            if let prev = out.last {
                out.append(sha256(Data("\(prev) \(d)".utf8)))
            } else {
                out.append(d)
            }
        }
        return out
    }

    /// The hex part of a digest, safe as a file name.
    static func hex(_ digest: String) -> String {
        digest.split(separator: ":").last.map(String.init) ?? digest
    }
}
