import MicroVMCore
import Testing

/// A spec that passes validation under the default policy, for tests to break one field at a time.
func validSpec() -> MicroVMSpec {
    MicroVMSpec(
        name: "vm1",
        kernel: KernelSpec(image: "ghcr.io/liquidmetal-dev/kernel:6.1"),
        rootVolume: VolumeSpec(id: "root", containerSource: "ghcr.io/liquidmetal-dev/ubuntu:22.04")
    )
}

/// A TAP interface with the given device id and, optionally, MAC and bridge.
func tap(_ deviceID: String, mac: String? = nil, bridge: String? = "br0", address: String? = nil, gateway: String? = nil) -> NetworkInterfaceSpec {
    NetworkInterfaceSpec(deviceID: deviceID, type: .tap, guestMAC: mac, address: address.map { StaticAddress(address: $0, gateway: gateway) }, bridgeName: bridge)
}

/// Expects `body` to throw an `AgentError` with `code` whose message starts with `"<field>: "`.
/// Returns the error for further checks.
@discardableResult
func expectAgentError(
    _ code: AgentError.Code, field: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> AgentError? {
    let error = #expect(throws: AgentError.self, sourceLocation: sourceLocation) { try body() }
    guard let error else { return nil }
    #expect(error.code == code, "code of \(error)", sourceLocation: sourceLocation)
    #expect(error.message.hasPrefix("\(field): "), "message \"\(error.message)\" should name \(field)", sourceLocation: sourceLocation)
    return error
}
