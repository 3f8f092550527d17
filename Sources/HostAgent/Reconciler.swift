import CloudInit
import Foundation
import ReconcileQueue
import HostSystem
import Logging
import MicroVMCore
import Synchronization

/// Settings of the reconciler.
public struct ReconcilerSettings: Sendable {
    public var stateDirectory: String
    /// VMs reconciled at the same time (one VM is never reconciled twice at once).
    public var workers: Int = 4
    /// Failed attempts of a plan before the VM is marked FAILED.
    public var maxRetries: Int = 5
    public var retryBackoff = Backoff(base: .seconds(1), cap: .seconds(60))
    /// Unexpected VMM exits before the VM is marked FAILED.
    public var maxRestarts: Int = 5
    public var restartBackoff = Backoff(base: .seconds(1), cap: .seconds(60))
    /// How long the VMM may take to report the guest running.
    public var startTimeout: Duration = .seconds(60)
    public var resyncPeriod: Duration = .seconds(600)
    /// The bridge the agent owns, for gateways and nameservers of allocated addresses.
    public var agentNetwork: AgentNetwork?
    /// The host interface macvtap devices hang off (`--parent-iface`).
    public var parentInterface: String?

    public init(stateDirectory: String) { self.stateDirectory = stateDirectory }
}

/// Level-triggered reconciliation: makes each VM's host resources match its stored spec and
/// state. Every step measures before it acts, so a plan interrupted at any point (even by a
/// crash of the agent) converges when it runs again.
public final class Reconciler: Sendable {
    let store: StateStore
    let images: any ImageService
    let network: any NetworkService
    let vmm: any VMMProvider
    let settings: ReconcilerSettings
    let logger: Logger
    let queue = WorkQueue()
    /// VMs whose VMM exit is being watched.
    let watched = Mutex<Set<String>>([])
    let stopping = Atomic<Bool>(false)

    public init(store: StateStore, images: any ImageService, network: any NetworkService, vmm: any VMMProvider, settings: ReconcilerSettings, logger: Logger) {
        self.store = store
        self.images = images
        self.network = network
        self.vmm = vmm
        self.settings = settings
        self.logger = logger
    }

    public func directory(of ref: MicroVMRef) -> String {
        "\(settings.stateDirectory)/vm/\(ref.namespace)/\(ref.name)/\(ref.uid)"
    }

    /// Asks for `uid` to be reconciled soon.
    public func enqueue(_ uid: String) {
        Task { await queue.add(uid) }
    }

    func enqueue(_ uid: String, after delay: Duration) {
        Task { await queue.add(uid, after: delay) }
    }

    /// Enqueues every VM that may need work (FAILED VMs stay as they are until deleted).
    public func resyncAll() throws {
        for vm in try store.list(namespace: nil) where vm.status.state != .failed {
            enqueue(vm.uid)
        }
    }

    /// Runs the workers and the periodic resync until cancelled.
    public func run() async {
        do { try resyncAll() } catch { logger.error("initial resync failed: \(error)") }
        let resync = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: settings.resyncPeriod)
                if Task.isCancelled { break }
                logger.debug("periodic resync")
                try? resyncAll()
            }
        }
        await withTaskCancellationHandler {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<max(1, settings.workers) {
                    group.addTask {
                        while let uid = await self.queue.next() {
                            await self.reconcile(uid)
                            await self.queue.done(uid)
                            if await self.queue.isIdle { HostMemory.trim() }
                        }
                    }
                }
            }
        } onCancel: {
            stopping.store(true, ordering: .relaxed)
            Task { await queue.close() }
        }
        resync.cancel()
    }

    /// Whether no work is queued or running (for tests and benchmarks).
    public func isIdle() async -> Bool { await queue.isIdle }

    // MARK: - One VM

    func reconcile(_ uid: String) async {
        let vm: MicroVM
        do {
            guard let v = try store.get(uid: uid) else { return }  // deleted: nothing to do, no spinning
            vm = v
        } catch {
            logger.error("cannot read VM: \(error)", metadata: ["uid": "\(uid)"])
            return
        }
        var log = logger
        log[metadataKey: "uid"] = "\(vm.uid)"
        log[metadataKey: "namespace"] = "\(vm.spec.namespace)"
        log[metadataKey: "name"] = "\(vm.spec.name)"
        let started = ContinuousClock.now
        let plan = vm.status.state == .deleting ? "delete" : "create"
        do {
            switch vm.status.state {
            case .failed:
                return
            case .deleting:
                try await deletePlan(vm, log: log)
            case .pending, .created:
                try await createPlan(vm, log: log)
            }
            AgentMetrics.reconcile(plan: plan, succeeded: true, duration: ContinuousClock.now - started)
        } catch let e as PlanStepError where e.underlying is CancellationError && Task.isCancelled {
            log.info("work interrupted: the agent is stopping; it goes on at the next start")
        } catch let e as PlanStepError where e.underlying is CancellationError && isBeingDeleted(uid) {
            // Deleted while being created: the delete plan takes over. (A CancellationError from
            // anywhere else is a failure like any other, retried with backoff.)
            log.info("create stopped: the VM is being deleted")
            enqueue(uid)
        } catch {
            AgentMetrics.reconcile(plan: plan, succeeded: false, duration: ContinuousClock.now - started)
            handleFailure(of: vm, error: error, log: log)
        }
    }

    /// Whether the VM is gone or marked for deletion.
    func isBeingDeleted(_ uid: String) -> Bool {
        guard let vm = try? store.get(uid: uid) else { return true }
        return vm.status.state == .deleting
    }

    func handleFailure(of vm: MicroVM, error: any Error, log: Logger) {
        let message = Self.describe(error)
        var retryAfter: Duration?
        do {
            try store.mutate(uid: vm.uid) { v in
                v.status.failureReason = message
                if v.status.state == .deleting {
                    v.status.retry += 1
                    retryAfter = settings.retryBackoff.delay(afterAttempt: v.status.retry - 1)
                    return true
                }
                guard v.status.state == .pending || v.status.state == .created else { return false }
                v.status.retry += 1
                if v.status.retry > settings.maxRetries {
                    AgentMetrics.failed(reason: "retries", step: (error as? PlanStepError)?.step ?? "")
                    v.status.state = .failed
                    v.status.failureReason = "\(message) (gave up after \(settings.maxRetries) retries)"
                } else {
                    retryAfter = settings.retryBackoff.delay(afterAttempt: v.status.retry - 1)
                }
                return true
            }
        } catch {
            log.error("cannot record failure: \(error)")
        }
        if let retryAfter {
            log.warning("reconcile failed; retrying in \(retryAfter): \(message)")
            enqueue(vm.uid, after: retryAfter)
        } else {
            log.error("reconcile failed; VM is FAILED: \(message)")
        }
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? PlanStepError { return "\(e.step): \(describe(e.underlying))" }
        if let e = error as? AgentError { return e.message }
        return "\(error)"
    }

    // MARK: - Create

    /// What the create plan's steps hand to each other.
    final class CreateContext: @unchecked Sendable {
        var vmmState: VMMRunState = .notRunning
        var kernelPath = ""
        var initrdPath: String?
        var disks: [VMLaunchSpec.Disk] = []
        var nics: [VMLaunchSpec.NIC] = []
        var interfaces: [String: InterfaceStatus] = [:]
        var volumes: [String: MountStatus] = [:]
        var kernelMount: MountStatus?
        var initrdMount: MountStatus?
        /// Kernel command line entries the plan adds (before the spec's, which win).
        var extraCmdline: [(String, String)] = []
        var running: Bool {
            if case .running = vmmState { return true }
            if case .starting = vmmState { return true }
            return false
        }
    }

    func createPlan(_ vm: MicroVM, log: Logger) async throws {
        let ref = vm.ref
        let dir = directory(of: ref)
        let spec = vm.spec
        let ctx = CreateContext()
        ctx.vmmState = await vmm.state(of: ref, directory: dir)
        if !ctx.running, vm.status.state == .created {
            // The VMM ended while nobody watched (for example while the agent was down):
            // a crash like any other; the restart backoff brings it back.
            try recordExit(uid: ref.uid, reason: exitReason(ctx.vmmState))
            return
        }
        let steps: [PlanStep] = [
            PlanStep("state-directory", needed: { !HostFiles.exists(dir) }) {
                try HostFiles.createDirectory(dir)
            },
            PlanStep("kernel", needed: { !ctx.running }) {
                let f = try await self.images.fetchFile(reference: spec.kernel.image, filename: spec.kernel.filename ?? "", for: ref)
                ctx.kernelPath = f.path
                ctx.kernelMount = MountStatus(type: .hostPath, source: f.path)
            },
            PlanStep("initrd", needed: { !ctx.running && spec.initrd != nil }) {
                let i = spec.initrd!
                let f = try await self.images.fetchFile(reference: i.image, filename: i.filename ?? "", for: ref)
                ctx.initrdPath = f.path
                ctx.initrdMount = MountStatus(type: .hostPath, source: f.path)
            },
            PlanStep("volumes", needed: { !ctx.running }) {
                for v in [spec.rootVolume!] + spec.additionalVolumes {
                    let base = try await self.images.volumeImage(reference: v.containerSource ?? "", for: ref)
                    if v.isReadOnly {
                        ctx.disks.append(.init(id: v.id, path: base.path, format: "raw", readOnly: true))
                        ctx.volumes[v.id] = MountStatus(type: .hostPath, source: base.path)
                    } else {
                        let layer = "\(dir)/volume-\(v.id).\(self.vmm.writableLayerFormat)"
                        let size = try await self.vmm.createWritableLayer(base: base.path, at: layer, sizeInMB: v.sizeInMB)
                        if let mb = v.sizeInMB, mb > 0, Int64(mb) << 20 < size {
                            self.logger.info("volume image is larger than size_in_mb; the disk keeps the image's size",
                                             metadata: ["uid": "\(ref.uid)", "volume": "\(v.id)", "size_in_mb": "\(mb)", "disk_mib": "\(size >> 20)"])
                        }
                        ctx.disks.append(.init(id: v.id, path: layer, format: self.vmm.writableLayerFormat, readOnly: false))
                        ctx.volumes[v.id] = MountStatus(type: .hostPath, source: layer)
                    }
                }
            },
            PlanStep("network", needed: { true }) {
                for (i, iface) in spec.interfaces.enumerated() {
                    let name = hostDeviceName(uid: ref.uid, index: i, type: iface.type)
                    let mac = iface.guestMAC ?? generatedMAC(uid: ref.uid, deviceID: iface.deviceID)
                    if ctx.running, try await self.network.interfaceExists(name: name), let known = vm.status.networkInterfaces[iface.deviceID] {
                        ctx.interfaces[iface.deviceID] = known
                        continue
                    }
                    let st: InterfaceStatus
                    if iface.type == .macvtap {
                        guard let parent = self.settings.parentInterface else {
                            throw AgentError(.failedPrecondition, "interface \(iface.deviceID) is MACVTAP but the agent has no --parent-iface")
                        }
                        st = try await self.network.ensureMacvtap(name: name, parent: parent, guestMAC: mac, for: ref)
                    } else {
                        st = try await self.network.ensureTap(name: name, bridge: iface.bridgeName ?? "", guestMAC: mac, for: ref)
                    }
                    ctx.interfaces[iface.deviceID] = st
                    ctx.nics.append(.init(deviceID: iface.deviceID, tapName: name, mac: mac, isMacvtap: iface.type == .macvtap))
                }
            },
            PlanStep("cloud-init-seed", needed: { !ctx.running && self.needsSeed(vm) }) {
                let docs = try self.cloudInitDocuments(vm)
                let path = "\(dir)/cidata.img"
                try await SeedDisk.write(docs, to: path, volumeID: seedVolumeID(uid: ref.uid))
                ctx.disks.append(.init(id: "cidata", path: path, format: "raw", readOnly: true))
                ctx.extraCmdline = [("ds", "nocloud")]
            },
            PlanStep("record-resources", needed: { !ctx.running }) {
                try self.store.mutate(uid: ref.uid) { v in
                    guard v.status.state != .deleting else { return false }
                    v.status.kernelMount = ctx.kernelMount
                    v.status.initrdMount = ctx.initrdMount
                    v.status.volumes = ctx.volumes
                    v.status.networkInterfaces = ctx.interfaces
                    return true
                }
            },
            PlanStep("start-vmm", needed: { !ctx.running }) {
                guard try self.store.get(uid: ref.uid)?.status.state != .deleting else {
                    throw CancellationError()
                }
                let cmdline = kernelCommandLine(defaults: self.vmm.defaultCmdline + ctx.extraCmdline, overrides: spec.kernel.cmdline)
                let launch = VMLaunchSpec(
                    ref: ref, vcpu: spec.vcpu, memoryInMB: spec.memoryInMB, kernelPath: ctx.kernelPath,
                    initrdPath: ctx.initrdPath, kernelCmdline: cmdline, disks: ctx.disks, nics: ctx.nics, directory: dir)
                let pid = try await self.vmm.start(launch)
                ctx.vmmState = .starting(pid: pid)
                try self.store.mutate(uid: ref.uid) { v in
                    v.status.vmmPID = pid
                    v.status.vmmStartedAt = Date()
                    v.status.accelerator = self.vmm.accelerator
                    return true
                }
                self.watchFirstConsoleOutput(uid: ref.uid, path: self.vmm.consoleLogPath(directory: dir))
            },
            PlanStep("watch-vmm", needed: { !self.watched.withLock { $0.contains(ref.uid) } }) {
                self.watch(ref, directory: dir)
            },
            PlanStep("wait-running", needed: { vm.status.state != .created || !self.isRunning(ctx.vmmState) }) {
                let deadline = ContinuousClock.now + self.settings.startTimeout
                while true {
                    let st = await self.vmm.state(of: ref, directory: dir)
                    if case .running(let pid) = st {
                        try self.store.mutate(uid: ref.uid) { v in
                            guard v.status.state == .pending || v.status.state == .created else { return false }
                            if v.status.state == .pending && v.status.restartCount == 0 { AgentMetrics.createToRunning(.seconds(Date().timeIntervalSince(v.createdAt))) }
                            v.status.state = .created
                            v.status.vmmPID = pid
                            v.status.retry = 0
                            if v.status.accelerator.isEmpty { v.status.accelerator = self.vmm.accelerator }
                            return true
                        }
                        return
                    }
                    if case .exited(let reason) = st { throw AgentError(.failedPrecondition, "VMM ended while starting: \(reason)") }
                    if case .notRunning = st { throw AgentError(.failedPrecondition, "VMM ended while starting") }
                    guard ContinuousClock.now < deadline else { throw AgentError(.internalError, "the VMM did not report the guest running within \(self.settings.startTimeout)") }
                    try await Task.sleep(for: .milliseconds(50))
                }
            },
        ]
        let report = try await PlanRunner(logger: log).run("create", steps: steps)
        if report.performed.contains("start-vmm") { log.info("microVM running") }
    }

    // MARK: - Guest configuration

    /// Whether the guest gets a cloud-init seed disk: it has documents, asks for network-config,
    /// has an allocated address, or has volumes to mount.
    func needsSeed(_ vm: MicroVM) -> Bool {
        !vm.spec.metadata.isEmpty || vm.spec.kernel.addNetworkConfig || !(vm.status.allocatedAddresses ?? [:]).isEmpty
            || !CloudInitDocuments.mounts(of: vm.spec).isEmpty
    }

    /// The VM's cloud-init documents: its metadata, completed with instance-id, a generated
    /// network-config (when asked for, or when the agent allocated an address) and volume mounts.
    func cloudInitDocuments(_ vm: MicroVM) throws -> CloudInitDocuments {
        let allocated = vm.status.allocatedAddresses ?? [:]
        var interfaces: [GuestInterface]?
        if vm.spec.kernel.addNetworkConfig || !allocated.isEmpty {
            interfaces = vm.spec.interfaces.map { iface in
                var address = iface.address
                if address == nil, let a = allocated[iface.deviceID] {
                    // The bridge's address is the gateway, unless the agent no longer owns it or its
                    // network changed since the address was allocated (then no gateway is better than a wrong one).
                    let net = settings.agentNetwork.flatMap { n in IPv4Interface(cidr: a).map { n.gateway.networkCIDR == $0.networkCIDR } == true ? n : nil }
                    address = StaticAddress(address: a, gateway: net?.gateway.address.description, nameservers: net?.nameservers ?? [])
                }
                return GuestInterface(deviceID: iface.deviceID, mac: iface.guestMAC ?? generatedMAC(uid: vm.uid, deviceID: iface.deviceID), address: address)
            }
        }
        return try CloudInitDocuments.make(metadata: vm.spec.metadata, additions: .init(instanceID: vm.uid, interfaces: interfaces, mounts: CloudInitDocuments.mounts(of: vm.spec)))
    }

    func isRunning(_ s: VMMRunState) -> Bool {
        if case .running = s { return true }
        return false
    }

    func exitReason(_ s: VMMRunState) -> String {
        if case .exited(let r) = s { return r }
        return "the VMM process is gone"
    }

    // MARK: - Supervision

    func watch(_ ref: MicroVMRef, directory dir: String) {
        guard watched.withLock({ $0.insert(ref.uid).inserted }) else { return }
        let ok = vmm.watchExit(of: ref, directory: dir) { [weak self] in
            guard let self else { return }
            self.watched.withLock { _ = $0.remove(ref.uid) }
            self.vmmExited(ref, directory: dir)
        }
        if !ok {
            watched.withLock { _ = $0.remove(ref.uid) }
            logger.warning("cannot watch the VMM of \(ref); relying on resync", metadata: ["uid": "\(ref.uid)"])
        }
    }

    /// Called when a VM's VMM goes away: unless the VM is being deleted, record why and restart it
    /// with backoff, or mark it FAILED after too many crashes.
    func vmmExited(_ ref: MicroVMRef, directory dir: String) {
        guard !stopping.load(ordering: .relaxed) else { return }
        Task {
            guard let vm = try? store.get(uid: ref.uid), vm.status.state == .created || vm.status.state == .pending else { return }
            // QEMU closes its QMP socket just before its process ends, and the reaper writes the
            // exit status just after: measure once the process is gone and the reason is known.
            let deadline = ContinuousClock.now + .seconds(5)
            var st = await vmm.state(of: ref, directory: dir)
            while ContinuousClock.now < deadline {
                if case .exited = st { break }
                if case .running = st {
                    // A new VMM is up (or the socket closed without an exit): keep watching it.
                    watch(ref, directory: dir)
                    return
                }
                try? await Task.sleep(for: .milliseconds(50))
                st = await vmm.state(of: ref, directory: dir)
            }
            do { try recordExit(uid: ref.uid, reason: exitReason(st)) } catch { logger.error("cannot record VMM exit: \(error)") }
        }
    }

    func recordExit(uid: String, reason: String) throws {
        var delay: Duration?
        try store.mutate(uid: uid) { v in
            guard v.status.state == .created || v.status.state == .pending, v.status.vmmPID != 0 else { return false }
            v.status.restartCount += 1
            v.status.vmmPID = 0
            AgentMetrics.vmmRestart(reason: reason)
            if v.status.restartCount > settings.maxRestarts {
                AgentMetrics.failed(reason: "restarts", step: "")
                v.status.state = .failed
                v.status.failureReason = "\(reason) (the VMM exited \(v.status.restartCount) times; not restarting)"
            } else {
                v.status.state = .pending
                v.status.failureReason = reason
                delay = settings.restartBackoff.delay(afterAttempt: v.status.restartCount - 1)
            }
            return true
        }
        logger.warning("VMM exited: \(reason)", metadata: ["uid": "\(uid)"])
        if let delay { enqueue(uid, after: delay) }
    }

    /// Records when the guest first writes to its console.
    func watchFirstConsoleOutput(uid: String, path: String) {
        Task {
            let deadline = ContinuousClock.now + .seconds(600)
            while ContinuousClock.now < deadline, !stopping.load(ordering: .relaxed) {
                if let size = HostFiles.size(path), size > 0 {
                    _ = try? store.mutate(uid: uid) { v in
                        guard v.status.firstConsoleOutputAt == nil, v.status.state != .deleting else { return false }
                        v.status.firstConsoleOutputAt = Date()
                        return true
                    }
                    return
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    // MARK: - Delete

    func deletePlan(_ vm: MicroVM, log: Logger) async throws {
        let ref = vm.ref
        let dir = directory(of: ref)
        let tapNames = vm.spec.interfaces.enumerated().map { hostDeviceName(uid: ref.uid, index: $0.offset, type: $0.element.type) }
        let steps: [PlanStep] = [
            PlanStep("stop-vmm", needed: {
                switch await self.vmm.state(of: ref, directory: dir) {
                case .running, .starting: return true
                default: return false
                }
            }) {
                try await self.vmm.stop(ref, directory: dir)
            },
            PlanStep("network", needed: {
                for n in tapNames where try await self.network.interfaceExists(name: n) { return true }
                return false
            }) {
                for n in tapNames { try await self.network.deleteInterface(name: n) }
            },
            PlanStep("lease", needed: { try await self.images.hasLease(for: ref) }) {
                try await self.images.releaseLease(for: ref)
            },
            PlanStep("state-directory", needed: { HostFiles.exists(dir) }) {
                try HostFiles.remove(dir)
                for events in [false, true] {
                    let sock = "/run/liquidmetal/\(ref.uid)-\(events ? "qmp-events.sock" : "qmp.sock")"
                    try? HostFiles.remove(sock)
                }
            },
            PlanStep("record", needed: { true }) {
                try self.store.remove(uid: ref.uid)
            },
        ]
        _ = try await PlanRunner(logger: log).run("delete", steps: steps)
        log.info("microVM deleted")
    }
}

/// The host device of a VM's interface: a TAP or a macvtap, named after the VM.
func hostDeviceName(uid: String, index: Int, type: InterfaceType) -> String {
    type == .macvtap ? macvtapDeviceName(uid: uid, index: index) : tapDeviceName(uid: uid, index: index)
}

/// A FAT volume id for the VM's seed disk, stable for its uid.
func seedVolumeID(uid: String) -> UInt32 {
    var h: UInt32 = 2_166_136_261
    for b in uid.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
    return h
}
