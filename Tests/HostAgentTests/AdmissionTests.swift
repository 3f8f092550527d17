import Foundation
import HostAgent
import MicroVMCore
import Testing

private func vm(vcpu: Int, memoryMB: Int, state: MicroVMState = .created) -> MicroVM {
    let spec = MicroVMSpec(
        name: "vm-\(UUID().uuidString.prefix(8).lowercased())", namespace: "default", vcpu: vcpu, memoryInMB: memoryMB,
        kernel: KernelSpec(image: "registry.example/kernel:1", filename: "boot/vmlinuz"),
        rootVolume: VolumeSpec(id: "root", containerSource: "registry.example/root:1"), provider: "qemu")
    return MicroVM(uid: ULID.make(), spec: spec, status: MicroVMStatus(state: state), createdAt: Date(), updatedAt: Date())
}

@Suite("Admission: what a host hands out")
struct AdmissionTests {
    let limits = AdmissionLimits(vcpuOvercommit: 2, memoryReserveMB: 1000, vmmOverheadMB: 100)

    @Test("free figures: vCPUs overcommitted, memory less the reserve and every VMM's overhead, the new one's included")
    func freeFigures() {
        let empty = HostCapacityReport.tally(vms: [], vcpus: 4, memoryMB: 8000, memoryAvailableMB: 7000, limits: limits)
        #expect(empty.freeVCPUs == 8)
        #expect(empty.freeMemoryMB == 8000 - 1000 - 100)
        let two = HostCapacityReport.tally(vms: [vm(vcpu: 3, memoryMB: 2000), vm(vcpu: 2, memoryMB: 1000, state: .pending)],
                                           vcpus: 4, memoryMB: 8000, memoryAvailableMB: 7000, limits: limits)
        #expect(two.allocatedVCPUs == 5 && two.allocatedMemoryMB == 3000 && two.microVMs == 2)
        #expect(two.freeVCPUs == 3)
        #expect(two.freeMemoryMB == 8000 - 1000 - 3000 - 3 * 100)
    }

    @Test("a VM being deleted no longer counts; a full host reports zero, never negative")
    func deletingAndFull() {
        let r = HostCapacityReport.tally(vms: [vm(vcpu: 8, memoryMB: 6000, state: .deleting)], vcpus: 4, memoryMB: 8000, memoryAvailableMB: 7000, limits: limits)
        #expect(r.microVMs == 0 && r.allocatedVCPUs == 0 && r.freeMemoryMB == 6900)
        let full = HostCapacityReport.tally(vms: [vm(vcpu: 9, memoryMB: 7500)], vcpus: 4, memoryMB: 8000, memoryAvailableMB: 100, limits: limits)
        #expect(full.freeVCPUs == 0 && full.freeMemoryMB == 0)
    }

    @Test("admit: fits exactly; one MiB or one vCPU more is RESOURCE_EXHAUSTED naming what is short")
    func admit() throws {
        let r = HostCapacityReport.tally(vms: [vm(vcpu: 6, memoryMB: 2000)], vcpus: 4, memoryMB: 8000, memoryAvailableMB: 7000, limits: limits)
        try r.admit(vcpu: 2, memoryMB: r.freeMemoryMB)
        do {
            try r.admit(vcpu: 1, memoryMB: r.freeMemoryMB + 1)
            Issue.record("admitted more memory than is free")
        } catch {
            #expect(error.code == .resourceExhausted)
            #expect(error.message.hasPrefix("memory: \(r.freeMemoryMB + 1) MiB requested, \(r.freeMemoryMB) MiB free"), "\(error.message)")
        }
        do {
            try r.admit(vcpu: 3, memoryMB: 64)
            Issue.record("admitted more vCPUs than are free")
        } catch {
            #expect(error.code == .resourceExhausted)
            #expect(error.message.hasPrefix("vcpu: 3 requested, 2 free"), "\(error.message)")
        }
    }

    @Test("flintlockd settings: vcpu-overcommit, memory-reserve-mb, vmm-overhead-mb, with defaults and range checks")
    func settings() throws {
        let d = try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: [:])
        #expect(d.admission == AdmissionLimits())
        let c = try AgentConfiguration.resolve(
            configFileText: "memory-reserve-mb: 2048\n", environment: ["FLINTLOCKD_VMM_OVERHEAD_MB": "32"], flags: ["vcpu-overcommit": "1"])
        #expect(c.admission == AdmissionLimits(vcpuOvercommit: 1, memoryReserveMB: 2048, vmmOverheadMB: 32))
        #expect(throws: AgentError.self) { try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["vcpu-overcommit": "0"]) }
        #expect(throws: AgentError.self) { try AgentConfiguration.resolve(configFileText: nil, environment: [:], flags: ["memory-reserve-mb": "-1"]) }
    }
}
