import MicroVMCore
import Testing

@Suite("kernelCommandLine")
struct KernelCommandLineTests {
    let defaults: [(String, String)] = [("console", "ttyS0"), ("reboot", "k"), ("panic", "1"), ("pci", "off"), ("i8042.noaux", "")]

    @Test("defaults alone keep their order; empty values are bare flags")
    func defaultsOnly() {
        #expect(kernelCommandLine(defaults: defaults, overrides: [:]) == "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux")
    }

    @Test("an override replaces the default's value in place")
    func overrideInPlace() {
        #expect(kernelCommandLine(defaults: defaults, overrides: ["panic": "0", "console": "hvc0"])
            == "console=hvc0 reboot=k panic=0 pci=off i8042.noaux")
    }

    @Test("new keys are appended after the defaults, sorted")
    func newKeysSorted() {
        let line = kernelCommandLine(defaults: defaults, overrides: ["zz": "1", "ds": "nocloud", "aa": "x", "root": "/dev/vda"])
        #expect(line == "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux aa=x ds=nocloud root=/dev/vda zz=1")
    }

    @Test("an empty override value is a bare flag, also when it replaces a default")
    func bareFlags() {
        #expect(kernelCommandLine(defaults: defaults, overrides: ["quiet": "", "pci": ""])
            == "console=ttyS0 reboot=k panic=1 pci i8042.noaux quiet")
        #expect(kernelCommandLine(defaults: [], overrides: ["ro": "", "init": "/sbin/init"]) == "init=/sbin/init ro")
    }

    @Test("overrides with no defaults; nothing at all gives an empty line")
    func noDefaults() {
        #expect(kernelCommandLine(defaults: [], overrides: [:]) == "")
        #expect(kernelCommandLine(defaults: [], overrides: ["b": "2", "a": "1"]) == "a=1 b=2")
    }

    @Test("a key repeated in the defaults keeps its first position and its last value")
    func repeatedDefault() {
        #expect(kernelCommandLine(defaults: [("a", "1"), ("b", "2"), ("a", "3")], overrides: [:]) == "a=3 b=2")
    }

    @Test("the result does not depend on dictionary order")
    func stable() {
        let overrides = Dictionary(uniqueKeysWithValues: (0..<50).map { ("k\($0)", "\($0)") })
        let first = kernelCommandLine(defaults: defaults, overrides: overrides)
        for _ in 0..<10 {
            #expect(kernelCommandLine(defaults: defaults, overrides: Dictionary(uniqueKeysWithValues: overrides.shuffled())) == first)
        }
    }
}

@Suite("generatedMAC")
struct GeneratedMACTests {
    let uid = "01HV3K8Z5Q7W2X9Y4R6T1M0N8P"

    @Test("the same uid and device give the same MAC")
    func deterministic() {
        #expect(generatedMAC(uid: uid, deviceID: "eth0") == generatedMAC(uid: uid, deviceID: "eth0"))
    }

    @Test("a locally administered unicast address that passes MAC validation")
    func shape() throws {
        var rng = SystemRandomNumberGenerator()
        for i in 0..<500 {
            let mac = generatedMAC(uid: ULID.make(date: .now, using: &rng), deviceID: "eth\(i)")
            let parts = mac.split(separator: ":")
            #expect(parts.count == 6)
            #expect(parts.allSatisfy { $0.count == 2 && $0.allSatisfy { "0123456789abcdef".contains($0) } }, "\(mac)")
            #expect(parts.first == "02")
            try Validate.mac(mac, field: "guest_mac")
        }
    }

    @Test("different devices of one VM, and one device of different VMs, get different MACs")
    func differs() {
        let devices = (0..<64).map { generatedMAC(uid: uid, deviceID: "eth\($0)") }
        #expect(Set(devices).count == devices.count)
        #expect(generatedMAC(uid: uid, deviceID: "eth0") != generatedMAC(uid: "01HV3K8Z5Q7W2X9Y4R6T1M0N8Q", deviceID: "eth0"))
    }
}

@Suite("tapDeviceName")
struct TapDeviceNameTests {
    let uid = "01HV3K8Z5Q7W2X9Y4R6T1M0N8P"

    @Test("lm + the lowercased last 8 characters of the uid + t + index")
    func format() {
        #expect(tapDeviceName(uid: uid, index: 0) == "lm6t1m0n8pt0")
        #expect(tapDeviceName(uid: uid, index: 3) == "lm6t1m0n8pt3")
    }

    @Test("fits Linux's 15-byte limit and is a valid interface name", arguments: [0, 1, 9, 10, 99, 999, 9999])
    func fits(index: Int) throws {
        let name = tapDeviceName(uid: uid, index: index)
        #expect(name.utf8.count <= 15, "\(name)")
        #expect(name.contains(String(uid.suffix(8)).lowercased()))
        try Validate.interfaceName(name, field: "tap")
    }

    @Test("different interfaces and different VMs get different names")
    func distinct() {
        let names = (0..<16).map { tapDeviceName(uid: uid, index: $0) }
        #expect(Set(names).count == 16)
        #expect(tapDeviceName(uid: uid, index: 0) != tapDeviceName(uid: "01HV3K8Z5Q7W2X9Y4R6T1M0N8Q", index: 0))
    }
}
