import NFTModel

/// Addresses and node ports for Services that lack them (`--allocate`), as the API server
/// would give them, but stable: the same input gets the same allocation on every run and every
/// machine.
///
/// The rule, in order:
/// 1. Addresses and node ports the input gives are taken first, whoever holds them.
/// 2. What a Service holds already (allocated earlier and in svcnat's tables now, or earlier
///    in the daemon's life) stays its own while nothing given takes it: adding a Service
///    never moves another's address.
/// 3. Services that need something more are taken in order of namespace/name. Each wanted family
///    gets an address from the first `--service-cidr` of that family; each port of a NodePort
///    or LoadBalancer Service without a node port gets one from the node port range, and so
///    does the health check of a LoadBalancer Service with `externalTrafficPolicy: Local`.
/// 4. The place to try first is the 64-bit FNV-1a hash of a name, modulo the number of places:
///    `namespace/name` for an address, `namespace/name/protocol/port` for a node port,
///    `namespace/name/healthCheck` for a health check port. A place taken is passed over for
///    the next one up, wrapping around.
/// 5. A range's network address, its IPv4 broadcast address and its first address are never
///    given, except the first to `default/kubernetes`, as the API server gives it.
public enum Allocation {
    public struct Settings: Hashable, Sendable {
        public var serviceCIDRs: [IPPrefix]
        public var nodePorts: ClosedRange<UInt16>
        public init(serviceCIDRs: [IPPrefix], nodePorts: ClosedRange<UInt16> = 30000...32767) {
            self.serviceCIDRs = serviceCIDRs
            self.nodePorts = nodePorts
        }
    }

    /// What Services hold already: cluster IPs by Service key ("ns/name"), node ports by
    /// Service port ("ns/name:port/PROTO", the port by name, "" when unnamed).
    public struct Held: Hashable, Sendable {
        public var clusterIPs: [String: [IPAddress]] = [:]
        public var nodePorts: [String: UInt16] = [:]
        public init() {}

        static func portKey(_ service: String, _ p: ServicePort) -> String { "\(service):\(p.name)/\(p.proto.rawValue)" }

        /// What svcnat's tables hold as allocated: the map elements whose comment ends in
        /// `Names.allocatedMark`.
        public init(tables: [Ruleset]) {
            for r in tables {
                for name in [Names.serviceIPs, Names.noEndpointServices, Names.serviceNodePorts, Names.noEndpointNodePorts] {
                    for e in r.set(name)?.elements ?? [] {
                        guard let c = e.comment, c.hasSuffix(Names.allocatedMark) else { continue }
                        let port = c.dropLast(Names.allocatedMark.count)
                        let (service, portName) =
                            port.firstIndex(of: ":").map { (String(port[..<$0]), String(port[port.index(after: $0)...])) } ?? (
                                String(port), ""
                            )
                        switch e.key.count {
                        case 3:
                            if case .ip(let ip) = e.key[0], !(clusterIPs[service] ?? []).contains(ip) {
                                clusterIPs[service, default: []].append(ip)
                            }
                        case 2:
                            if case .proto(let p) = e.key[0], case .port(let n) = e.key[1] {
                                nodePorts["\(service):\(portName)/\(p.rawValue)"] = n
                            }
                        default: break
                        }
                    }
                }
            }
        }

        /// What a result gave, to be kept by the next one.
        public init(_ result: Result, _ services: [Service]) {
            for s in services {
                guard let g = result.given[s.meta.key] else { continue }
                if !g.clusterIPs.isEmpty { clusterIPs[s.meta.key] = g.clusterIPs }
                for (i, n) in g.nodePorts where s.ports.indices.contains(i) { nodePorts[Self.portKey(s.meta.key, s.ports[i])] = n }
            }
        }
    }

    /// What one Service was given.
    public struct Given: Hashable, Sendable {
        public var clusterIPs: [IPAddress] = []
        /// By port index.
        public var nodePorts: [Int: UInt16] = [:]
        public var healthCheckNodePort: UInt16?
        /// What it wanted and could not get ("no free address in 198.18.128.0/30").
        public var problems: [String] = []
        public init() {}
    }

    public struct Result: Sendable {
        /// By Service key (namespace/name), for the Services given anything or refused anything.
        public var given: [String: Given] = [:]
        public init() {}

        /// Whether replacing Services `before` with `after` (the versions in force of the
        /// changed keys; nil where there is none) leaves this result as the rule would make it
        /// again over all Services, so the whole allocation need not be run (it costs a sort and
        /// a hash per Service). True when no Service of either side wants anything allocated,
        /// nothing the new versions write takes a place this result gave, and no Service was
        /// refused (a place the old versions free could serve it). Then every place given stays
        /// with its holder and none is probed for, as `assign` would decide.
        ///
        /// Also true when each changed key's Service is, in all that `assign` reads, what it
        /// was (an endpoint or a label changed): the same input gives the same allocation.
        public func unaffected(replacing before: [Service?], with after: [Service?]) -> Bool {
            guard !given.values.contains(where: { !$0.problems.isEmpty }) else { return false }
            if before.map({ $0.map(AllocationInput.init) }) == after.map({ $0.map(AllocationInput.init) }) { return true }
            let all = before.compactMap { $0 } + after.compactMap { $0 }
            guard !all.contains(where: Allocation.wantsSomething) else { return false }
            guard !given.isEmpty else { return true }
            var ips = Set<IPAddress>(), ports = Set<UInt16>()
            for g in given.values {
                ips.formUnion(g.clusterIPs)
                ports.formUnion(g.nodePorts.values)
                if let h = g.healthCheckNodePort { ports.insert(h) }
            }
            return !after.compactMap { $0 }.contains { s in
                s.clusterIPs.contains(where: ips.contains) || s.ports.contains { $0.nodePort.map(ports.contains) ?? false }
                    || s.healthCheckNodePort.map(ports.contains) ?? false
            }
        }

        /// Each Service with its allocation filled in.
        public func applied(to services: [Service]) -> [Service] {
            services.map { s in given[s.meta.key].map { Allocation.apply($0, to: s) } ?? s }
        }

        /// One line per allocation, for the dry run and `apply`.
        public var lines: [String] {
            given.keys.sorted().flatMap { key -> [String] in
                let g = given[key]!
                var out = g.clusterIPs.map { "Service \(key): clusterIP \($0) allocated" }
                out += g.nodePorts.keys.sorted().map { "Service \(key): ports[\($0)].nodePort \(g.nodePorts[$0]!) allocated" }
                if let h = g.healthCheckNodePort { out.append("Service \(key): healthCheckNodePort \(h) allocated") }
                return out
            }
        }
    }

    public static func apply(_ g: Given, to service: Service) -> Service {
        var s = service
        if !g.clusterIPs.isEmpty {
            s.clusterIPs = g.clusterIPs
            s.clusterIPsAllocated = true
        }
        for (i, np) in g.nodePorts where s.ports.indices.contains(i) {
            s.ports[i].nodePort = np
            s.ports[i].nodePortAllocated = true
        }
        if let h = g.healthCheckNodePort {
            s.healthCheckNodePort = h
            s.healthCheckNodePortAllocated = true
        }
        return s
    }

    /// All that `assign` reads of a Service.
    struct AllocationInput: Hashable {
        var key: String
        var type: ServiceType
        var clusterIPs: [IPAddress]
        var isHeadless: Bool
        var ipFamilies: [IPFamily]
        var ipFamilyPolicy: String
        var ports: [[String]]
        var nodePorts: [UInt16?]
        var allocateLoadBalancerNodePorts: Bool
        var externalTrafficPolicyLocal: Bool
        var healthCheckNodePort: UInt16?

        init(_ s: Service) {
            key = s.meta.key
            type = s.type
            clusterIPs = s.clusterIPs
            isHeadless = s.isHeadless
            ipFamilies = s.ipFamilies
            ipFamilyPolicy = s.ipFamilyPolicy
            ports = s.ports.map { [$0.name, $0.proto.rawValue, String($0.port)] }
            nodePorts = s.ports.map(\.nodePort)
            allocateLoadBalancerNodePorts = s.allocateLoadBalancerNodePorts
            externalTrafficPolicyLocal = s.externalTrafficPolicyLocal
            healthCheckNodePort = s.healthCheckNodePort
        }
    }

    /// Whether `assign` would look for anything for this Service: a cluster IP, a node port
    /// or a health check port it does not write.
    static func wantsSomething(_ s: Service) -> Bool {
        s.lacksClusterIP
            || s.wantsNodePorts
                && (s.ports.contains { $0.nodePort == nil }
                    || s.type == .loadBalancer && s.externalTrafficPolicyLocal && s.healthCheckNodePort == nil)
    }

    /// The families a Service without cluster IPs gets addresses of: its `ipFamilies`, else the
    /// first `--service-cidr`'s family, and with a dual-stack policy the other family too.
    static func families(of s: Service, _ settings: Settings) -> [IPFamily] {
        var out = s.ipFamilies
        if out.isEmpty, let first = settings.serviceCIDRs.first { out = [first.family] }
        if s.ipFamilyPolicy != "SingleStack", out.count == 1 {
            let other: IPFamily = out[0] == .v4 ? .v6 : .v4
            if settings.serviceCIDRs.contains(where: { $0.family == other }) || s.ipFamilyPolicy == "RequireDualStack" {
                out.append(other)
            }
        }
        return out
    }

    public static func assign(_ services: [Service], _ settings: Settings, keeping held: Held = Held()) -> Result {
        var takenIPs = Set<IPAddress>()
        var takenPorts = Set<UInt16>()
        for s in services {
            takenIPs.formUnion(s.clusterIPs)
            for p in s.ports { if let n = p.nodePort { takenPorts.insert(n) } }
            if let h = s.healthCheckNodePort { takenPorts.insert(h) }
        }
        let ordered = services.sorted(by: { $0.meta.key < $1.meta.key })
        // What Services hold already is theirs before anything new is placed.
        var kept: [String: (ips: [IPAddress], ports: [Int: UInt16])] = [:]
        for s in ordered {
            let key = s.meta.key
            if s.lacksClusterIP {
                for family in families(of: s, settings) {
                    guard let cidr = settings.serviceCIDRs.first(where: { $0.family == family }),
                        let mine = held.clusterIPs[key]?.first(where: { cidr.contains($0) }), takenIPs.insert(mine).inserted
                    else { continue }
                    kept[key, default: ([], [:])].ips.append(mine)
                }
            }
            guard s.wantsNodePorts else { continue }
            for (i, p) in s.ports.enumerated() where p.nodePort == nil {
                if let mine = held.nodePorts[Held.portKey(key, p)], settings.nodePorts.contains(mine), takenPorts.insert(mine).inserted {
                    kept[key, default: ([], [:])].ports[i] = mine
                }
            }
        }
        var result = Result()
        for s in ordered {
            var g = Given()
            let key = s.meta.key
            let mine = kept[key] ?? ([], [:])
            if s.lacksClusterIP {
                for family in families(of: s, settings) {
                    guard let cidr = settings.serviceCIDRs.first(where: { $0.family == family }) else {
                        g.problems.append("no --service-cidr of \(family.rawValue) to allocate its clusterIP from")
                        continue
                    }
                    if let ip = mine.ips.first(where: { $0.family == family }) {
                        g.clusterIPs.append(ip)
                    } else if let ip = address(for: key, in: cidr, taken: &takenIPs) {
                        g.clusterIPs.append(ip)
                    } else {
                        g.problems.append("no free address in --service-cidr \(cidr)")
                    }
                }
            }
            if s.wantsNodePorts && (!s.clusterIPs.isEmpty || !g.clusterIPs.isEmpty) {
                for (i, p) in s.ports.enumerated() where p.nodePort == nil {
                    if let n = mine.ports[i] {
                        g.nodePorts[i] = n
                    } else if let n = port(for: "\(key)/\(p.proto.rawValue)/\(p.port)", in: settings.nodePorts, taken: &takenPorts) {
                        g.nodePorts[i] = n
                    } else {
                        g.problems.append("no free node port in \(settings.nodePorts) for ports[\(i)]")
                    }
                }
                if s.type == .loadBalancer, s.externalTrafficPolicyLocal, s.healthCheckNodePort == nil {
                    g.healthCheckNodePort = port(for: "\(key)/healthCheck", in: settings.nodePorts, taken: &takenPorts)
                    if g.healthCheckNodePort == nil { g.problems.append("no free node port in \(settings.nodePorts) for its health check") }
                }
            }
            if g != Given() { result.given[key] = g }
        }
        return result
    }

    /// 64-bit FNV-1a.
    public static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }

    /// The places of a range that may be given: offsets from the network address.
    public static func usable(_ cidr: IPPrefix) -> (first: UInt64, count: UInt64) {
        let hostBits = cidr.family.bits - cidr.length
        let size: UInt64 = hostBits >= 64 ? UInt64.max : 1 << UInt64(hostBits)
        // Not the network address, not the IPv4 broadcast; the first (offset 1) only to
        // default/kubernetes.
        let last = cidr.family == .v4 ? size &- 2 : size &- 1
        return last >= 2 ? (2, last - 1) : (0, 0)
    }

    static func offset(_ base: IPAddress, _ n: UInt64) -> IPAddress {
        if base.family == .v4 { return IPAddress(UInt32(truncatingIfNeeded: UInt64(base.v4Value) &+ n)) }
        let (low, carry) = base.low.addingReportingOverflow(n)
        return IPAddress(v6: base.high &+ (carry ? 1 : 0), low)
    }

    static func address(for key: String, in cidr: IPPrefix, taken: inout Set<IPAddress>) -> IPAddress? {
        let base = cidr.address
        if key == "default/kubernetes", taken.insert(offset(base, 1)).inserted { return offset(base, 1) }
        let (first, count) = usable(cidr)
        guard count > 0 else { return nil }
        let start = hash(key) % count
        // A full range is found full after one pass over it; a large one is never searched far.
        for step in 0..<min(count, 1 << 20) {
            let ip = offset(base, first + (start + step) % count)
            if taken.insert(ip).inserted { return ip }
        }
        return nil
    }

    static func port(for key: String, in range: ClosedRange<UInt16>, taken: inout Set<UInt16>) -> UInt16? {
        let count = UInt64(range.upperBound - range.lowerBound) + 1
        let start = hash(key) % count
        for step in 0..<count {
            let p = range.lowerBound + UInt16((start + step) % count)
            if taken.insert(p).inserted { return p }
        }
        return nil
    }
}
