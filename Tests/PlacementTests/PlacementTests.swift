import Placement
import Testing

func host(_ name: String, domain: String? = nil, cpu: Int = 8, mem: Int = 16384, vms: Int = 20, used: Resources = Resources(),
          labels: [String: String] = [:], cp: Bool = true, up: Bool = true) -> HostCandidate {
    HostCandidate(name: name, endpoint: "\(name):9090", labels: labels, failureDomain: domain, controlPlaneAllowed: cp, reachable: up,
                  capacity: Resources(vcpu: cpu, memoryMB: mem, microVMs: vms), allocated: used)
}

func chosen(_ d: PlacementDecision) -> String? {
    if case .host(let h) = d { return h.name }
    return nil
}

@Suite("static pool (CAPMVM)")
struct StaticPoolTests {
    let domains = ["10.0.0.3:9090", "10.0.0.1:9090", "10.0.0.2:9090"]

    @Test("the machine's failure domain wins, then the providerID's host, then a stable hash over the sorted domains")
    func order() {
        #expect(StaticPool.failureDomain(machineName: "m", failureDomains: domains, requested: "10.0.0.2:9090", providerID: "microvm://10.0.0.1:9090/01X") == "10.0.0.2:9090")
        #expect(StaticPool.failureDomain(machineName: "m", failureDomains: domains, requested: nil, providerID: "microvm://10.0.0.1:9090/01X") == "10.0.0.1:9090")
        let a = StaticPool.failureDomain(machineName: "worker-abc", failureDomains: domains, requested: nil, providerID: nil)
        #expect(a == StaticPool.failureDomain(machineName: "worker-abc", failureDomains: domains.reversed(), requested: "", providerID: nil), "order of the pool does not matter")
        #expect(StaticPool.failureDomain(machineName: "m", failureDomains: [], requested: nil, providerID: nil) == nil)
        // Many names spread over every domain.
        let used = Set((0..<60).compactMap { StaticPool.failureDomain(machineName: "md-0-\($0)", failureDomains: domains, requested: nil, providerID: nil) })
        #expect(used == Set(domains))
    }

    @Test("providerIDs parse and print as microvm://<endpoint>/<uid>")
    func providerID() {
        #expect(ProviderID("microvm://10.0.0.1:9090/01ABC") == ProviderID(host: "10.0.0.1:9090", uid: "01ABC"))
        #expect(ProviderID(host: "h:1", uid: "u").description == "microvm://h:1/u")
        for bad in ["aws://x/y", "microvm://", "microvm://host/", "microvm:///uid"] { #expect(ProviderID(bad) == nil, "\(bad)") }
    }
}

@Suite("scheduler (dynamic pool)")
struct SchedulerTests {
    @Test("filters: unreachable, missing labels, control plane not allowed, not enough CPU, memory or slots; the reasons are given")
    func filters() {
        let hosts = [
            host("a", up: false), host("b", labels: ["zone": "x"]), host("c", labels: ["zone": "y"], cp: false),
            host("d", cpu: 2, labels: ["zone": "y"]), host("e", mem: 1024, labels: ["zone": "y"]),
            host("f", vms: 3, used: Resources(microVMs: 3), labels: ["zone": "y"]),
        ]
        let r = PlacementRequest(machineName: "cp-0", isControlPlane: true, vcpu: 4, memoryMB: 2048, hostSelector: ["zone": "y"])
        guard case .unschedulable(let why) = Scheduler.place(r, on: hosts) else { Issue.record("placed"); return }
        #expect(why == ["a: unreachable", "b: label zone=y missing", "c: control plane not allowed", "d: 2 vCPUs free, 4 needed",
                        "e: 1024 MiB free, 2048 needed", "f: no microVM slot free"])
        #expect(chosen(Scheduler.place(r, on: hosts + [host("g", labels: ["zone": "y"])])) == "g")
    }

    @Test("1 control plane + 3 workers over 3 hosts: one machine per host first, then the least loaded")
    func spread() {
        var hosts = [host("h1"), host("h2"), host("h3")]
        var placed: [PlacedMachine] = []
        var names: [String] = []
        for (i, cp) in [true, false, false, false].enumerated() {
            let r = PlacementRequest(machineName: "m\(i)", isControlPlane: cp, vcpu: 2, memoryMB: 2048, placed: placed)
            guard let h = chosen(Scheduler.place(r, on: hosts)) else { Issue.record("unschedulable"); return }
            names.append(h)
            placed.append(PlacedMachine(host: h, isControlPlane: cp))
            let k = hosts.firstIndex { $0.name == h }!
            hosts[k].allocated.vcpu += 2
            hosts[k].allocated.memoryMB += 2048
            hosts[k].allocated.microVMs += 1
        }
        #expect(Set(names.prefix(3)) == ["h1", "h2", "h3"], "\(names)")
        #expect(names.filter { $0 == names[3] }.count == 2, "the fourth goes beside one of them")
    }

    @Test("control-plane machines go to distinct failure domains before sharing one")
    func controlPlaneDomains() {
        let hosts = [host("a1", domain: "rack-a"), host("a2", domain: "rack-a"), host("b1", domain: "rack-b", cpu: 4)]
        let first = PlacementRequest(machineName: "cp-0", isControlPlane: true, vcpu: 1, memoryMB: 1024, placed: [PlacedMachine(host: "a1", isControlPlane: true)])
        #expect(chosen(Scheduler.place(first, on: hosts)) == "b1", "rack-b has no control plane yet, though a2 is bigger")
        let worker = PlacementRequest(machineName: "w-0", isControlPlane: false, vcpu: 1, memoryMB: 1024, placed: [PlacedMachine(host: "a1", isControlPlane: true), PlacedMachine(host: "b1", isControlPlane: true)])
        #expect(chosen(Scheduler.place(worker, on: hosts)) == "a2", "the empty host")
    }

    @Test("least loaded wins; equal hosts: the lowest name; same inputs, same answer")
    func leastLoaded() {
        let busy = host("a", used: Resources(vcpu: 6, memoryMB: 8000, microVMs: 3)), idle = host("b", used: Resources(vcpu: 1, memoryMB: 1000, microVMs: 1))
        let r = PlacementRequest(machineName: "x", isControlPlane: false, vcpu: 1, memoryMB: 512)
        #expect(chosen(Scheduler.place(r, on: [busy, idle])) == "b")
        #expect(chosen(Scheduler.place(r, on: [host("z"), host("y")])) == "y")
        #expect(Scheduler.place(r, on: [host("z"), host("y")]) == Scheduler.place(r, on: [host("y"), host("z")]))
    }
}
