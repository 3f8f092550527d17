/// Builds a kernel command line: defaults first, then the spec's entries, which override
/// defaults with the same key. An empty value is a bare flag. Keys keep a stable order.
public func kernelCommandLine(defaults: [(String, String)], overrides: [String: String]) -> String {
    var order: [String] = []
    var values: [String: String] = [:]
    for (k, v) in defaults {
        if values[k] == nil { order.append(k) }
        values[k] = v
    }
    for k in overrides.keys.sorted() {
        if values[k] == nil { order.append(k) }
        values[k] = overrides[k]
    }
    return order.map { k in
        let v = values[k]!
        return v.isEmpty ? k : "\(k)=\(v)"
    }.joined(separator: " ")
}

/// The MAC address of a VM's interface when the spec gives none: locally administered,
/// unicast, derived from the VM's uid and device so that re-running a plan gives the same one.
public func generatedMAC(uid: String, deviceID: String) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in (uid + "/" + deviceID).utf8 {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    let bytes: [UInt8] = [0x02, UInt8(truncatingIfNeeded: h >> 32), UInt8(truncatingIfNeeded: h >> 24), UInt8(truncatingIfNeeded: h >> 16), UInt8(truncatingIfNeeded: h >> 8), UInt8(truncatingIfNeeded: h)]
    return bytes.map { b in let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }.joined(separator: ":")
}

/// The host device name of a VM's TAP: `lm` + 8 characters of the uid + interface index,
/// at most 15 bytes, so that a leftover device can be traced back to its VM.
public func tapDeviceName(uid: String, index: Int) -> String {
    let tail = String(uid.suffix(8)).lowercased()
    return "lm\(tail)t\(index)"
}

/// The host device name of a VM's macvtap: like its TAP's, with `m` for the kind.
public func macvtapDeviceName(uid: String, index: Int) -> String {
    let tail = String(uid.suffix(8)).lowercased()
    return "lm\(tail)m\(index)"
}

/// The guest's block device for the disk at `index` in the order the agent attaches them:
/// the root volume is vda, additional volumes follow in spec order, the cloud-init seed disk last.
public func guestDiskName(index: Int) -> String {
    let letters = Array("abcdefghijklmnopqrstuvwxyz")
    return index < 26 ? "vd\(letters[index])" : "vd\(letters[index / 26 - 1])\(letters[index % 26])"
}
