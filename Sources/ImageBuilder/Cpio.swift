import Foundation

/// A reproducible "newc" cpio archive, as the kernel unpacks initramfs images: entries in the
/// order given, inode numbers counted from 1, owner root, one fixed mtime.
public struct CpioArchive: Sendable {
    public enum Kind: Sendable, Equatable {
        case directory
        case file(Data)
        case symlink(String)
        case characterDevice(major: Int, minor: Int)
    }

    public struct Entry: Sendable, Equatable {
        public var path: String
        public var mode: Int
        public var kind: Kind
        public init(path: String, mode: Int, kind: Kind) {
            self.path = path
            self.mode = mode
            self.kind = kind
        }
    }

    public var entries: [Entry] = []
    public var mtime: Int

    public init(mtime: Int) { self.mtime = mtime }

    public mutating func add(_ e: Entry) { entries.append(e) }

    /// The archive bytes (uncompressed), entries sorted by path so the result does not depend on
    /// the order they were added in.
    public func encoded() -> Data {
        var out = Data()
        var ino = 0
        func pad4() { while out.count % 4 != 0 { out.append(0) } }
        func header(_ name: String, mode: Int, size: Int, nlink: Int, rmaj: Int = 0, rmin: Int = 0) {
            ino += 1
            let nameBytes = Array(name.utf8) + [0]
            let fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, rmaj, rmin, nameBytes.count, 0]
            out.append(contentsOf: Array("070701".utf8))
            for f in fields { out.append(contentsOf: Array(String(format: "%08X", f).utf8)) }
            out.append(contentsOf: nameBytes)
            pad4()
        }
        for e in entries.sorted(by: { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }) {
            switch e.kind {
            case .directory:
                header(e.path, mode: 0o040000 | e.mode, size: 0, nlink: 2)
            case .file(let data):
                header(e.path, mode: 0o100000 | e.mode, size: data.count, nlink: 1)
                out.append(data)
                pad4()
            case .symlink(let target):
                let t = Data(target.utf8)
                header(e.path, mode: 0o120000 | 0o777, size: t.count, nlink: 1)
                out.append(t)
                pad4()
            case .characterDevice(let major, let minor):
                header(e.path, mode: 0o020000 | e.mode, size: 0, nlink: 1, rmaj: major, rmin: minor)
            }
        }
        header("TRAILER!!!", mode: 0, size: 0, nlink: 1)
        ino = 0
        return out
    }
}
