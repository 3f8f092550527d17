/// Where a cluster's microVMs go: pure functions over a picture of the hosts, shared by capmvm and
/// mvm-runner. `StaticPool` is CAPMVM's placement (one failure domain per host, hash spread);
/// `Scheduler` is dynamic placement over an inventory of hosts with capacity, labels and health.

/// A host as placement sees it.
public struct HostCandidate: Sendable, Equatable {
    /// Unique name (for a static pool: the endpoint).
    public var name: String
    /// The agent's gRPC endpoint, "host:port".
    public var endpoint: String
    public var labels: [String: String]
    /// Hosts sharing a failure domain fail together (a rack, a power feed); defaults to the host itself.
    public var failureDomain: String
    public var controlPlaneAllowed: Bool
    /// Whether the host's agent answered its last capacity check.
    public var reachable: Bool
    public var capacity: Resources
    /// What the host's microVMs already take.
    public var allocated: Resources

    public init(name: String, endpoint: String, labels: [String: String] = [:], failureDomain: String? = nil, controlPlaneAllowed: Bool = true,
                reachable: Bool = true, capacity: Resources, allocated: Resources = Resources()) {
        self.name = name
        self.endpoint = endpoint
        self.labels = labels
        self.failureDomain = failureDomain ?? name
        self.controlPlaneAllowed = controlPlaneAllowed
        self.reachable = reachable
        self.capacity = capacity
        self.allocated = allocated
    }

    public var free: Resources {
        Resources(vcpu: capacity.vcpu - allocated.vcpu, memoryMB: capacity.memoryMB - allocated.memoryMB, microVMs: capacity.microVMs - allocated.microVMs)
    }
}

/// vCPUs, memory and a count of microVMs.
public struct Resources: Sendable, Equatable {
    public var vcpu: Int
    public var memoryMB: Int
    public var microVMs: Int
    public init(vcpu: Int = 0, memoryMB: Int = 0, microVMs: Int = 0) {
        self.vcpu = vcpu
        self.memoryMB = memoryMB
        self.microVMs = microVMs
    }
}

/// One machine to place.
public struct PlacementRequest: Sendable, Equatable {
    public var machineName: String
    public var isControlPlane: Bool
    public var vcpu: Int
    public var memoryMB: Int
    /// Labels a host must carry (all of them, equal values).
    public var hostSelector: [String: String]
    /// Hosts (by name) the cluster's other machines are on, with how many control-plane machines each.
    public var placed: [PlacedMachine]

    public init(machineName: String, isControlPlane: Bool, vcpu: Int, memoryMB: Int, hostSelector: [String: String] = [:], placed: [PlacedMachine] = []) {
        self.machineName = machineName
        self.isControlPlane = isControlPlane
        self.vcpu = vcpu
        self.memoryMB = memoryMB
        self.hostSelector = hostSelector
        self.placed = placed
    }
}

/// A machine of the same cluster already on a host.
public struct PlacedMachine: Sendable, Equatable {
    public var host: String
    public var isControlPlane: Bool
    public init(host: String, isControlPlane: Bool) {
        self.host = host
        self.isControlPlane = isControlPlane
    }
}

/// Why a host was not chosen, or the choice.
public enum PlacementDecision: Sendable, Equatable {
    case host(HostCandidate)
    /// No host fits; one line per host saying why, for the machine's condition.
    case unschedulable([String])
}

/// CAPMVM's static pool: the machine's failure domain if it names one, else the host in its
/// providerID, else the failure domain at `fnv1a32(machine name) % count` in sorted order.
public enum StaticPool {
    /// - Parameters:
    ///   - failureDomains: the pool's hosts' endpoints (one failure domain each).
    ///   - requested: `Machine.spec.failureDomain`.
    ///   - providerID: an existing `microvm://<endpoint>/<uid>`.
    public static func failureDomain(machineName: String, failureDomains: [String], requested: String?, providerID: String?) -> String? {
        if let requested, !requested.isEmpty { return requested }
        if let providerID, let host = ProviderID(providerID)?.host { return host }
        let sorted = failureDomains.sorted()
        guard !sorted.isEmpty else { return nil }
        return sorted[Int(fnv1a32(machineName) % UInt32(sorted.count))]
    }
}

/// `microvm://<host endpoint>/<microvm uid>`.
public struct ProviderID: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var uid: String
    public init(host: String, uid: String) {
        self.host = host
        self.uid = uid
    }
    public init?(_ text: String) {
        guard text.hasPrefix("microvm://") else { return nil }
        let rest = text.dropFirst("microvm://".count)
        guard let slash = rest.lastIndex(of: "/"), slash != rest.startIndex else { return nil }
        host = String(rest[..<slash])
        uid = String(rest[rest.index(after: slash)...])
        guard !uid.isEmpty else { return nil }
    }
    public var description: String { "microvm://\(host)/\(uid)" }
}

/// Dynamic placement: filter, then score, then the lowest name wins ties (so the same inputs always
/// give the same answer).
///
/// Filters: reachable; carries the selector's labels; control-plane allowed for control-plane
/// machines; enough free vCPUs, memory and microVM slots.
/// Scores (higher is better, in this order of weight): for a control-plane machine, a failure
/// domain that holds none of the cluster's control-plane machines yet; fewer of the cluster's
/// machines on the host and in its failure domain (spread); the least-loaded host (the larger share
/// of free vCPU and memory).
public enum Scheduler {
    public static func place(_ request: PlacementRequest, on hosts: [HostCandidate]) -> PlacementDecision {
        var reasons: [String] = []
        var fitting: [HostCandidate] = []
        for h in hosts.sorted(by: { $0.name < $1.name }) {
            if !h.reachable { reasons.append("\(h.name): unreachable"); continue }
            if let (k, v) = request.hostSelector.sorted(by: { $0.key < $1.key }).first(where: { h.labels[$0.key] != $0.value }) {
                reasons.append("\(h.name): label \(k)=\(v) missing"); continue
            }
            if request.isControlPlane && !h.controlPlaneAllowed { reasons.append("\(h.name): control plane not allowed"); continue }
            let free = h.free
            if free.vcpu < request.vcpu { reasons.append("\(h.name): \(free.vcpu) vCPUs free, \(request.vcpu) needed"); continue }
            if free.memoryMB < request.memoryMB { reasons.append("\(h.name): \(free.memoryMB) MiB free, \(request.memoryMB) needed"); continue }
            if free.microVMs < 1 { reasons.append("\(h.name): no microVM slot free"); continue }
            fitting.append(h)
        }
        guard !fitting.isEmpty else { return .unschedulable(reasons) }
        let domainOf = Dictionary(hosts.map { ($0.name, $0.failureDomain) }, uniquingKeysWith: { a, _ in a })
        func score(_ h: HostCandidate) -> (Int, Int, Int, Double) {
            let onHost = request.placed.filter { $0.host == h.name }.count
            let inDomain = request.placed.filter { domainOf[$0.host] == h.failureDomain }.count
            let cpInDomain = request.placed.filter { $0.isControlPlane && domainOf[$0.host] == h.failureDomain }.count
            let load = h.capacity.vcpu > 0 && h.capacity.memoryMB > 0
                ? min(Double(h.free.vcpu) / Double(h.capacity.vcpu), Double(h.free.memoryMB) / Double(h.capacity.memoryMB)) : 0
            return (request.isControlPlane && cpInDomain == 0 ? 1 : 0, -onHost, -inDomain, load)
        }
        let best = fitting.max { a, b in
            let sa = score(a), sb = score(b)
            if sa != sb { return sa < sb }
            return a.name > b.name  // equal scores: the lower name wins
        }!
        return .host(best)
    }
}

/// FNV-1a, 32 bits: a stable hash for spreading names.
public func fnv1a32(_ s: String) -> UInt32 {
    var h: UInt32 = 2_166_136_261
    for b in s.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
    return h
}
